"""What a check found: every run's outcome, the diverged runs grouped, storage rows."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, get_args

import orjson

from replayable.store.base import CheckRow, CheckRunRow, Outcome

__all__ = ["EXAMPLES", "OUTCOMES", "CheckReport", "Group", "RunOutcome", "group_outcomes"]

OUTCOMES: tuple[Outcome, ...] = get_args(Outcome)
EXAMPLES = 5
"""Example runs kept per group."""

# -- the report ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """What checking one recorded run gave.

    ``signature`` groups diverged runs (``reason boundary [fields]``) and failed ones (the
    exception type); ``detail`` is one line saying what happened; ``replay_id`` is the kept
    replay of a diverged or failed run (diff it against ``run_id``).
    """

    run_id: str
    name: str | None
    outcome: Outcome
    signature: str | None = None
    detail: str = ""
    replay_id: str | None = None
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON types."""
        return {
            "run_id": self.run_id,
            "name": self.name,
            "outcome": self.outcome,
            "signature": self.signature,
            "detail": self.detail,
            "replay_id": self.replay_id,
            "duration_s": self.duration_s,
        }


@dataclass(frozen=True, slots=True)
class Group:
    """Runs that diverged the same way: the first divergence's boundary, reason and changed
    field paths; how many; and a few examples as (run id, replay id) pairs."""

    signature: str
    boundary: str
    reason: str
    fields: tuple[str, ...]
    count: int
    examples: tuple[tuple[str, str | None], ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON types."""
        return {
            "signature": self.signature,
            "boundary": self.boundary,
            "reason": self.reason,
            "fields": list(self.fields),
            "count": self.count,
            "examples": [{"run_id": r, "replay_id": p} for r, p in self.examples],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Group:
        """Inverse of :meth:`to_dict`."""
        return cls(
            signature=d["signature"],
            boundary=d["boundary"],
            reason=d["reason"],
            fields=tuple(d.get("fields") or ()),
            count=int(d["count"]),
            examples=tuple((e["run_id"], e.get("replay_id")) for e in d.get("examples") or ()),
        )


@dataclass(slots=True)
class CheckReport:
    """The result of :func:`check`: every run's outcome, and the diverged runs grouped.

    >>> import os
    >>> from datetime import timedelta
    >>> import replayable as rp
    >>> store = rp.open_store(os.path.join(tmp_dir, "traces.db"))
    >>> lookup = rp.boundary(kind="tool", name="demo:lookup")(lambda name: {"id": 7})
    >>> with rp.record(store=store):
    ...     lookup("Bob")["id"]
    7
    >>> report = rp.check(store=store, since=timedelta(days=7))
    >>> report.counts, report.groups
    ({'unchanged': 1, 'diverged': 0, 'failed': 0, 'not_replayable': 0}, [])

    A run whose replay diverges lands in a group named by its signature, e.g.
    ``'changed my_agent:issue_refund [amount]'``.
    """

    id: str
    started_at: float
    ended_at: float
    store: str
    selection: dict[str, Any]
    environment: dict[str, Any]
    outcomes: list[RunOutcome]
    groups: list[Group]
    saved_to: str | None = None
    stored_counts: dict[str, int] | None = None
    """Counts read with a kept check's header when its runs were not loaded."""

    @property
    def counts(self) -> dict[str, int]:
        """Runs per outcome (every outcome present, zeros included)."""
        counts: dict[str, int] = dict.fromkeys(OUTCOMES, 0)
        if not self.outcomes and self.stored_counts:
            return {**counts, **self.stored_counts}
        for o in self.outcomes:
            counts[o.outcome] += 1
        return counts

    @property
    def ok(self) -> bool:
        """True when no run diverged or failed (not replayable runs do not fail a check)."""
        c = self.counts
        return not c["diverged"] and not c["failed"]

    @property
    def checked(self) -> int:
        """Runs actually replayed (unchanged, diverged or failed): a check whose selected runs
        were all not replayable checked nothing, though it is :attr:`ok`."""
        c = self.counts
        return c["unchanged"] + c["diverged"] + c["failed"]

    def runs(self, outcome: str) -> list[RunOutcome]:
        """The runs with this outcome, in the order they were selected."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
        return [o for o in self.outcomes if o.outcome == outcome]

    def to_dict(self) -> dict[str, Any]:
        """JSON types: the header, counts, groups and every run's outcome."""
        return {
            "id": self.id,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "store": self.store,
            "saved_to": self.saved_to,
            "selection": self.selection,
            "environment": self.environment,
            "ok": self.ok,
            "counts": self.counts,
            "groups": [g.to_dict() for g in self.groups],
            "runs": [o.to_dict() for o in self.outcomes],
        }

    def _repr_html_(self) -> str | None:
        """HTML for notebooks (the viewer's fragments, every recorded value escaped); None
        without jinja2, so the notebook shows the plain repr."""
        try:
            from replayable.viewer._notebook import check_html
        except ImportError:
            return None
        return check_html(self)

    def __rich__(self) -> Any:
        """For a rich console (terminals, ``rich.print``): recorded markup and terminal
        escapes print as text."""
        from replayable._inert import Inert
        from replayable.cli._render import check_view

        return Inert(check_view(self))

    # -- storage -------------------------------------------------------------------------------

    def to_rows(self) -> tuple[CheckRow, list[CheckRunRow]]:
        """The ``checks`` row and the ``check_runs`` rows."""
        summary = {"counts": self.counts, "groups": [g.to_dict() for g in self.groups]}
        head = CheckRow(
            id=self.id,
            started_at=self.started_at,
            ended_at=self.ended_at,
            store=self.store,
            selection=_text(self.selection),
            environment=_text(self.environment),
            summary=_text(summary),
            passed=int(self.ok),
        )
        runs = [
            CheckRunRow(
                check_id=self.id,
                seq=i,
                run_id=o.run_id,
                name=o.name,
                outcome=o.outcome,
                signature=o.signature,
                detail=o.detail,
                replay_id=o.replay_id,
                duration_s=o.duration_s,
            )
            for i, o in enumerate(self.outcomes)
        ]
        return head, runs

    @classmethod
    def from_rows(
        cls, head: CheckRow, runs: Sequence[CheckRunRow] = (), saved_to: str | None = None
    ) -> CheckReport:
        """Inverse of :meth:`to_rows` (without run rows: a header with its groups only)."""
        summary = _load(head.summary) or {}
        return cls(
            id=head.id,
            started_at=float(head.started_at),
            ended_at=float(head.ended_at or head.started_at),
            store=head.store or "",
            selection=_load(head.selection) or {},
            environment=_load(head.environment) or {},
            outcomes=[
                RunOutcome(
                    run_id=r.run_id,
                    name=r.name,
                    outcome=r.outcome,
                    signature=r.signature,
                    detail=r.detail or "",
                    replay_id=r.replay_id,
                    duration_s=float(r.duration_s or 0.0),
                )
                for r in runs
            ],
            groups=[Group.from_dict(g) for g in summary.get("groups") or ()],
            saved_to=saved_to,
            stored_counts=summary.get("counts"),
        )


def _text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _load(value: Any) -> Any:
    if value is None or not isinstance(value, str | bytes):
        return value
    return orjson.loads(value)


def group_outcomes(outcomes: Iterable[RunOutcome], signatures: Mapping[str, Any]) -> list[Group]:
    """Diverged runs grouped by signature, largest group first (ties by signature)."""
    members: dict[str, list[RunOutcome]] = {}
    for o in outcomes:
        if o.outcome == "diverged" and o.signature is not None:
            members.setdefault(o.signature, []).append(o)
    groups = []
    for sig, runs in members.items():
        parts = signatures.get(sig) or {}
        groups.append(
            Group(
                signature=sig,
                boundary=str(parts.get("boundary", "")),
                reason=str(parts.get("reason", "")),
                fields=tuple(parts.get("fields") or ()),
                count=len(runs),
                examples=tuple((o.run_id, o.replay_id) for o in runs[:EXAMPLES]),
            )
        )
    groups.sort(key=lambda g: (-g.count, g.signature))
    return groups
