"""The notebook walkthrough (docs/notebook.ipynb) runs top to bottom in a real kernel, and its
outputs are the viewer's HTML: the incident's tree, the fixed replay's divergence at
delete_record, the diff and the check."""

from __future__ import annotations

from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOK = Path(__file__).parent.parent / "docs" / "notebook.ipynb"


def _html(cell: nbformat.NotebookNode) -> str:
    return "".join(
        o.get("data", {}).get("text/html", "") for o in cell.get("outputs", []) if "data" in o
    )


class TestWalkthrough:
    def test_the_demo_notebook_runs_and_shows_the_divergence(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Every cell runs without error; the fixed replay's HTML names delete_record as
        skipped, the diff shows the first divergence, the check shows a diverged group."""
        monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
        nb = nbformat.read(NOTEBOOK, as_version=4)
        NotebookClient(
            nb,
            timeout=300,
            kernel_name="python3",
            resources={"metadata": {"path": str(tmp_path)}},
        ).execute()
        code = [c for c in nb.cells if c.cell_type == "code"]
        html = [_html(c) for c in code]
        tree = next(h for h in html if "replayable-nb" in h and "choose_record" in h)
        assert "delete_record" in tree
        fixed = next(h for h in html if "divergence(s)" in h)
        assert "skipped" in fixed
        assert "delete_record" in fixed
        assert any('id="first-divergence"' in h for h in html)
        assert any("Diverged, by first divergence" in h for h in html)
        printed = "".join(o.get("text", "") for o in code[-1].outputs)
        assert "support_agent" in printed
