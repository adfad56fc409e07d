"""The stores' table rows as named tuples: one type per table shape, fields in column order.

A SQL store builds them where it reads (``RunRow._make(row)``) and takes them where it writes,
so no code past the store indexes a row by position. JSON fields are text, exactly as stored.
Reading events for replay, the SQLite store hands its rows straight to
:meth:`~replayable.trace.StoredEvent.from_stored`, which takes them in :class:`EventRow` order.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

from replayable._model import RUN_STATUSES, RunStatus

__all__ = [
    "RUN_STATUSES",
    "CheckRow",
    "CheckRunRow",
    "EventRow",
    "Outcome",
    "RunRow",
    "RunStatus",
]

Outcome = Literal["unchanged", "diverged", "failed", "not_replayable"]
"""What checking one run found: same path, a divergence, an exception, or could not replay."""


class RunRow(NamedTuple):
    """One row of ``runs``: a run's header (tags, metadata, environment, error as JSON text)."""

    id: str
    name: str | None
    tags: str
    metadata: str
    environment: str
    started_at: float
    ended_at: float | None
    status: str
    error: str | None
    parent_run: str | None
    head_hash: str | None
    event_count: int
    signature: str | None
    hash_version: int


class CheckRow(NamedTuple):
    """One row of ``checks``: one ``replayable check`` (selection, environment, summary as JSON
    text; ``passed`` 1 or 0)."""

    id: str
    started_at: float
    ended_at: float | None
    store: str | None
    selection: str
    environment: str
    summary: str
    passed: int


class CheckRunRow(NamedTuple):
    """One row of ``check_runs``: the outcome of checking one run, ``seq`` its place in the
    check."""

    check_id: str
    seq: int
    run_id: str
    name: str | None
    outcome: Outcome
    signature: str | None
    detail: str | None
    replay_id: str | None
    duration_s: float | None


class EventRow(NamedTuple):
    """One row of ``events``: a completed call (input, output, error, meta as JSON text, exactly
    the bytes its hash covers; a served step of a replay holds a reference in ``meta``)."""

    run_id: str
    seq: int
    chain_seq: int
    address: str
    parent_seq: int | None
    boundary: str
    kind: str
    key: str
    input: str | None
    output: str | None
    error: str | None
    meta: str | None
    started_at: float
    duration_ns: int
    hash: str
