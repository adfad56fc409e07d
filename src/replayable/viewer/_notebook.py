"""Runs, replays, diffs and reports as HTML for notebooks (``_repr_html_``): the viewer's own
fragments (the step tree rows, the diff, the check groups) rendered without links, with a
scoped stylesheet, every recorded value escaped. Needs jinja2 only."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from replayable._rundiff import RunDiff
from replayable.trace import Event, Run
from replayable.viewer._data import loaded_run, run_summary, tree_rows
from replayable.viewer._html import template_env

if TYPE_CHECKING:
    from replayable._check import CheckReport
    from replayable._drift._report import DriftReport
    from replayable.replay import Replay

__all__ = ["MAX_ROWS", "check_html", "diff_html", "drift_html", "replay_html", "run_html"]

MAX_ROWS = 500
"""Steps (or diff rows) shown in a notebook; the rest are counted."""


def _render(name: str, **context: Any) -> str:
    return template_env().get_template(name).render(**context).strip()


def run_html(run: Run, events: list[Event] | None = None) -> str:
    """A run: its header and step tree (timeline bars included), from its store unless
    ``events`` are given."""
    if events is None and run.store is not None:
        events = list(run.store.iter_events(run.id))
    loaded = loaded_run(run, events or [])
    return _render(
        "nb_run.html",
        run=run_summary(run),
        rows=tree_rows(loaded, 0, MAX_ROWS),
        total=len(loaded.rows),
        has_events=events is not None,
    )


def replay_html(replay: Replay) -> str:
    """A replay: its source, its own run id, and every divergence with its field changes."""
    divergences = [d.to_dict() for d in replay.divergences]
    for d in divergences:
        d["changes"] = [dict(c) for c in d["changes"]]
    return _render(
        "nb_replay.html",
        source=run_summary(replay.source),
        replay_id=replay.run.id,
        divergences=divergences,
        ok=not divergences,
    )


def diff_html(d: RunDiff) -> str:
    """Two runs aligned: counts, the first divergence with its changes, every step."""
    return _render(
        "nb_diff.html",
        a=run_summary(d.a),
        b=run_summary(d.b),
        pairs=d.pairs[:MAX_ROWS],
        total=len(d.pairs),
        first=d.first_divergence,
        counts=d.counts(),
    )


def check_html(report: CheckReport) -> str:
    """A check: counts, the diverged runs by group, the failed and not replayable runs."""
    runs: dict[str, list[dict[str, Any]]] = {
        key: [o.to_dict() for o in report.runs(key)] for key in ("failed", "not_replayable")
    }
    check = report.to_dict()
    check.pop("runs")
    return _render("nb_check.html", check=check, total=sum(report.counts.values()), runs=runs)


def drift_html(report: DriftReport) -> str:
    """A drift report: the summary per boundary, then each drifted step's changes."""
    return _render(
        "nb_drift.html",
        runs=len(report.runs),
        steps=len(report.steps),
        drifted=report.drifted,
        not_rerun=report.not_rerun,
        summary=report.summary(),
    )
