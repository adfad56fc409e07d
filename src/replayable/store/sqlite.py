"""The embedded SQLite store: WAL mode, one connection per thread, batched inserts.

Several processes on one host can record into the same file: WAL lets readers run beside the
writer, and each batch is one ``BEGIN IMMEDIATE`` transaction that waits its turn
(``busy_timeout``). The schema is versioned by ordered, named migrations recorded in a
``_migrations`` table.
"""

from __future__ import annotations

import contextlib
import functools
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Mapping, Sequence
from itertools import chain
from pathlib import Path
from typing import Any

from replayable.errors import StoreUnavailable
from replayable.store._migrations import RUN_REFS, apply_migrations, run_refs_fill
from replayable.store.base import (
    EVENT_COLUMNS,
    Checkpoint,
    CheckRow,
    CheckRunRow,
    Dialect,
    EventRow,
    SQLStore,
    ref_pairs,
    resolve_refs,
    run_to_row,
)
from replayable.trace import Event, Run, StoredEvent

__all__ = ["MIGRATIONS", "SQLiteStore"]


def _script(db: sqlite3.Connection, sql: str) -> None:
    """Run statements one by one (``executescript`` would commit the open transaction)."""
    for statement in sql.split(";"):
        if statement.strip():
            db.execute(statement)


def _m001_initial(db: sqlite3.Connection) -> None:
    _script(
        db,
        """
        CREATE TABLE runs (
            id TEXT PRIMARY KEY,
            name TEXT,
            tags TEXT NOT NULL DEFAULT '{}',
            metadata TEXT NOT NULL DEFAULT '{}',
            environment TEXT NOT NULL DEFAULT '{}',
            started_at REAL NOT NULL,
            ended_at REAL,
            status TEXT NOT NULL,
            error TEXT,
            parent_run TEXT,
            head_hash TEXT,
            event_count INTEGER NOT NULL DEFAULT 0
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
            started_at REAL NOT NULL,
            duration_ns INTEGER NOT NULL,
            hash TEXT NOT NULL,
            PRIMARY KEY (run_id, seq)
        );
        CREATE INDEX runs_started ON runs (started_at);
        CREATE INDEX runs_name ON runs (name, started_at);
        CREATE INDEX events_boundary ON events (boundary, run_id);
        """,
    )


def _m002_signature_and_query_indexes(db: sqlite3.Connection) -> None:
    _script(
        db,
        """
        ALTER TABLE runs ADD COLUMN signature TEXT;
        CREATE INDEX runs_status ON runs (status, started_at);
        CREATE INDEX runs_parent ON runs (parent_run);
        CREATE INDEX events_errors ON events (run_id) WHERE error IS NOT NULL;
        """,
    )


def _m003_checks(db: sqlite3.Connection) -> None:
    _script(
        db,
        """
        CREATE TABLE checks (
            id TEXT PRIMARY KEY,
            started_at REAL NOT NULL,
            ended_at REAL,
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
            duration_s REAL,
            PRIMARY KEY (check_id, seq)
        );
        CREATE INDEX checks_started ON checks (started_at);
        """,
    )


def _m004_hash_version(db: sqlite3.Connection) -> None:
    # Runs recorded before this migration keep the version-1 hash (header not covered).
    db.execute("ALTER TABLE runs ADD COLUMN hash_version INTEGER NOT NULL DEFAULT 1")


def _m005_drop_events_boundary(db: sqlite3.Connection) -> None:
    # No query reads it: the --boundary filter also matches a bare name as a suffix
    # (LIKE '%:name'), so it searches a run's events by the primary key. Every event
    # written paid for it.
    db.execute("DROP INDEX IF EXISTS events_boundary")


def _m006_counters(db: sqlite3.Connection) -> None:
    # Named counts of what is not a run in the store (sampling's kept and dropped runs).
    db.execute("CREATE TABLE counters (name TEXT PRIMARY KEY, value INTEGER NOT NULL)")


def _m007_run_refs(db: sqlite3.Connection) -> None:
    # Which runs' events a run's rows refer to (a replay's range rows and served references),
    # so pruning keeps the sources of kept replays; filled in from the references already
    # stored (each begins '{"$ref":["<source run>"').
    _script(db, RUN_REFS)
    db.execute(run_refs_fill("instr"))


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _m001_initial,
    _m002_signature_and_query_indexes,
    _m003_checks,
    _m004_hash_version,
    _m005_drop_events_boundary,
    _m006_counters,
    _m007_run_refs,
]
"""Ordered schema migrations; the ``_migrations`` table records which have run."""

BUSY_MS = 30_000
"""How long the writer waits for a lock another process holds (batches wait their turn)."""
CHECKPOINT_S = 1.0
"""How often, at most, the background writer checkpoints the WAL while runs are written."""
PAGE_SIZE = 16_384
"""The page size of a database this store creates (one it opens keeps its own). Events of a few
KB fit several to a page: with SQLite's default 4 KB, a 2.3 KB event (1 KB in, 1 KB out) took a
page of its own, and writing it cost half as much again (more pages to balance, write to the WAL
and copy back)."""
AUTOCHECKPOINT_BYTES = 40 * 1024 * 1024
"""WAL size after which a commit checkpoints by itself (reads and ``write_rows``): every ~40 MB
rather than SQLite's default 1,000 pages, which at 1 KB events tripled the cost of a write."""
BACKSTOP_BYTES = 160 * 1024 * 1024
"""WAL size after which a batch commit checkpoints by itself (the writer normally has by then)."""
OPEN_BUSY_MS = 500
"""How long opening the store (on the agent's thread) may wait for such a lock."""


def _pages(db: sqlite3.Connection, size: int) -> int:
    """``size`` bytes as pages of the database ``db`` is connected to."""
    page: int = db.execute("PRAGMA page_size").fetchone()[0]
    return max(1, size // page)


_EVENTS = ", ".join(EVENT_COLUMNS)
# Reading, the JSON columns come back as their bytes (no text decoding: they are hashed and
# compared as bytes, and decoded only when a field is read).
# The run id is left out: it is the one asked for (a column fewer to convert a row).
_READ_EVENTS = ", ".join(
    f"CAST({c} AS BLOB)" if c in ("input", "output", "error", "meta") else c
    for c in EVENT_COLUMNS[1:]
)
ROWS_PER_INSERT = 64
"""Event rows one ``INSERT`` statement carries: with a statement per row, running the statements
was almost half a big batch's insert time; 64 rows stay far under SQLite's 32,766 (and the old
default 999) bound parameters."""
_INSERT_HEAD = f"INSERT INTO events ({_EVENTS}) VALUES "
_ROW_VALUES = f"({','.join('?' * len(EVENT_COLUMNS))})"
_INSERT_EVENTS = _INSERT_HEAD + _ROW_VALUES
_INSERT_MANY = _INSERT_HEAD + ",".join([_ROW_VALUES] * ROWS_PER_INSERT)


def _insert_events(db: sqlite3.Connection, rows: Sequence[EventRow]) -> None:
    """Insert event rows, :data:`ROWS_PER_INSERT` to a statement (the rest one by one), and
    the runs they refer to (``run_refs``)."""
    refs = ref_pairs(rows)
    if refs:
        db.executemany(_SQL.insert_ref, refs)
    whole = len(rows) - len(rows) % ROWS_PER_INSERT
    if whole:
        flat = chain.from_iterable
        db.executemany(
            _INSERT_MANY,
            (tuple(flat(rows[i : i + ROWS_PER_INSERT])) for i in range(0, whole, ROWS_PER_INSERT)),
        )
    if whole == len(rows) - 1:  # one left over: execute is the cheaper call
        db.execute(_INSERT_EVENTS, rows[whole])
    elif whole < len(rows):
        db.executemany(_INSERT_EVENTS, rows[whole:])


def _range_part(i: int) -> str:
    # Guarded: an edited meta that is not JSON reads as no range, never as a failed query.
    return (
        """CASE WHEN r.meta LIKE '{"$range":%' AND json_valid(r.meta) """
        f"""THEN json_extract(r.meta, '$."$range"[{i}]') END"""
    )


_SQL = Dialect(
    "?",
    tag_clause="json_extract(tags, ?) = ?",
    tag_path=lambda tag: f'$."{tag}"',
    range_parts=("""r.meta LIKE '{"$range":%'""", _range_part(0), _range_part(1), _range_part(2)),
)


_STORES: weakref.WeakSet[SQLiteStore] = weakref.WeakSet()


def _drop_connections_in_child() -> None:
    """A SQLite connection must not cross ``fork``: the child opens its own, lazily."""
    for store in list(_STORES):
        store._local = threading.local()
        store._conns = []
        store._lock = threading.Lock()
        store._write_lock = threading.Lock()
        store._write_conn = None


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_connections_in_child)


class SQLiteStore(SQLStore):
    """Runs and events in one SQLite file (WAL; safe for several processes on one host).

    Opening never fails for a file that cannot be created yet: the error is raised (as
    :class:`~replayable.errors.StoreUnavailable`) by the first operation, so a recording into
    an unwritable place degrades to a logged warning instead of breaking the agent.

    >>> import os
    >>> from replayable.store.base import RunQuery
    >>> store = SQLiteStore(os.path.join(tmp_dir, "traces.db"))
    >>> store.list_runs(RunQuery(name="support", limit=5))
    []
    """

    sql = _SQL

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
        self._write_lock = threading.Lock()
        self._write_conn: sqlite3.Connection | None = None
        """The connection batches are written on, whichever thread writes them."""
        self._write_busy_ms = BUSY_MS
        self._unchecked = 0
        """Batches committed since the WAL was last checkpointed."""
        self._checked_at = time.monotonic()
        _STORES.add(self)
        self._ready = False
        # Opening runs on the agent's thread (``record()``): a database locked by another
        # process may hold it only briefly. If it is busy, the writer migrates it later.
        with contextlib.suppress(StoreUnavailable):
            self._db(busy_ms=OPEN_BUSY_MS)

    # -- connections and schema --------------------------------------------------------------

    def _db(self, busy_ms: int | None = None) -> sqlite3.Connection:
        """This thread's connection, the schema migrated on first use (waiting at most
        ``busy_ms`` for a lock held by another process, when given)."""
        try:
            if not self._ready:
                if not self._lock.acquire(timeout=-1 if busy_ms is None else busy_ms / 1000):
                    raise sqlite3.OperationalError("database is being opened by another thread")
                try:
                    if not self._ready:
                        self.path.parent.mkdir(parents=True, exist_ok=True)
                        conn = self._conn(busy_ms)
                        try:
                            self._migrate(conn)
                        finally:
                            if busy_ms is not None:
                                conn.execute(f"PRAGMA busy_timeout={BUSY_MS}")
                        self._ready = True
                finally:
                    self._lock.release()
            return self._conn()
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open SQLite store {self.path}: {exc}") from None

    def _conn(self, busy_ms: int | None = None) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._connect(BUSY_MS if busy_ms is None else busy_ms)
            self._local.conn = conn
        return conn

    def _connect(self, busy_ms: int) -> sqlite3.Connection:
        conn = sqlite3.connect(
            self.path, timeout=busy_ms / 1000, isolation_level=None, check_same_thread=False
        )
        try:
            conn.execute(f"PRAGMA busy_timeout={busy_ms}")
            # Only a database not created yet takes it (WAL mode fixes an existing one's).
            conn.execute(f"PRAGMA page_size={PAGE_SIZE}")
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA cache_size=-16000")  # 16 MB: index pages of big batches
            # Reads map the database file instead of copying each page out of the OS cache:
            # loading a run for replay is a quarter faster (the WAL is not mapped; writes are
            # unchanged).
            conn.execute("PRAGMA mmap_size=268435456")
            conn.execute(f"PRAGMA wal_autocheckpoint={_pages(conn, AUTOCHECKPOINT_BYTES)}")
            conn.execute("PRAGMA journal_size_limit=67108864")
        except sqlite3.Error:
            conn.close()
            raise
        self._conns.append(conn)
        return conn

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            steps = [(m.__name__, functools.partial(m, db)) for m in MIGRATIONS]
            apply_migrations(db.execute, steps, param="?", time_type="REAL")
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def migrations(self) -> list[str]:
        """Names of the migrations applied to this database, in order."""
        return [name for (name,) in self._fetch("SELECT name FROM _migrations ORDER BY rowid", ())]

    def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        from replayable._writer import settle  # _writer imports the store modules

        settle(self)  # this process's queued events first: a read sees every finished call
        db = self._db()
        try:
            return fn(db)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from None

    def _transaction(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
        def tx(db: sqlite3.Connection) -> Any:
            db.execute("BEGIN IMMEDIATE")
            try:
                result = fn(db)
                db.execute("COMMIT")
            except BaseException:
                if db.in_transaction:
                    db.execute("ROLLBACK")
                raise
            return result

        return self._run(tx)

    def _fetch(self, sql: str, params: Sequence[Any]) -> list[tuple[Any, ...]]:
        return self._run(lambda db: db.execute(sql, params).fetchall())  # type: ignore[no-any-return]

    def _execute(self, sql: str, params: Sequence[Any]) -> None:
        self._run(lambda db: db.execute(sql, params))

    # -- writing -----------------------------------------------------------------------------

    def write_batch(
        self,
        creates: Sequence[Run],
        rows: Sequence[EventRow],
        checkpoints: Sequence[Checkpoint],
        finishes: Sequence[Run],
        *,
        wait_s: float | None = None,
        counts: Mapping[str, int] | None = None,
    ) -> None:
        """Create runs, insert event rows, set checkpoints, finish runs and add to counters in
        one transaction.

        A run in both ``creates`` and ``finishes`` is inserted finished (one row write).
        ``wait_s`` bounds the wait for a lock another process holds (default 30 s); batches
        from any thread go through one connection, one at a time.
        """
        busy_ms = BUSY_MS if wait_s is None else max(1, int(wait_s * 1000))
        with self._write_lock:
            db = self._writing(busy_ms)
            try:
                db.execute("BEGIN IMMEDIATE")
                try:
                    created = {run.id for run in creates}
                    for run in creates:
                        db.execute(_SQL.insert_run, run_to_row(run))
                    _insert_events(db, rows)
                    if checkpoints:
                        db.executemany(_SQL.checkpoint, _SQL.checkpoint_params(checkpoints))
                    for run in finishes:
                        if run.id not in created:
                            db.execute(_SQL.finish_run, _SQL.finish_params(run))
                    if counts:
                        db.executemany(_SQL.add_count, list(counts.items()))
                    db.execute("COMMIT")
                except BaseException:
                    if db.in_transaction:
                        db.execute("ROLLBACK")
                    raise
            except sqlite3.IntegrityError:
                raise
            except sqlite3.Error as exc:
                raise StoreUnavailable(f"SQLite store {self.path}: {exc}") from None
            self._unchecked += 1

    def housekeep(self) -> None:
        """Checkpoint the WAL (passive: writers go on) when batches went in since the last
        time and a second has passed: batch commits leave it to the background writer, so a
        run's end on the agent's thread never pays for a checkpoint and its fsync."""
        if not self._unchecked or time.monotonic() - self._checked_at < CHECKPOINT_S:
            return
        self._unchecked = 0
        self._checked_at = time.monotonic()
        self._run(lambda db: db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall())

    def _writing(self, busy_ms: int) -> sqlite3.Connection:
        """The batch connection, waiting at most ``busy_ms`` for a lock (held: ``_write_lock``)."""
        if not self._ready:
            self._db(busy_ms=busy_ms)  # migrates, waiting no longer than the batch may
        conn = self._write_conn
        try:
            if conn is None:
                conn = self._connect(busy_ms)
                # see housekeep
                conn.execute(f"PRAGMA wal_autocheckpoint={_pages(conn, BACKSTOP_BYTES)}")
                self._write_conn = conn
            elif self._write_busy_ms != busy_ms:
                conn.execute(f"PRAGMA busy_timeout={busy_ms}")
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"cannot open SQLite store {self.path}: {exc}") from None
        self._write_busy_ms = busy_ms
        return conn

    def write_rows(self, rows: Sequence[EventRow], checkpoints: Sequence[Checkpoint] = ()) -> None:
        """Insert a batch of event rows (and the runs' signed checkpoints) in one transaction."""

        def write(db: sqlite3.Connection) -> None:
            _insert_events(db, rows)
            if checkpoints:
                db.executemany(_SQL.checkpoint, _SQL.checkpoint_params(checkpoints))

        self._transaction(write)

    def put_run(self, run: Run, rows: Sequence[EventRow]) -> bool:
        """Insert a run and its events atomically; False if the run is already there."""

        def put(db: sqlite3.Connection) -> bool:
            if db.execute(_SQL.run_exists, (run.id,)).fetchone():
                return False
            db.execute(_SQL.insert_run, run_to_row(run))
            _insert_events(db, rows)
            return True

        return bool(self._transaction(put))

    def replace_run(self, run: Run, rows: Sequence[EventRow]) -> None:
        """Overwrite a run's header and all its events in one transaction (``scan --fix``).

        The old rows' bytes are zeroed (``secure_delete``) and the WAL is truncated afterwards,
        so what was replaced is gone from the files too, not just from query results.
        """

        def replace(db: sqlite3.Connection) -> None:
            for statement in _SQL.delete_run:
                db.execute(statement, (run.id,))
            db.execute(_SQL.insert_run, run_to_row(run))
            _insert_events(db, rows)

        def secure(db: sqlite3.Connection) -> None:
            db.execute("PRAGMA secure_delete=ON")

        self._run(secure)
        try:
            self._transaction(replace)
        finally:
            self._run(lambda db: db.execute("PRAGMA secure_delete=OFF"))
        self._run(lambda db: db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchall())

    def delete_runs(self, *, before: float) -> int:
        """Delete runs (and their events) that started before ``before``."""

        def delete(db: sqlite3.Connection) -> int:
            events, runs = _SQL.delete_before
            db.execute(events, (before, before))
            db.execute(runs, (before, before))
            n = int(db.execute("SELECT changes()").fetchone()[0])  # rowcount: -1 after a WITH
            db.execute(_SQL.delete_orphan_refs)
            return n

        return int(self._transaction(delete))

    def save_check(self, check: CheckRow, runs: Sequence[CheckRunRow]) -> None:
        """Insert a check and its runs' outcomes in one transaction."""

        def save(db: sqlite3.Connection) -> None:
            db.execute(_SQL.insert_check, check)
            db.executemany(_SQL.insert_check_run, runs)

        self._transaction(save)

    # -- reading -----------------------------------------------------------------------------

    def iter_events(self, run_id: str) -> Iterator[Event]:
        """The run's events in seq order, streamed from a cursor (references resolved)."""
        return resolve_refs(self, self._stored_events(run_id))

    def _stored_events(self, run_id: str) -> Iterator[Event]:
        cursor = self._run(
            lambda db: db.execute(
                f"SELECT {_READ_EVENTS} FROM events WHERE run_id = ? ORDER BY seq", (run_id,)
            )
        )
        stored = StoredEvent.from_stored  # the JSON columns are read as bytes (_READ_EVENTS)
        while batch := cursor.fetchmany(500):
            for row in batch:
                yield stored(run_id, *row)

    def close(self) -> None:
        """Stop this store's background writer, then close every connection it opened.

        The writer's thread holds a connection of its own: closing it under a write in progress
        would crash the interpreter, so the writer finishes (or gives up) first.
        """
        from replayable._writer import stop_writer  # _writer imports the store modules

        stop_writer(self)
        with self._write_lock, self._lock:
            conns, self._conns = self._conns, []
            self._local = threading.local()
            self._write_conn = None
            for conn in conns:
                conn.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"
