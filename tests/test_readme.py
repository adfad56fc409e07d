"""The README's quick start runs as written."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"


def test_quick_start_runs(tmp_path: Path) -> None:
    """The quick-start block records a run and replays it with no divergence."""
    text = README.read_text()
    start = text.index("```python", text.index("## Quick start")) + len("```python\n")
    code = text[start : text.index("```", start)]
    script = tmp_path / "quick.py"
    script.write_text(code)
    proc = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={"PATH": "/usr/bin:/bin", "REPLAYABLE_STORE": str(tmp_path / "t.db")},
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == lines[1]
    assert lines[0].startswith("deleted Dana")
    assert "0 divergence(s)" in proc.stdout
