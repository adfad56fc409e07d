"""The documentation: every code block runs as written, and the site builds strictly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from replayable.cli import main as cli_main

sys.path.insert(0, str(Path(__file__).resolve().parent))
import docs_pages

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tools"))
from griffe_rst import to_markdown
from mkdocs_hooks import api_path

ROOT = Path(__file__).resolve().parent.parent
PAGES = sorted(
    [*ROOT.joinpath("docs").rglob("*.md"), ROOT / "README.md", ROOT / "bench" / "README.md"]
)


def _blocks(page: Path) -> list[docs_pages.Block]:
    return docs_pages.blocks(page.read_text(encoding="utf-8"), page.relative_to(ROOT).as_posix())


RUNNABLE = [page for page in PAGES if any(b.runs for b in _blocks(page))]


def _rel(path: Path) -> str:
    return path.relative_to(ROOT).as_posix()


def _env(tmp: Path) -> dict[str, str]:
    """A clean environment: this checkout's code, a store of the page's own, no secrets."""
    return {
        "PATH": os.pathsep.join([str(Path(sys.executable).parent), "/usr/bin", "/bin"]),
        "HOME": str(tmp),
        "LANG": "C.UTF-8",
        "NO_COLOR": "1",
        # this checkout's code, and for hidden blocks the tests' loopback model server
        "PYTHONPATH": os.pathsep.join([str(ROOT / "src"), str(ROOT / "tests" / "integrations")]),
        "REPLAYABLE_STORE": str(tmp / "traces.db"),
        "REPLAYABLE_DEMO_DB": str(tmp / "customers.db"),
    }


class TestCodeBlocksRun:
    """Every ``python`` and ``bash`` block of every page runs, in order, offline."""

    @pytest.mark.parametrize("page", RUNNABLE, ids=_rel)
    def test_page(self, page: Path, tmp_path: Path) -> None:
        """The page's runnable blocks run one after another and none fails."""
        found = [b for b in _blocks(page) if b.runs]
        spec = tmp_path / "blocks.json"
        spec.write_text(docs_pages.as_json(found), encoding="utf-8")
        work = tmp_path / "work"
        work.mkdir()
        proc = subprocess.run(
            [sys.executable, str(Path(docs_pages.__file__)), str(spec)],
            cwd=work,
            env=_env(work),
            capture_output=True,
            text=True,
            timeout=300,
            check=False,
        )
        assert proc.returncode == 0, f"{_rel(page)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"


class TestBlockRules:
    """The markers of ``docs/contributing.md`` are read as it says."""

    def test_markers(self) -> None:
        """A no-run marker stops the next block only; a hidden block runs; text never runs."""
        page = (
            "<!-- no-run: needs a server -->\n```bash\nexit 1\n```\n\n```bash\ntrue\n```\n"
            "<!-- hidden\n```python\nx = 1\n```\n-->\n```text\nout\n```\n"
        )
        found = docs_pages.blocks(page)
        assert [(b.lang, b.runs, b.hidden, b.no_run) for b in found] == [
            ("bash", False, False, "needs a server"),
            ("bash", True, False, None),
            ("python", True, True, None),
            ("text", False, False, None),
        ]

    def test_nested_fences(self) -> None:
        """A longer fence holds shorter ones (an example of a block), indented or not."""
        page = "- item\n\n    ````text\n    ```python\n    boom()\n    ```\n    ````\n"
        (only,) = docs_pages.blocks(page)
        assert (only.lang, only.code) == ("text", "```python\nboom()\n```\n")

    @pytest.mark.parametrize("page", PAGES, ids=_rel)
    def test_every_block_is_labelled(self, page: Path) -> None:
        """Each block names its language, and each no-run marker its reason."""
        for block in _blocks(page):
            where = f"{block.page}:{block.line}"
            assert block.lang, f"{where}: a fence without a language (use text for output)"
            assert block.lang not in {"py", "sh", "shell", "console"}, (
                f"{where}: write python or bash (which run) or text (which does not)"
            )
            assert block.no_run != "", f"{where}: a no-run marker needs its reason"


class TestSite:
    """``mkdocs build --strict`` passes, with a CLI and an API reference that cover everything."""

    @pytest.fixture(scope="class")
    @classmethod
    def site(cls, tmp_path_factory: pytest.TempPathFactory) -> Path:
        out = tmp_path_factory.mktemp("site")
        proc = subprocess.run(
            [sys.executable, "-m", "mkdocs", "build", "--strict", "--site-dir", str(out)],
            cwd=ROOT,
            env={**_env(out), "HOME": os.environ.get("HOME", str(out))},
            capture_output=True,
            text=True,
            timeout=600,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr[-8000:]
        return out

    def test_cli_reference_has_every_command(self, site: Path) -> None:
        """Each command of the click group has its section in the CLI reference."""
        html = (site / "reference" / "cli" / "index.html").read_text(encoding="utf-8")
        for name in cli_main.commands:
            assert f"replayable {name}" in html, name
        assert "Sentinel" not in html  # click's no-default marker is shown as "—"

    def test_api_reference_has_the_public_names(self, site: Path) -> None:
        """The API page documents every name the three public modules export."""
        import replayable
        import replayable.integrations
        import replayable.testing

        html = (site / "reference" / "api" / "index.html").read_text(encoding="utf-8")
        for module in (replayable, replayable.testing, replayable.integrations):
            for name in module.__all__:
                if name.startswith("__"):  # __version__: a dunder, left out like the others
                    continue
                path = api_path(module.__name__, name)
                assert f'id="{path}"' in html, path


class TestDocstringsAsMarkdown:
    """The API reference's Griffe extension turns reStructuredText docstrings into Markdown."""

    def test_examples_literal_blocks_and_roles(self) -> None:
        """Examples and ``::`` blocks become fenced code; roles become inline code."""
        text = "Use :class:`~a.B` or :func:`a.f`.\n\n>>> 1 + 1\n2\n\nSo::\n\n    f()\n\nEnd."
        assert to_markdown(text) == (
            "Use `B` or `a.f`.\n\n```pycon\n>>> 1 + 1\n2\n```\n\nSo:\n\n```python\nf()\n```\n\nEnd."
        )

    def test_idempotent(self) -> None:
        """Rewriting a docstring twice changes nothing the first pass did not."""
        once = to_markdown(">>> [x for x in 'ab']\n['a', 'b']\n\nText::\n\n    code\n")
        assert to_markdown(once) == once
