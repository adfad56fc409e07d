"""What a drift check reports: the fields compared, a changed field, a re-run step, the whole
report with its per-boundary summary."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import orjson

from replayable.trace import Run

__all__ = ["FIELDS", "DriftChange", "DriftReport", "StepDrift"]

FIELDS = ("model", "system_fingerprint", "tool", "arguments", "shape", "text", "value", "error")
"""What a drift report compares, in the order it reports them."""


@dataclass(frozen=True, slots=True)
class DriftChange:
    """One field that changed between the recorded answer and today's: ``field`` is one of
    :data:`FIELDS`; ``detail`` says how (e.g. ``customer_id: 13 -> 12``)."""

    field: str
    recorded: Any
    live: Any
    detail: str = ""

    def __str__(self) -> str:
        if self.detail:
            return f"{self.field}: {self.detail}"
        return f"{self.field}: {_short(self.recorded)} -> {_short(self.live)}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form."""
        return {
            "field": self.field,
            "recorded": self.recorded,
            "live": self.live,
            "detail": self.detail,
        }


@dataclass(slots=True)
class StepDrift:
    """One re-run step: ``status`` is ``same``, ``drifted``, or ``not_rerun`` (``reason`` says
    why: no client configured, boundary not importable, a nested call it cannot serve)."""

    run_id: str
    seq: int
    address: str
    boundary: str
    step: str
    status: str = "same"
    changes: list[DriftChange] = field(default_factory=list)
    similarity: float | None = None
    reason: str = ""

    @property
    def drifted(self) -> bool:
        """True when at least one compared field changed."""
        return self.status == "drifted"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form."""
        return {
            "run_id": self.run_id,
            "seq": self.seq,
            "address": self.address,
            "boundary": self.boundary,
            "step": self.step,
            "status": self.status,
            "changes": [c.to_dict() for c in self.changes],
            "similarity": self.similarity,
            "reason": self.reason,
        }


@dataclass(slots=True)
class DriftReport:
    """Every re-run step, and a summary per boundary (:meth:`summary`).

    For example (a sketch, not run as a doctest)::

        report = rp.drift(name="support-agent", since=timedelta(days=7))
        [(s.step, [str(c) for c in s.changes]) for s in report.drifted]
        print(report.report())
    """

    runs: list[Run]
    steps: list[StepDrift]

    @property
    def drifted(self) -> list[StepDrift]:
        """The steps whose answer changed."""
        return [s for s in self.steps if s.drifted]

    @property
    def not_rerun(self) -> list[StepDrift]:
        """The steps that could not be re-run, each with its reason."""
        return [s for s in self.steps if s.status == "not_rerun"]

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per boundary: calls, how many drifted or were not re-run, and counts by field."""
        out: dict[str, dict[str, Any]] = {}
        for s in self.steps:
            entry = out.setdefault(
                s.boundary, {"calls": 0, "drifted": 0, "not_rerun": 0, "fields": Counter()}
            )
            entry["calls"] += 1
            if s.status == "drifted":
                entry["drifted"] += 1
                entry["fields"].update({c.field for c in s.changes})
            elif s.status == "not_rerun":
                entry["not_rerun"] += 1
        for entry in out.values():
            entry["fields"] = {f: entry["fields"][f] for f in FIELDS if entry["fields"][f]}
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form: runs, steps and the per-boundary summary."""
        return {
            "runs": [r.id for r in self.runs],
            "steps": [s.to_dict() for s in self.steps],
            "summary": self.summary(),
        }

    def _repr_html_(self) -> str | None:
        """HTML for notebooks (the viewer's fragments, every recorded value escaped); None
        without jinja2, so the notebook shows the plain repr."""
        try:
            from replayable.viewer._notebook import drift_html
        except ImportError:
            return None
        return drift_html(self)

    def __rich__(self) -> Any:
        """For a rich console (terminals, ``rich.print``): recorded markup and terminal
        escapes print as text."""
        from replayable._inert import Inert
        from replayable.cli._render import drift_view

        return Inert(drift_view(self))

    def report(self) -> str:
        """A human-readable report: one line per drifted or not re-run step, then the summary."""
        lines = [
            f"drift over {len(self.runs)} run(s): {len(self.steps)} step(s) re-run live, "
            f"{len(self.drifted)} drifted, {len(self.not_rerun)} not re-run"
        ]
        for s in self.steps:
            if s.status == "drifted":
                lines.append(f"~ {s.run_id} {s.step} ({s.address})")
                lines.extend(f"    {c}" for c in s.changes)
            elif s.status == "not_rerun":
                lines.append(f"? {s.run_id} {s.step}: not re-run: {s.reason}")
        for name, entry in self.summary().items():
            how = ", ".join(f"{f} {n}" for f, n in entry["fields"].items())
            lines.append(
                f"{name}: {entry['drifted']}/{entry['calls']} call(s) drifted"
                + (f" ({how})" if how else "")
                + (f", {entry['not_rerun']} not re-run" if entry["not_rerun"] else "")
            )
        return "\n".join(lines)


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"
