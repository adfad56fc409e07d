"""The ``replayable`` command line. The only place (with the viewer) that formats for humans.

Each command group lives in its own module and registers itself on :data:`main` on import.
"""

from __future__ import annotations

from replayable.cli import (  # noqa: F401  (registration)
    _check,
    _collect,
    _core,
    _demo,
    _mcp,
    _scan,
    _store,
    _testing,
    _views,
    _whatif,
)
from replayable.cli._common import main

__all__ = ["main"]

_SHORT_HELP = {
    "demo": "Record an incident, replay it offline, then against a fix.",
    "runs": "List recorded runs (filters: name, tag, status, since, boundary).",
    "show": "Show one run as a step tree, or one step's full input and output.",
    "replay": "Replay a run against your code; exit 1 if it took another path.",
    "diff": "Align two runs and show where they part ways.",
    "stats": "Runs, steps, errors and tokens by model over a period.",
    "serve": "Start the local web viewer (127.0.0.1).",
    "export": "Write one run as a JSONL trace file.",
    "import": "Import trace files (JSONL, or --format otlp) into a store, all or nothing.",
    "collect": "Receive OpenTelemetry traces (OTLP/HTTP) and keep each as a run.",
    "verify": "Check a run's or trace file's hash chain (and signature).",
    "copy": "Copy runs between stores (e.g. PostgreSQL to a laptop SQLite).",
    "prune": "Delete runs older than a period (retention).",
    "scan": "Find secrets (--pii: personal data) already recorded; --fix redacts and re-signs.",
    "promote": "Turn a run into a trace file plus a ready-to-run pytest test.",
    "fuzz": "Perturb recorded outputs; check an invariant on each re-run.",
    "drift": "Re-run recorded model calls live; report what today's model does differently.",
    "fork": "Replay a run up to a step, then change it or run live from there.",
    "check": "Replay many recorded runs against your code; group what changed.",
    "checks": "List the checks kept in the store, or show one.",
    "mcp": "Serve runs to a coding agent over MCP (--allow-replay: replay, fork, check).",
}
for _name, _text in _SHORT_HELP.items():
    if _name in main.commands:
        main.commands[_name].short_help = _text

main.epilog = """\b
The loop:
  replayable demo                                 see it work, offline
  replayable runs --status error --since 1d       find the incident
  replayable show RUN                             what happened, step by step
  replayable replay RUN --import my_agent         your fixed code against the recording
  replayable diff RUN REPLAY_RUN                  where the two part ways
  replayable promote RUN --forbid delete_record   a regression test for CI

\b
What if:
  replayable fork RUN --import my_agent --at plan#1 --set-output JSON   had it returned that
  replayable fork RUN --import my_agent --at plan#1 --live-from          run live from there
  replayable drift --since 7d --import my_agent   today's model on last week's inputs
"""
