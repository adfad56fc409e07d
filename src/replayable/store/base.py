"""The ``Store`` protocol every backend implements, and the row format they share.

Events travel to a store as rows (tuples in :data:`EVENT_COLUMNS` order, JSON fields already
serialized to text) so the background writer never re-serializes what it has snapshotted.
"""

from __future__ import annotations

import os
import re
import socket
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import orjson

from replayable.errors import RunNotFound
from replayable.trace import Event, Run

__all__ = [
    "CHECK_COLUMNS",
    "CHECK_RUN_COLUMNS",
    "EVENT_COLUMNS",
    "RUN_COLUMNS",
    "Checkpoint",
    "EventRow",
    "RunQuery",
    "Store",
    "event_to_row",
    "parse_since",
    "process_alive",
    "resolve_refs",
    "row_to_event",
    "run_from_row",
    "run_to_row",
]

RUN_COLUMNS = (
    "id",
    "name",
    "tags",
    "metadata",
    "environment",
    "started_at",
    "ended_at",
    "status",
    "error",
    "parent_run",
    "head_hash",
    "event_count",
    "signature",
    "hash_version",
)
"""Columns of the ``runs`` table, in the order :func:`run_to_row` gives them."""

EVENT_COLUMNS = (
    "run_id",
    "seq",
    "chain_seq",
    "address",
    "parent_seq",
    "boundary",
    "kind",
    "key",
    "input",
    "output",
    "error",
    "meta",
    "started_at",
    "duration_ns",
    "hash",
)

CHECK_COLUMNS = (
    "id",
    "started_at",
    "ended_at",
    "store",
    "selection",
    "environment",
    "summary",
    "passed",
)
"""Columns of the ``checks`` table (one row per ``replayable check``; JSON fields as text)."""

CHECK_RUN_COLUMNS = (
    "check_id",
    "seq",
    "run_id",
    "name",
    "outcome",
    "signature",
    "detail",
    "replay_id",
    "duration_s",
)
"""Columns of the ``check_runs`` table: one checked run's outcome."""

EventRow = tuple[Any, ...]
"""One event in :data:`EVENT_COLUMNS` order; input/output/error/meta as JSON text."""

Checkpoint = tuple[str, int, str, str]
"""A running run's signed checkpoint: (run id, event count, chain head, signature)."""


def _text(value: Any) -> str:
    """JSON text of a stored value, in its own order (sorting is for keys and hashes only)."""
    return orjson.dumps(value).decode()


def event_to_row(ev: Event) -> EventRow:
    """An :class:`Event` as a row."""
    return (
        ev.run_id,
        ev.seq,
        ev.chain_seq,
        ev.address,
        ev.parent_seq,
        ev.boundary,
        ev.kind,
        ev.key,
        _text(ev.input),
        _text(ev.output),
        None if ev.error is None else _text(ev.error),
        _text(ev.meta),
        ev.started_at,
        ev.duration_ns,
        ev.hash,
    )


def run_to_row(run: Run) -> tuple[Any, ...]:
    """A :class:`Run` as a row in :data:`RUN_COLUMNS` order (JSON fields as text)."""
    return (
        run.id,
        run.name,
        _text(run.tags),
        _text(run.metadata),
        _text(run.environment),
        run.started_at,
        run.ended_at,
        run.status,
        None if run.error is None else _text(run.error),
        run.parent_run,
        run.head_hash,
        run.event_count,
        run.signature,
        run.hash_version,
    )


def process_alive(environment: Mapping[str, Any]) -> bool:
    """Whether the process that recorded a run (``pid`` on ``host``) may still be running.

    A run on another host is assumed alive: only its own host can tell.
    """
    pid, host = environment.get("pid"), environment.get("host")
    if not isinstance(pid, int):
        return False
    if host != socket.gethostname():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def run_from_row(row: Sequence[Any], store: Store | None = None) -> Run:
    """A row in :data:`RUN_COLUMNS` order as a :class:`Run`.

    A run still marked ``running`` whose recording process is gone reads back as ``incomplete``.
    """
    environment = _json(row[4]) or {}
    status = row[7]
    if status == "running" and not process_alive(environment):
        status = "incomplete"
    return Run(
        id=row[0],
        name=row[1],
        tags=_json(row[2]) or {},
        metadata=_json(row[3]) or {},
        environment=environment,
        started_at=row[5],
        ended_at=row[6],
        status=status,
        error=_json(row[8]),
        parent_run=row[9],
        head_hash=row[10],
        event_count=row[11],
        signature=row[12],
        hash_version=row[13],
        store=store,
    )


def _json(value: Any) -> Any:
    if value is None:
        return None
    if isinstance(value, str | bytes | bytearray | memoryview):
        return orjson.loads(bytes(value) if not isinstance(value, str) else value)
    return value  # already decoded (e.g. PostgreSQL jsonb)


def resolve_refs(store: Store, events: Iterable[Event]) -> Iterator[Event]:
    """``events`` as read from ``store``, each served step's reference to its source event
    (``meta["$ref"]``: run, seq, input too) resolved into the values it stands for.

    A replay stores a served step as a reference rather than a second copy; its hash covers the
    resolved values, so what this yields verifies, and exports self-contained. A reference whose
    source is gone is left unresolved (``meta["unresolved_ref"]``), and fails verification.
    """
    sources: dict[str, dict[int, Event]] = {}
    for ev in events:
        ref = ev.meta.pop("$ref", None) if "$ref" in ev.meta else None
        if ref is not None:
            run_id, seq, same_input = ref
            found = sources.get(run_id)
            if found is None:
                found = sources[run_id] = {e.seq: e for e in store.iter_events(run_id)}
            src = found.get(seq)
            if src is None:
                ev.meta["unresolved_ref"] = ref
            else:
                ev.output = src.output
                if same_input:
                    ev.input = src.input
        yield ev


def row_to_event(row: Sequence[Any]) -> Event:
    """A row (any sequence in :data:`EVENT_COLUMNS` order) as an :class:`Event`."""
    return Event(
        run_id=row[0],
        seq=row[1],
        chain_seq=row[2],
        address=row[3],
        parent_seq=row[4],
        boundary=row[5],
        kind=row[6],
        key=row[7],
        input=_json(row[8]),
        output=_json(row[9]),
        error=_json(row[10]),
        meta=_json(row[11]) or {},
        started_at=row[12],
        duration_ns=row[13],
        hash=row[14],
    )


@dataclass(frozen=True)
class RunQuery:
    """Filters for :meth:`Store.list_runs`; every field is optional and they combine with AND."""

    name: str | None = None
    tags: Mapping[str, str] | None = None
    status: str | None = None
    since: float | None = None
    until: float | None = None
    boundary: str | None = None
    has_error: bool | None = None
    limit: int = 50


_PERIOD = re.compile(r"^(\d+(?:\.\d+)?)\s*([smhdw])$")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_since(text: str) -> float:
    """A period back from now (``30m``, ``12h``, ``7d``, ``2w``) or an ISO date/time (UTC when
    it has no offset) as epoch seconds, the unit of :attr:`RunQuery.since`; raises
    ``ValueError`` saying what to write instead.

    >>> import time
    >>> round((time.time() - parse_since("7d")) / 86400)
    7
    >>> parse_since("2026-01-01")
    1767225600.0
    """
    m = _PERIOD.match(text.strip())
    if m:
        return time.time() - float(m.group(1)) * _UNITS[m.group(2)]
    from datetime import UTC, datetime

    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r}: use a duration like 1h, 30m, 2d or an ISO date") from None
    if dt.tzinfo is None:
        dt = dt.replace(tzinfo=UTC)
    return dt.timestamp()


@runtime_checkable
class Store(Protocol):
    """Where runs and their events live. Implementations must be safe to use from two threads
    (the caller's and the background writer's).

    Backends: :class:`~replayable.store.sqlite.SQLiteStore`,
    :class:`~replayable.store.postgres.PostgresStore` and the read-only
    :class:`~replayable.store.files.TraceDirStore`.

    >>> import os, time
    >>> from replayable.store import open_store
    >>> store = open_store(os.path.join(tmp_dir, "traces.db"))
    >>> [run.id for run in store.list_runs(RunQuery(status="error", since=time.time() - 3600))]
    []
    """

    url: str

    def create_run(self, run: Run) -> None:
        """Insert a new run (status ``running``)."""

    def finish_run(self, run: Run) -> None:
        """Update a run's end time, status, error, metadata, head hash, event count and
        signature (sealed by the writer: stores store, they do not sign)."""

    def write_rows(self, rows: Sequence[EventRow], checkpoints: Sequence[Checkpoint] = ()) -> None:
        """Insert a batch of event rows in one transaction, and in the same transaction set
        each checkpoint's count, head hash and signature on its run while it is ``running``."""

    def get_run(self, run_id: str) -> Run:
        """The run with this id or unique id prefix; raises ``RunNotFound``."""

    def iter_events(self, run_id: str) -> Iterator[Event]:
        """The run's events in ``seq`` order, streamed."""

    def list_runs(self, query: RunQuery | None = None) -> list[Run]:
        """Runs matching the query, newest first."""

    def put_run(self, run: Run, rows: Sequence[EventRow]) -> bool:
        """Insert a whole run with its events in one transaction (import, copy).

        Returns False, writing nothing, when a run with this id is already there.
        """

    def replace_run(self, run: Run, rows: Sequence[EventRow]) -> None:
        """Overwrite a run's header and all its events in one transaction (``scan --fix``)."""

    def delete_runs(self, *, before: float) -> int:
        """Delete runs that started before this epoch time; returns how many."""

    def save_check(self, check: Sequence[Any], runs: Sequence[Sequence[Any]]) -> None:
        """Insert a check (:data:`CHECK_COLUMNS`) and its runs' outcomes
        (:data:`CHECK_RUN_COLUMNS`) in one transaction."""

    def list_checks(self, limit: int = 50) -> list[tuple[Any, ...]]:
        """Check rows, newest first."""

    def get_check(self, check_id: str) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
        """A check row (by id or unique prefix) and its run rows in order; raises
        ``RunNotFound``."""

    def close(self) -> None:
        """Release connections."""


def runs_query(
    q: RunQuery, *, ph: str, tag_clause: str, tag_path: Callable[[str], str]
) -> tuple[str, list[Any]]:
    """The ``WHERE ... ORDER BY ... LIMIT`` part of a run query, shared by the SQL stores.

    ``ph`` is the driver's placeholder (``?`` or ``%s``); ``tag_clause`` compares one tag (two
    placeholders: the path from ``tag_path(tag)``, then the value). ``running`` and
    ``incomplete`` are told apart after reading (see :func:`only_status`), so they get no LIMIT.
    """
    where: list[str] = []
    params: list[Any] = []
    if q.name is not None:
        where.append(f"name = {ph}")
        params.append(q.name)
    if q.status is not None:
        where.append(f"status = {ph}")
        params.append("running" if q.status == "incomplete" else q.status)
    if q.since is not None:
        where.append(f"started_at >= {ph}")
        params.append(q.since)
    if q.until is not None:
        where.append(f"started_at < {ph}")
        params.append(q.until)
    for tag, value in (q.tags or {}).items():
        where.append(tag_clause)
        params.extend([tag_path(tag), value])
    if q.boundary is not None:
        where.append(
            "EXISTS (SELECT 1 FROM events e WHERE e.run_id = runs.id "
            f"AND (e.boundary = {ph} OR e.boundary LIKE {ph} ESCAPE '\\'))"
        )
        params.extend([q.boundary, f"%:{like_escape(q.boundary)}"])
    if q.has_error is not None:
        clause = (
            "(status = 'error' OR EXISTS (SELECT 1 FROM events e WHERE e.run_id = runs.id "
            "AND e.error IS NOT NULL))"
        )
        where.append(clause if q.has_error else f"NOT {clause}")
    sql = (" WHERE " + " AND ".join(where)) if where else ""
    sql += " ORDER BY started_at DESC"
    if q.status not in ("running", "incomplete"):
        sql += f" LIMIT {ph}"
        params.append(q.limit)
    return sql, params


def only_status(q: RunQuery, runs: list[Run]) -> list[Run]:
    """Apply the ``running`` / ``incomplete`` distinction, which needs the recorder's liveness."""
    if q.status in ("running", "incomplete"):
        return [r for r in runs if r.status == q.status][: q.limit]
    return runs


def like_escape(text: str) -> str:
    """``text`` for a LIKE pattern with ``\\`` as the escape character."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def pick_run(run_id: str, rows: Sequence[Sequence[Any]], store: Any, url: str) -> Run:
    """The run a lookup by id or prefix means: an exact id, else the only prefix match.

    ``rows`` are the first few runs whose id equals ``run_id`` or starts with it.
    """
    if not run_id:
        raise RunNotFound("empty run id; list runs with `replayable runs`")
    exact = [r for r in rows if r[0] == run_id]
    if exact or len(rows) == 1:
        return run_from_row((exact or rows)[0], store)
    if not rows:
        raise RunNotFound(f"no run {run_id!r} in {url}; list runs with `replayable runs`")
    ids = ", ".join(str(r[0]) for r in rows[:3])
    raise RunNotFound(
        f"run id prefix {run_id!r} is ambiguous in {url} ({ids}, ...); give more of it"
    )


def pick_check(check_id: str, rows: Sequence[Sequence[Any]], url: str) -> tuple[Any, ...]:
    """The check a lookup by id or prefix means (``rows``: the first few whose id equals
    ``check_id`` or starts with it)."""
    exact = [r for r in rows if r[0] == check_id]
    if check_id and (exact or len(rows) == 1):
        return tuple((exact or rows)[0])
    if not check_id or not rows:
        raise RunNotFound(f"no check {check_id!r} in {url}; list checks with `replayable checks`")
    raise RunNotFound(f"check id prefix {check_id!r} is ambiguous in {url}; give more of it")
