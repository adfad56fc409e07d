"""The PostgreSQL store, for many agent hosts writing to one place (psycopg 3 + a pool).

Same tables and queries as SQLite. Event batches go in with ``COPY``; JSON fields are stored
as the exact text the recorder hashed (``text`` columns, not ``jsonb``, whose key reordering and
number normalisation would break the hash chain), and cast to ``jsonb`` where a query looks
inside them. Point replayable at a server with ``REPLAYABLE_STORE=postgresql://user@host/db``;
add ``?options=-csearch_path%3Dmyschema`` to keep the tables in a schema of your own.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import psycopg
from psycopg_pool import ConnectionPool, PoolTimeout

from replayable.errors import StoreUnavailable
from replayable.store._migrations import RUN_REFS, apply_migrations, run_refs_fill
from replayable.store.base import (
    CHECK_RUN_COLUMNS,
    EVENT_COLUMNS,
    Checkpoint,
    CheckRow,
    CheckRunRow,
    Dialect,
    EventRow,
    SQLStore,
    ref_pairs,
    resolve_refs,
    row_to_event,
    run_to_row,
)
from replayable.trace import Event, Run

__all__ = ["MIGRATIONS", "PostgresStore"]

_M001_INITIAL = """
CREATE TABLE runs (
    id TEXT PRIMARY KEY,
    name TEXT,
    tags TEXT NOT NULL DEFAULT '{}',
    metadata TEXT NOT NULL DEFAULT '{}',
    environment TEXT NOT NULL DEFAULT '{}',
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    status TEXT NOT NULL,
    error TEXT,
    parent_run TEXT,
    head_hash TEXT,
    event_count INTEGER NOT NULL DEFAULT 0,
    signature TEXT
);
CREATE TABLE events (
    run_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    chain_seq INTEGER NOT NULL,
    address TEXT NOT NULL,
    parent_seq INTEGER,
    boundary TEXT NOT NULL,
    kind TEXT NOT NULL,
    key TEXT NOT NULL,
    input TEXT,
    output TEXT,
    error TEXT,
    meta TEXT,
    started_at DOUBLE PRECISION NOT NULL,
    duration_ns BIGINT NOT NULL,
    hash TEXT NOT NULL,
    PRIMARY KEY (run_id, seq)
);
CREATE INDEX runs_id_prefix ON runs (id text_pattern_ops);
CREATE INDEX runs_started ON runs (started_at);
CREATE INDEX runs_name ON runs (name, started_at);
CREATE INDEX runs_status ON runs (status, started_at);
CREATE INDEX runs_parent ON runs (parent_run);
CREATE INDEX events_boundary ON events (boundary, run_id);
CREATE INDEX events_errors ON events (run_id) WHERE error IS NOT NULL
"""

_M003_CHECKS = """
CREATE TABLE checks (
    id TEXT PRIMARY KEY,
    started_at DOUBLE PRECISION NOT NULL,
    ended_at DOUBLE PRECISION,
    store TEXT,
    selection TEXT NOT NULL DEFAULT '{}',
    environment TEXT NOT NULL DEFAULT '{}',
    summary TEXT NOT NULL DEFAULT '{}',
    passed INTEGER NOT NULL
);
CREATE TABLE check_runs (
    check_id TEXT NOT NULL,
    seq INTEGER NOT NULL,
    run_id TEXT NOT NULL,
    name TEXT,
    outcome TEXT NOT NULL,
    signature TEXT,
    detail TEXT,
    replay_id TEXT,
    duration_s DOUBLE PRECISION,
    PRIMARY KEY (check_id, seq)
);
CREATE INDEX checks_id_prefix ON checks (id text_pattern_ops);
CREATE INDEX checks_started ON checks (started_at)
"""

MIGRATIONS: list[tuple[str, str]] = [
    ("m001_initial", _M001_INITIAL),
    ("m003_checks", _M003_CHECKS),
    # Runs recorded before this migration keep the version-1 hash (header not covered).
    ("m004_hash_version", "ALTER TABLE runs ADD COLUMN hash_version INTEGER NOT NULL DEFAULT 1"),
    # No query reads it (the --boundary filter searches a run's events by the primary key, see
    # the SQLite store's m005); every event written paid for it.
    ("m005_drop_events_boundary", "DROP INDEX IF EXISTS events_boundary"),
    # Named counts of what is not a run in the store (sampling's kept and dropped runs).
    ("m006_counters", "CREATE TABLE counters (name TEXT PRIMARY KEY, value BIGINT NOT NULL)"),
    # Which runs' events a run's rows refer to (a replay's range rows and served references),
    # so pruning keeps the sources of kept replays; filled in from the references stored.
    ("m007_run_refs", RUN_REFS + ";" + run_refs_fill("strpos")),
]
"""Ordered, named schema migrations; the ``_migrations`` table records which have run."""

_EVENTS = ", ".join(EVENT_COLUMNS)
_COPY_EVENTS = f"COPY events ({_EVENTS}) FROM STDIN"
_COPY_CHECK_RUNS = f"COPY check_runs ({', '.join(CHECK_RUN_COLUMNS)}) FROM STDIN"
# A range row's parts read with patterns, not as JSON: an edited meta that is not JSON reads
# as no range, never as a failed query (a cast to jsonb would raise).
_RANGE = r"""^\{"\$range":\["""
_SQL = Dialect(
    "%s",
    tag_clause="(tags::jsonb ->> %s) = %s",
    tag_path=lambda tag: tag,
    range_parts=(
        f"r.meta ~ '{_RANGE}'",
        f"""substring(r.meta from '{_RANGE}"([^"]*)",')""",
        f"""CAST(substring(r.meta from '{_RANGE}"[^"]*",([0-9]{{1,9}}),') AS INTEGER)""",
        f"""CAST(substring(r.meta from '{_RANGE}"[^"]*",[0-9]+,([0-9]{{1,9}}),') AS INTEGER)""",
    ),
)
_PUT_RUN = f"{_SQL.insert_run} ON CONFLICT (id) DO NOTHING"


def _safe_url(url: str) -> str:
    """The URL without its password, for messages."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)
    return urlunsplit(parts._replace(netloc=f"{parts.username}:***@{netloc[-1]}"))


class _QuietPool(logging.Filter):
    """The pool's own reconnect warnings repeat what our one warning already said."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "'replayable'" not in record.getMessage()


logging.getLogger("psycopg.pool").addFilter(_QuietPool())


class PostgresStore(SQLStore):
    """Runs and events in a PostgreSQL database, through a small connection pool.

    Connecting is lazy: a server that is down makes operations raise
    :class:`~replayable.errors.StoreUnavailable` after ``timeout`` seconds (which the recorder
    turns into one logged warning), never the constructor.

    For example (a sketch, not run as a doctest)::

        store = PostgresStore("postgresql://replayable@db.internal/traces")
        store.list_runs(RunQuery(status="error", limit=10))
    """

    sql = _SQL

    def __init__(self, url: str, *, max_size: int = 4, timeout: float = 10.0) -> None:
        self.url = _safe_url(url)
        self._conninfo = url
        self._timeout = timeout
        self._ready = False
        self._lock = threading.Lock()
        self._new_pool: Callable[[], ConnectionPool] = lambda: ConnectionPool(
            url,
            min_size=1,
            max_size=max_size,
            timeout=timeout,
            open=False,
            kwargs={"autocommit": True, "connect_timeout": max(1, int(timeout))},
            check=ConnectionPool.check_connection,
            name="replayable",
        )
        self._pool = self._new_pool()

    # -- connections and schema --------------------------------------------------------------

    def _use(self, fn: Callable[[psycopg.Connection[Any]], Any]) -> Any:
        """Run ``fn`` on a pooled connection (see :meth:`_connection`)."""
        with self._connection() as conn:
            return fn(conn)

    @contextlib.contextmanager
    def _connection(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection, after this process's queued writes to the store (read your
        writes); connection and server errors become :class:`StoreUnavailable`."""
        from replayable._writer import settle  # _writer imports the store modules

        settle(self)
        try:
            self._open()
            with self._pool.connection() as conn:
                yield conn
        except (psycopg.OperationalError, psycopg.InterfaceError, PoolTimeout) as exc:
            reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            raise StoreUnavailable(f"PostgreSQL store {self.url}: {reason}") from None

    def _open(self) -> None:
        if self._ready:
            return
        with self._lock:
            if self._ready:
                return
            # One direct connection first: a server that refuses connections fails here at
            # once, instead of after the pool's retries for `timeout` seconds.
            with psycopg.connect(
                self._conninfo, autocommit=True, connect_timeout=max(1, int(self._timeout))
            ) as conn:
                self._migrate(conn)
            self._pool.open(wait=False)
            self._ready = True

    @staticmethod
    def _migrate(conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            # Serialise concurrent first opens (many hosts starting at once) per schema.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(current_schema()))")

            def run_sql(sql: str) -> None:
                for statement in sql.split(";"):
                    if statement.strip():
                        conn.execute(statement)

            steps = [(name, functools.partial(run_sql, sql)) for name, sql in MIGRATIONS]
            apply_migrations(conn.execute, steps, param="%s", time_type="DOUBLE PRECISION")

    def migrations(self) -> list[str]:
        """Names of the migrations applied to this database, in order."""
        return [name for (name,) in self._fetch("SELECT name FROM _migrations ORDER BY name", ())]

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._use(lambda c: c.execute(sql, params).fetchall())  # type: ignore[no-any-return]

    def _execute(self, sql: str, params: Sequence[Any]) -> None:
        self._use(lambda c: c.execute(sql, params))

    # -- writing -----------------------------------------------------------------------------

    @staticmethod
    def _copy(conn: psycopg.Connection[Any], rows: Sequence[EventRow]) -> None:
        """Insert event rows with ``COPY``, and the runs they refer to (``run_refs``)."""
        with conn.cursor() as cur:
            with cur.copy(_COPY_EVENTS) as copy:
                for row in rows:
                    copy.write_row(row)
            refs = ref_pairs(rows)
            if refs:
                cur.executemany(_SQL.insert_ref, refs)

    def write_rows(self, rows: Sequence[EventRow], checkpoints: Sequence[Checkpoint] = ()) -> None:
        """Insert a batch of event rows with ``COPY`` (and the runs' signed checkpoints) in one
        transaction."""
        if not rows:
            return

        def write(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                self._copy(conn, rows)
                if checkpoints:
                    with conn.cursor() as cur:
                        cur.executemany(_SQL.checkpoint, _SQL.checkpoint_params(checkpoints))

        self._use(write)

    def put_run(self, run: Run, rows: Sequence[EventRow]) -> bool:
        """Insert a run and its events atomically; False if the run is already there."""

        def put(conn: psycopg.Connection[Any]) -> bool:
            with conn.transaction():
                cur = conn.execute(_PUT_RUN, run_to_row(run))
                if cur.rowcount == 0:
                    return False
                self._copy(conn, rows)
            return True

        return bool(self._use(put))

    def replace_run(self, run: Run, rows: Sequence[EventRow]) -> None:
        """Overwrite a run's header and all its events in one transaction (``scan --fix``).

        Old row versions stay in the table files until PostgreSQL vacuums them.
        """

        def replace(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                for statement in _SQL.delete_run:
                    conn.execute(statement, (run.id,))
                conn.execute(_SQL.insert_run, run_to_row(run))
                self._copy(conn, rows)

        self._use(replace)

    def delete_runs(self, *, before: float) -> int:
        """Delete runs (and their events) that started before ``before``."""

        def delete(conn: psycopg.Connection[Any]) -> int:
            with conn.transaction():
                events, runs = _SQL.delete_before
                conn.execute(events, (before, before))
                n = conn.execute(runs, (before, before)).rowcount
                conn.execute(_SQL.delete_orphan_refs)
                return n

        return int(self._use(delete))

    def save_check(self, check: CheckRow, runs: Sequence[CheckRunRow]) -> None:
        """Insert a check and its runs' outcomes in one transaction (outcomes with ``COPY``)."""

        def save(conn: psycopg.Connection[Any]) -> None:
            with conn.transaction():
                conn.execute(_SQL.insert_check, check)
                with conn.cursor() as cur, cur.copy(_COPY_CHECK_RUNS) as copy:
                    for row in runs:
                        copy.write_row(row)

        self._use(save)

    # -- reading -----------------------------------------------------------------------------

    def iter_events(self, run_id: str) -> Iterator[Event]:
        """The run's events in seq order, streamed through a server-side cursor (references
        resolved)."""
        return resolve_refs(self, self._stored_events(run_id))

    def _stored_events(self, run_id: str) -> Iterator[Event]:
        with (
            self._connection() as conn,
            conn.transaction(),
            conn.cursor(name="replayable_events") as cur,
        ):
            cur.itersize = 2000
            cur.execute(f"SELECT {_EVENTS} FROM events WHERE run_id = %s ORDER BY seq", (run_id,))
            for row in cur:
                yield row_to_event(row)

    def close(self) -> None:
        """Write what this process queued for the store (its writer stops), then close the
        pool's connections (the store reconnects if used again)."""
        from replayable._writer import stop_writer  # _writer imports the store modules

        stop_writer(self)
        with self._lock:
            pool, self._pool = self._pool, self._new_pool()
            self._ready = False
        pool.close()

    def connection_url(self) -> str:
        """The URL with its credentials (``url`` hides the password): what a worker process
        needs to open the store itself. Never shown or stored."""
        return self._conninfo

    def __repr__(self) -> str:
        return f"PostgresStore({self.url!r})"
