"""The ``Store`` protocol every backend implements, and the row format they share.

Events travel to a store as rows (tuples in :data:`EVENT_COLUMNS` order, JSON fields already
serialized to text) so the background writer never re-serializes what it has snapshotted.
Runs and checks travel as named tuples (:class:`RunRow`, :class:`CheckRow`,
:class:`CheckRunRow`), read by field name. The SQL backends share their statements and reads
through :class:`SQLStore` and a :class:`Dialect` (placeholder style, JSON tag lookup).
"""

from __future__ import annotations

import os
import re
import socket
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast, runtime_checkable

import orjson

from replayable._exports import publish
from replayable._ranges import expand_range, source_of_row
from replayable.errors import RunNotFound
from replayable.store._rows import (
    RUN_STATUSES,
    CheckRow,
    CheckRunRow,
    EventRow,
    Outcome,
    RunRow,
    RunStatus,
)
from replayable.trace import Event, Run, StoredEvent, Verification, verify_run

__all__ = [
    "CHECK_COLUMNS",
    "CHECK_RUN_COLUMNS",
    "EVENT_COLUMNS",
    "RUN_COLUMNS",
    "RUN_STATUSES",
    "CheckRow",
    "CheckRunRow",
    "Checkpoint",
    "Counters",
    "Dialect",
    "EventRow",
    "Outcome",
    "References",
    "RunQuery",
    "RunRow",
    "RunStatus",
    "SQLStore",
    "Store",
    "event_to_row",
    "parse_since",
    "process_alive",
    "ref_pairs",
    "resolve_refs",
    "row_to_event",
    "run_from_row",
    "run_to_row",
    "verify_stored",
]

RUN_COLUMNS = RunRow._fields
"""Columns of the ``runs`` table, in the order :func:`run_to_row` gives them."""

EVENT_COLUMNS = EventRow._fields
"""Columns of the ``events`` table, in :class:`EventRow` order."""

CHECK_COLUMNS = CheckRow._fields
"""Columns of the ``checks`` table (one row per ``replayable check``; JSON fields as text)."""

CHECK_RUN_COLUMNS = CheckRunRow._fields
"""Columns of the ``check_runs`` table: one checked run's outcome."""

Checkpoint = tuple[str, int, str, str]
"""A running run's signed checkpoint: (run id, event count, chain head, signature)."""


def _text(value: Any) -> str:
    """JSON text of a stored value, in its own order (sorting is for keys and hashes only)."""
    return orjson.dumps(value).decode()


def event_to_row(ev: Event) -> EventRow:
    """An :class:`Event` as an ``events`` row (JSON fields as text: the bytes its hash covers,
    as stored while a field of a stored event was never read)."""
    inp, out, error, meta = ev.stored_fields()
    return EventRow(
        run_id=ev.run_id,
        seq=ev.seq,
        chain_seq=ev.chain_seq,
        address=ev.address,
        parent_seq=ev.parent_seq,
        boundary=ev.boundary,
        kind=ev.kind,
        key=ev.key,
        input=inp.decode(),
        output=out.decode(),
        error=None if error is None else error.decode(),
        meta=meta.decode(),
        started_at=ev.started_at,
        duration_ns=ev.duration_ns,
        hash=ev.hash,
    )


def run_to_row(run: Run) -> RunRow:
    """A :class:`Run` as a ``runs`` row (JSON fields as text)."""
    return RunRow(
        id=run.id,
        name=run.name,
        tags=_text(run.tags),
        metadata=_text(run.metadata),
        environment=_text(run.environment),
        started_at=run.started_at,
        ended_at=run.ended_at,
        status=run.status,
        error=None if run.error is None else _text(run.error),
        parent_run=run.parent_run,
        head_hash=run.head_hash,
        event_count=run.event_count,
        signature=run.signature,
        hash_version=run.hash_version,
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


def run_from_row(row: RunRow, store: Store | None = None) -> Run:
    """A ``runs`` row as a :class:`Run`.

    A run still marked ``running`` whose recording process is gone reads back as ``incomplete``.
    """
    environment = _json(row.environment) or {}
    status = cast(RunStatus, row.status)  # as stored (a value no writer sets reads as it is)
    if status == "running" and not process_alive(environment):
        status = "incomplete"
    return Run(
        id=row.id,
        name=row.name,
        tags=_json(row.tags) or {},
        metadata=_json(row.metadata) or {},
        environment=environment,
        started_at=row.started_at,
        ended_at=row.ended_at,
        status=status,
        error=_json(row.error),
        parent_run=row.parent_run,
        head_hash=row.head_hash,
        event_count=row.event_count,
        signature=row.signature,
        hash_version=row.hash_version,
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
    (``meta["$ref"]``: run, seq, input too) resolved into the values it stands for, and each
    range row (``meta["$range"]``, see :mod:`replayable._ranges`) expanded into the served
    steps it stands for.

    A replay stores a served step as a reference rather than a second copy, and a run of them
    as one range; the hashes cover the resolved values, so what this yields verifies, and
    exports self-contained. A reference whose source is gone is left unresolved
    (``meta["unresolved_ref"]``), and fails verification.
    """
    sources: dict[str, dict[int, Event]] = {}

    def source(run_id: str, of: str) -> dict[int, Event]:
        found = sources.get(run_id)
        if found is None:
            resolving: set[str] = _RESOLVING.__dict__.setdefault("runs", set())
            if run_id == of or run_id in resolving:
                return {}  # an edited reference going round in a circle: left unresolved
            resolving.add(run_id)
            try:
                found = sources[run_id] = {e.seq: e for e in store.iter_events(run_id)}
            finally:
                resolving.discard(run_id)
        return found

    for ev in events:
        raw = ev.stored("meta") if type(ev) is StoredEvent else b""
        if raw.startswith(b'{"$range":'):  # as the writer stores one, nothing before it
            try:
                d = ev.meta.get("$range")
            except orjson.JSONDecodeError:  # edited into no JSON: read as it is, fails verify
                yield ev
                continue
            run_id = d[0] if isinstance(d, list) and d and isinstance(d[0], str) else None
            found = {} if run_id is None else source(run_id, ev.run_id)
            yield from expand_range(ev, raw, found)
            continue
        if not ev.has_meta("$ref"):
            yield ev  # the common case (a stored event tells from its bytes, undecoded)
            continue
        ref = ev.meta.pop("$ref")
        if ref is not None:
            run_id, seq, same_input = ref
            src = source(run_id, ev.run_id).get(seq)
            if src is None:
                ev.meta["unresolved_ref"] = ref
            else:
                _copy_field(ev, src, "output")
                if same_input:
                    _copy_field(ev, src, "input")
        yield ev


_RESOLVING = threading.local()
"""The source runs this thread is reading to resolve references (a circle is refused)."""


def _copy_field(ev: Event, src: Event, name: str) -> None:
    """``ev.<name> = src.<name>``, as the stored bytes when ``ev`` is a stored event (a replay
    of a replay then serves and hashes them without decoding)."""
    if isinstance(ev, StoredEvent):
        ev.set_stored(name, src.stored(name))
    else:
        setattr(ev, name, getattr(src, name))


def row_to_event(row: Sequence[Any]) -> Event:
    """A row (any sequence in :data:`EVENT_COLUMNS` order) as an :class:`Event`: a
    :class:`~replayable.trace.StoredEvent`, its JSON fields decoded only when read."""
    r = EventRow._make(row)
    return StoredEvent.from_stored(
        r.run_id,
        r.seq,
        r.chain_seq,
        r.address,
        r.parent_seq,
        r.boundary,
        r.kind,
        r.key,
        _raw(r.input),
        _raw(r.output),
        _raw(r.error),
        _raw(r.meta),
        r.started_at,
        r.duration_ns,
        r.hash,
    )


def _raw(value: Any) -> bytes | None:
    """A stored JSON column as bytes (SQLite gives bytes, PostgreSQL text)."""
    if value is None or type(value) is bytes:
        return value
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, bytearray | memoryview):
        return bytes(value)
    return orjson.dumps(value)  # already decoded (a jsonb column)


@dataclass(frozen=True)
class RunQuery:
    """Filters for :meth:`Store.list_runs`; every field is optional and they combine with AND.

    A ``status`` that is not a :data:`RunStatus` raises ``ValueError`` (it would match nothing).
    """

    name: str | None = None
    tags: Mapping[str, str] | None = None
    status: RunStatus | None = None
    since: float | None = None
    until: float | None = None
    boundary: str | None = None
    has_error: bool | None = None
    limit: int = 50

    def __post_init__(self) -> None:
        if self.status is not None and self.status not in RUN_STATUSES:
            raise ValueError(f"status {self.status!r}: use one of {', '.join(RUN_STATUSES)}")


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
        """Runs matching the query, newest first (runs started at the same time: by id,
        descending)."""

    def put_run(self, run: Run, rows: Sequence[EventRow]) -> bool:
        """Insert a whole run with its events in one transaction (import, copy).

        Returns False, writing nothing, when a run with this id is already there.
        """

    def replace_run(self, run: Run, rows: Sequence[EventRow]) -> None:
        """Overwrite a run's header and all its events in one transaction (``scan --fix``)."""

    def delete_runs(self, *, before: float) -> int:
        """Delete runs that started before this epoch time; returns how many."""

    def save_check(self, check: CheckRow, runs: Sequence[CheckRunRow]) -> None:
        """Insert a check and its runs' outcomes in one transaction."""

    def list_checks(self, limit: int = 50) -> list[CheckRow]:
        """Check rows, newest first (same start time: by id, descending)."""

    def get_check(self, check_id: str) -> tuple[CheckRow, list[CheckRunRow]]:
        """A check row (by id or unique prefix) and its run rows in order; raises
        ``RunNotFound``."""

    def close(self) -> None:
        """Release connections."""


@runtime_checkable
class Counters(Protocol):
    """A store that keeps named counters: what happened that is not a run in it (sampling's
    dropped runs, and its kept runs by reason). The SQL stores keep them in ``counters``."""

    def add_counts(self, counts: Mapping[str, int]) -> None:
        """Add each count to its counter (a counter starts at 0)."""

    def counts(self) -> dict[str, int]:
        """Every counter, by name."""


@runtime_checkable
class References(Protocol):
    """A store whose rows may refer to another run's events (a replay's range rows and served
    references): it knows which runs each run refers to, and pruning keeps them."""

    def sources_of(self, run_id: str) -> list[str]:
        """The runs whose events the rows of ``run_id`` refer to."""

    def kept_before(self, before: float) -> list[str]:
        """The runs started before ``before`` that pruning keeps: kept runs refer to them."""


def ref_pairs(rows: Iterable[EventRow]) -> list[tuple[str, str]]:
    """(run id, source run) for each run among ``rows`` whose rows refer to another run's
    events, once each: what the SQL stores record in ``run_refs`` as they insert rows."""
    pairs: dict[tuple[str, str], None] = {}
    for row in rows:
        meta = row[11]
        if isinstance(meta, str) and meta.startswith('{"$r'):
            source = source_of_row(meta)
            if source is not None:
                pairs[(row[0], source)] = None
    return list(pairs)


def verify_stored(store: Store, run: Run) -> Verification:
    """Verify ``run`` from ``store`` and, when its rows serve another run's events (a replay's
    ranges and references), every run it serves from, directly or through those: a served
    value is only as good as the recording it came from (an edit there that no served step
    shows, its header say, fails the replay too, naming the source)."""
    result = verify_run(run, store.iter_events(run.id))
    if not result.ok or not isinstance(store, References):
        return result
    seen, todo = {run.id}, store.sources_of(run.id)
    while todo:
        source_id = todo.pop()
        if source_id in seen:
            continue
        seen.add(source_id)
        try:
            source = store.get_run(source_id)
        except RunNotFound:
            checked = None
        else:
            checked = verify_run(source, store.iter_events(source_id))
        if checked is None or not checked.ok:
            result.ok = False
            result.problem = f"run {run.id} serves events of run {source_id}, which " + (
                "is gone" if checked is None else f"does not verify: {checked.problem}"
            )
            return result
        todo.extend(store.sources_of(source_id))
    return result


def runs_query(
    q: RunQuery,
    *,
    ph: str,
    tag_clause: str,
    tag_path: Callable[[str], str],
    range_parts: tuple[str, str, str, str] | None = None,
) -> tuple[str, list[Any]]:
    """The ``WHERE ... ORDER BY ... LIMIT`` part of a run query, shared by the SQL stores.

    ``ph`` is the driver's placeholder (``?`` or ``%s``); ``tag_clause`` compares one tag (two
    placeholders: the path from ``tag_path(tag)``, then the value); ``range_parts`` (SQL over a
    range row ``r``: is it one, its source run, first seq, steps) lets the ``boundary`` filter
    see the steps a replay's range rows stand for. ``running`` and
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
        match = f"(e.boundary = {ph} OR e.boundary LIKE {ph} ESCAPE '\\')"
        clause = f"EXISTS (SELECT 1 FROM events e WHERE e.run_id = runs.id AND {match})"
        pattern = [q.boundary, f"%:{like_escape(q.boundary)}"]
        params.extend(pattern)
        if range_parts is not None:
            # A replay's range row stands for the source's steps it refers to: theirs count.
            clause = f"({clause} OR runs.id IN ({_ranged_steps(range_parts)}{match}))"
            params.extend(pattern)
        where.append(clause)
    if q.has_error is not None:
        clause = (
            "(status = 'error' OR EXISTS (SELECT 1 FROM events e WHERE e.run_id = runs.id "
            "AND e.error IS NOT NULL))"
        )
        where.append(clause if q.has_error else f"NOT {clause}")
    sql = (" WHERE " + " AND ".join(where)) if where else ""
    sql += " ORDER BY started_at DESC, id DESC"  # ties by id: one order on every backend
    if q.status not in ("running", "incomplete"):
        sql += f" LIMIT {ph}"
        params.append(q.limit)
    return sql, params


_RANGE_DEPTH = 8
"""How many ranges deep the ``boundary`` filter follows a replay of a replay (of a replay...):
a hostile circle of references ends there."""


def _ranged_steps(range_parts: tuple[str, str, str, str]) -> str:
    """SQL selecting the runs (``w.owner``) whose range rows stand for a step ``e`` (the query
    goes on with a condition on ``e``): each range row's window of its source's steps, and,
    where that window meets the source's own range rows (a replay of a replay), the part of
    their sources' steps it stands for, :data:`_RANGE_DEPTH` levels down."""
    is_range, source, first, n = range_parts
    start, end = f"CAST({first} AS BIGINT)", f"CAST({first} + {n} AS BIGINT)"
    # The part of window w (steps lo..hi of run src) that range row r of src covers, as the
    # steps of r's source it stands for.
    lo = f"CAST({first} + CASE WHEN w.lo > r.seq THEN w.lo - r.seq ELSE 0 END AS BIGINT)"
    hi = f"CAST({first} + CASE WHEN w.hi < r.seq + {n} THEN w.hi - r.seq ELSE {n} END AS BIGINT)"
    return (
        "WITH RECURSIVE win(owner, src, lo, hi, depth) AS ("
        f"SELECT r.run_id, {source}, {start}, {end}, 0 FROM events r WHERE {is_range} "
        f"UNION SELECT w.owner, {source}, {lo}, {hi}, w.depth + 1 "
        "FROM win w JOIN events r ON r.run_id = w.src AND r.seq < w.hi "
        f"WHERE w.depth < {_RANGE_DEPTH} AND {is_range} AND r.seq + {n} > w.lo) "
        "SELECT w.owner FROM win w JOIN events e "
        "ON e.run_id = w.src AND e.seq >= w.lo AND e.seq < w.hi WHERE "
    )


def only_status(q: RunQuery, runs: list[Run]) -> list[Run]:
    """Apply the ``running`` / ``incomplete`` distinction, which needs the recorder's liveness."""
    if q.status in ("running", "incomplete"):
        return [r for r in runs if r.status == q.status][: q.limit]
    return runs


def like_escape(text: str) -> str:
    """``text`` for a LIKE pattern with ``\\`` as the escape character."""
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def pick_run(run_id: str, rows: Sequence[RunRow], store: Any, url: str) -> Run:
    """The run a lookup by id or prefix means: an exact id, else the only prefix match.

    ``rows`` are the first few runs whose id equals ``run_id`` or starts with it.
    """
    if not run_id:
        raise RunNotFound("empty run id; list runs with `replayable runs`")
    exact = [r for r in rows if r.id == run_id]
    if exact or len(rows) == 1:
        return run_from_row((exact or rows)[0], store)
    if not rows:
        raise RunNotFound(f"no run {run_id!r} in {url}; list runs with `replayable runs`")
    ids = ", ".join(r.id for r in rows[:3])
    raise RunNotFound(
        f"run id prefix {run_id!r} is ambiguous in {url} ({ids}, ...); give more of it"
    )


def pick_check(check_id: str, rows: Sequence[CheckRow], url: str) -> CheckRow:
    """The check a lookup by id or prefix means (``rows``: the first few whose id equals
    ``check_id`` or starts with it)."""
    exact = [r for r in rows if r.id == check_id]
    if check_id and (exact or len(rows) == 1):
        return (exact or rows)[0]
    if not check_id or not rows:
        raise RunNotFound(f"no check {check_id!r} in {url}; list checks with `replayable checks`")
    raise RunNotFound(f"check id prefix {check_id!r} is ambiguous in {url}; give more of it")


class Dialect:
    """Every statement the SQL stores share, spelled for one driver: its placeholder
    (``?`` or ``%s``) and how it compares a tag inside the ``tags`` JSON text (see
    :func:`runs_query`)."""

    def __init__(
        self,
        ph: str,
        *,
        tag_clause: str,
        tag_path: Callable[[str], str],
        range_parts: tuple[str, str, str, str] | None = None,
    ) -> None:
        self.ph, self.tag_clause, self.tag_path = ph, tag_clause, tag_path
        self.range_parts = range_parts
        """SQL over a range row ``r`` (see :func:`runs_query`): is it one, its source run,
        first seq, steps."""

        def values(columns: Sequence[str]) -> str:
            return f"({', '.join(columns)}) VALUES ({', '.join([ph] * len(columns))})"

        def by_id(table: str, columns: Sequence[str]) -> tuple[str, str]:
            # The exact id (the primary key's index), then a prefix: three rows are enough to
            # tell unique from ambiguous. Apart, as an OR of the two scans the whole table.
            select = f"SELECT {', '.join(columns)} FROM {table} WHERE id "
            return f"{select}= {ph}", f"{select}LIKE {ph} ESCAPE '\\' LIMIT 3"

        self.insert_run = f"INSERT INTO runs {values(RUN_COLUMNS)}"
        self.finish_run = (
            f"UPDATE runs SET ended_at={ph}, status={ph}, error={ph}, head_hash={ph}, "
            f"event_count={ph}, metadata={ph}, signature={ph} WHERE id={ph}"
        )
        self.checkpoint = (
            f"UPDATE runs SET event_count={ph}, head_hash={ph}, signature={ph} "
            f"WHERE id={ph} AND status='running'"
        )
        self.run_exists = f"SELECT 1 FROM runs WHERE id = {ph}"
        self.delete_run = (
            f"DELETE FROM events WHERE run_id = {ph}",
            f"DELETE FROM runs WHERE id = {ph}",
            f"DELETE FROM run_refs WHERE run_id = {ph}",
        )
        # The runs a kept run refers to (its rows serve their events: ``run_refs``), and the
        # runs those refer to, are kept however old: pruning never leaves a reference dangling.
        kept = (
            "WITH RECURSIVE kept(id) AS (SELECT r.source_run FROM run_refs r "
            f"JOIN runs k ON k.id = r.run_id WHERE k.started_at >= {ph} "
            "UNION SELECT r.source_run FROM run_refs r JOIN kept ON r.run_id = kept.id) "
        )
        doomed = f"SELECT id FROM runs WHERE started_at < {ph} AND id NOT IN (SELECT id FROM kept)"
        self.delete_before = (
            f"{kept}DELETE FROM events WHERE run_id IN ({doomed})",
            f"{kept}DELETE FROM runs WHERE id IN ({doomed})",
        )
        """Each takes (before, before)."""
        self.delete_orphan_refs = "DELETE FROM run_refs WHERE run_id NOT IN (SELECT id FROM runs)"
        self.kept_before = (
            f"{kept}SELECT id FROM runs WHERE started_at < {ph} "
            "AND id IN (SELECT id FROM kept) ORDER BY id"
        )
        """The runs started before a time that pruning keeps (before, before)."""
        self.insert_ref = (
            f"INSERT INTO run_refs (run_id, source_run) VALUES ({ph}, {ph}) ON CONFLICT DO NOTHING"
        )
        self.sources_of = f"SELECT source_run FROM run_refs WHERE run_id = {ph} ORDER BY source_run"
        self.select_runs = f"SELECT {', '.join(RUN_COLUMNS)} FROM runs"
        self.get_run = by_id("runs", RUN_COLUMNS)
        self.insert_check = f"INSERT INTO checks {values(CHECK_COLUMNS)}"
        self.insert_check_run = f"INSERT INTO check_runs {values(CHECK_RUN_COLUMNS)}"
        self.list_checks = (  # ties by id, so every store lists them in one order
            f"SELECT {', '.join(CHECK_COLUMNS)} FROM checks "
            f"ORDER BY started_at DESC, id DESC LIMIT {ph}"
        )
        self.get_check = by_id("checks", CHECK_COLUMNS)
        self.add_count = (
            f"INSERT INTO counters (name, value) VALUES ({ph}, {ph}) "
            "ON CONFLICT (name) DO UPDATE SET value = counters.value + excluded.value"
        )
        self.select_counts = "SELECT name, value FROM counters"
        self.check_runs = (
            f"SELECT {', '.join(CHECK_RUN_COLUMNS)} FROM check_runs "
            f"WHERE check_id = {ph} ORDER BY seq"
        )

    @staticmethod
    def finish_params(run: Run) -> tuple[Any, ...]:
        """The parameters of :attr:`finish_run` for this run."""
        row = run_to_row(run)
        return (
            row.ended_at,
            row.status,
            row.error,
            row.head_hash,
            row.event_count,
            row.metadata,
            row.signature,
            row.id,
        )

    @staticmethod
    def checkpoint_params(checkpoints: Sequence[Checkpoint]) -> list[tuple[Any, ...]]:
        """The parameter rows of :attr:`checkpoint` for these checkpoints."""
        return [(n, head, sig, run_id) for run_id, n, head, sig in checkpoints]


class SQLStore:
    """What the SQL stores share: the statements of their :class:`Dialect`, and every read and
    single-statement write built on them. A backend supplies the connection handling
    (:meth:`_fetch`, :meth:`_execute`) and its transactions."""

    url: str
    sql: Dialect

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        """Every row ``sql`` selects, as plain tuples."""
        raise NotImplementedError

    def _execute(self, sql: str, params: Sequence[Any]) -> None:
        """Run one statement on its own (autocommit)."""
        raise NotImplementedError

    def create_run(self, run: Run) -> None:
        """Insert a new run."""
        self._execute(self.sql.insert_run, run_to_row(run))

    def finish_run(self, run: Run) -> None:
        """Record a run's outcome, head hash and signature (sealed by the writer)."""
        self._execute(self.sql.finish_run, self.sql.finish_params(run))

    def get_run(self, run_id: str) -> Run:
        """The run with this id or unique id prefix."""
        rows = self._by_id(self.sql.get_run, run_id)
        return pick_run(run_id, [RunRow._make(r) for r in rows], cast(Store, self), self.url)

    def list_runs(self, query: RunQuery | None = None) -> list[Run]:
        """Runs matching ``query``, newest first."""
        q = query or RunQuery()
        where, params = runs_query(
            q,
            ph=self.sql.ph,
            tag_clause=self.sql.tag_clause,
            tag_path=self.sql.tag_path,
            range_parts=self.sql.range_parts,
        )
        rows = self._fetch(self.sql.select_runs + where, params)
        store = cast(Store, self)  # a backend: this class plus its writes
        return only_status(q, [run_from_row(RunRow._make(r), store) for r in rows])

    def _by_id(self, sql: tuple[str, str], ref: str) -> list[tuple[Any, ...]]:
        """Rows whose id is ``ref``, else (none is) the first three it is a prefix of."""
        exact, prefix = sql
        return self._fetch(exact, (ref,)) or self._fetch(prefix, (like_escape(ref) + "%",))

    def sources_of(self, run_id: str) -> list[str]:
        """The runs whose events the rows of ``run_id`` refer to (a replay's source)."""
        return [str(r) for (r,) in self._fetch(self.sql.sources_of, (run_id,))]

    def kept_before(self, before: float) -> list[str]:
        """The runs started before ``before`` that :meth:`delete_runs` keeps: a run started
        since refers to them (directly, or through runs it keeps)."""
        return [str(r) for (r,) in self._fetch(self.sql.kept_before, (before, before))]

    def list_checks(self, limit: int = 50) -> list[CheckRow]:
        """Check rows, newest first."""
        return [CheckRow._make(r) for r in self._fetch(self.sql.list_checks, (limit,))]

    def add_counts(self, counts: Mapping[str, int]) -> None:
        """Add each count to its counter."""
        for name, n in counts.items():
            self._execute(self.sql.add_count, (name, n))

    def counts(self) -> dict[str, int]:
        """Every counter, by name."""
        return {str(name): int(n) for name, n in self._fetch(self.sql.select_counts, ())}

    def get_check(self, check_id: str) -> tuple[CheckRow, list[CheckRunRow]]:
        """A check (id or unique prefix) and its run rows in order."""
        rows = self._by_id(self.sql.get_check, check_id)
        check = pick_check(check_id, [CheckRow._make(r) for r in rows], self.url)
        runs = self._fetch(self.sql.check_runs, (check.id,))
        return check, [CheckRunRow._make(r) for r in runs]


publish(globals())
