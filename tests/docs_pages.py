"""The code blocks of the documentation pages, read by the rules ``docs/contributing.md`` states.

A block fenced as ``python`` or ``bash`` runs, unless the line before its fence is
``<!-- no-run: REASON -->``; a block inside ``<!-- hidden`` ... ``-->`` runs but is not shown.
Run as a script (``python tests/docs_pages.py BLOCKS.json``), it runs one page's blocks in order,
in the current directory: the ``python`` blocks in one shared namespace, each ``bash`` block with
``bash -euo pipefail`` and ``$RUN`` set to the newest recorded run that is not a replay.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

RUNNABLE = ("python", "bash")
"""The languages whose blocks run; every other language is shown only."""

_FENCE = re.compile(r"^(?P<indent>[ \t]*)(?P<fence>`{3,}|~{3,})(?P<lang>[^`\s]*)")
_NO_RUN = re.compile(r"^\s*<!--\s*no-run\b:?\s*(?P<why>.*?)\s*-->\s*$")
_HIDDEN = re.compile(r"^\s*<!--\s*hidden\s*$")


@dataclass(frozen=True)
class Block:
    """One fenced block of a page."""

    page: str
    line: int
    """1-based line of the opening fence."""
    lang: str
    code: str
    no_run: str | None
    """The reason given in a ``no-run`` marker ("" for a marker without one), else None."""
    hidden: bool

    @property
    def runs(self) -> bool:
        """Whether the docs runner executes this block."""
        return self.lang in RUNNABLE and self.no_run is None


def _closes(line: str, fence: str) -> bool:
    """Whether ``line`` closes a block opened with ``fence``."""
    text = line.strip()
    return len(text) >= len(fence) and set(text) == {fence[0]}


def blocks(text: str, page: str = "<page>") -> list[Block]:
    """The fenced blocks of a Markdown page, in order, with their run markers."""
    lines = text.splitlines()
    found: list[Block] = []
    hidden = False
    i = 0
    while i < len(lines):
        line = lines[i]
        if _HIDDEN.match(line):
            hidden = True
        elif hidden and line.strip() == "-->":
            hidden = False
        elif match := _FENCE.match(line):
            fence, indent = match["fence"], len(match["indent"])
            start = i
            body: list[str] = []
            i += 1
            while i < len(lines) and not _closes(lines[i], fence):
                raw = lines[i]
                body.append(raw[indent:] if not raw[:indent].strip() else raw.lstrip())
                i += 1
            marker = _NO_RUN.match(lines[start - 1]) if start else None
            found.append(
                Block(
                    page=page,
                    line=start + 1,
                    lang=match["lang"],
                    code="\n".join(body) + "\n",
                    no_run=marker["why"] if marker else None,
                    hidden=hidden,
                )
            )
        i += 1
    return found


def _newest_run() -> str | None:
    """The id of the newest run in the page's store that is not a replay."""
    import replayable as rp
    from replayable.store import open_store

    flush = getattr(rp, "flush", None)
    if flush is not None:
        flush()
    for run in open_store().list_runs():
        if run.parent_run is None:
            return run.id
    return None


def run_blocks(items: list[dict[str, Any]]) -> int:
    """Run a page's blocks in order; the exit status of the first that fails, else 0."""
    namespace: dict[str, Any] = {"__name__": "__main__"}
    for item in items:
        where = f"{item['page']}:{item['line']}"
        if item["lang"] == "python":
            exec(compile(item["code"], where, "exec"), namespace)
            continue
        env = dict(os.environ)
        if "RUN" in item["code"] and (run := _newest_run()) is not None:
            env["RUN"] = run
        sys.stdout.flush()
        sys.stderr.flush()
        command = ["bash", "-euo", "pipefail", "-c", item["code"]]
        proc = subprocess.run(command, env=env, check=False)
        if proc.returncode:
            sys.stderr.write(f"{where}: the bash block exited {proc.returncode}\n")
            return proc.returncode
    return 0


def as_json(items: list[Block]) -> str:
    """The blocks as ``run_blocks`` reads them."""
    return json.dumps([asdict(b) for b in items])


if __name__ == "__main__":
    sys.exit(run_blocks(json.loads(Path(sys.argv[1]).read_text(encoding="utf-8"))))
