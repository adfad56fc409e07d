"""The embedded SQLite store: WAL mode, one connection per thread, batched inserts.

Several processes on one host can record into the same file: WAL lets readers run beside the
writer, and each batch is one ``BEGIN IMMEDIATE`` transaction that waits its turn
(``busy_timeout``). The schema is versioned by ordered, named migrations recorded in a
``_migrations`` table.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import threading
import time
import weakref
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from replayable.errors import StoreUnavailable
from replayable.store.base import (
    CHECK_COLUMNS,
    CHECK_RUN_COLUMNS,
    EVENT_COLUMNS,
    RUN_COLUMNS,
    Checkpoint,
    EventRow,
    RunQuery,
    like_escape,
    only_status,
    pick_check,
    pick_run,
    resolve_refs,
    row_to_event,
    run_from_row,
    run_to_row,
    runs_query,
)
from replayable.trace import Event, Run

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


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [
    _m001_initial,
    _m002_signature_and_query_indexes,
    _m003_checks,
    _m004_hash_version,
]
"""Ordered schema migrations; the ``_migrations`` table records which have run."""

BUSY_MS = 30_000
"""How long the writer waits for a lock another process holds (batches wait their turn)."""
OPEN_BUSY_MS = 500
"""How long opening the store (on the agent's thread) may wait for such a lock."""

_RUNS = ", ".join(RUN_COLUMNS)
_EVENTS = ", ".join(EVENT_COLUMNS)
_INSERT_RUN = f"INSERT INTO runs ({_RUNS}) VALUES ({','.join('?' * len(RUN_COLUMNS))})"
_CHECKPOINT = (
    "UPDATE runs SET event_count=?, head_hash=?, signature=? WHERE id=? AND status='running'"
)
_INSERT_EVENTS = f"INSERT INTO events ({_EVENTS}) VALUES ({','.join('?' * len(EVENT_COLUMNS))})"
_CHECKS = ", ".join(CHECK_COLUMNS)
_INSERT_CHECK = f"INSERT INTO checks ({_CHECKS}) VALUES ({','.join('?' * len(CHECK_COLUMNS))})"
_INSERT_CHECK_RUNS = (
    f"INSERT INTO check_runs ({', '.join(CHECK_RUN_COLUMNS)}) "
    f"VALUES ({','.join('?' * len(CHECK_RUN_COLUMNS))})"
)


_STORES: weakref.WeakSet[SQLiteStore] = weakref.WeakSet()


def _drop_connections_in_child() -> None:
    """A SQLite connection must not cross ``fork``: the child opens its own, lazily."""
    for store in list(_STORES):
        store._local = threading.local()
        store._conns = []
        store._lock = threading.Lock()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_drop_connections_in_child)


class SQLiteStore:
    """Runs and events in one SQLite file (WAL; safe for several processes on one host).

    Opening never fails for a file that cannot be created yet: the error is raised (as
    :class:`~replayable.errors.StoreUnavailable`) by the first operation, so a recording into
    an unwritable place degrades to a logged warning instead of breaking the agent.

    >>> import os
    >>> store = SQLiteStore(os.path.join(tmp_dir, "traces.db"))
    >>> store.list_runs(RunQuery(name="support", limit=5))
    []
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self._local = threading.local()
        self._lock = threading.Lock()
        self._conns: list[sqlite3.Connection] = []
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
            wait = (BUSY_MS if busy_ms is None else busy_ms) / 1000
            conn = sqlite3.connect(
                self.path, timeout=wait, isolation_level=None, check_same_thread=False
            )
            try:
                conn.execute(f"PRAGMA busy_timeout={int(wait * 1000)}")
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
                conn.execute("PRAGMA cache_size=-16000")  # 16 MB: index pages of big batches
                # Checkpoint (and fsync) every ~40 MB of WAL rather than every 4 MB: at 1 KB
                # events the default checkpoint cadence tripled the cost of a write.
                conn.execute("PRAGMA wal_autocheckpoint=10000")
                conn.execute("PRAGMA journal_size_limit=67108864")
            except sqlite3.Error:
                conn.close()
                raise
            self._local.conn = conn
            self._conns.append(conn)
        return conn

    def _migrate(self, db: sqlite3.Connection) -> None:
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at REAL)"
            )
            done = {r[0] for r in db.execute("SELECT name FROM _migrations")}
            for migration in MIGRATIONS:
                if migration.__name__ not in done:
                    migration(db)
                    db.execute(
                        "INSERT INTO _migrations VALUES (?, ?)", (migration.__name__, time.time())
                    )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def migrations(self) -> list[str]:
        """Names of the migrations applied to this database, in order."""
        return [
            r[0]
            for r in self._run(
                lambda db: db.execute("SELECT name FROM _migrations ORDER BY rowid").fetchall()
            )
        ]

    def _run(self, fn: Callable[[sqlite3.Connection], Any]) -> Any:
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

    # -- writing -----------------------------------------------------------------------------

    def create_run(self, run: Run) -> None:
        """Insert a new run."""
        self._run(lambda db: db.execute(_INSERT_RUN, run_to_row(run)))

    def finish_run(self, run: Run) -> None:
        """Record a run's outcome, head hash and signature (sealed by the writer)."""
        row = run_to_row(run)
        self._run(
            lambda db: db.execute(
                "UPDATE runs SET ended_at=?, status=?, error=?, head_hash=?, event_count=?, "
                "metadata=?, signature=? WHERE id=?",
                (row[6], row[7], row[8], row[10], row[11], row[3], row[12], run.id),
            )
        )

    def write_rows(self, rows: Sequence[EventRow], checkpoints: Sequence[Checkpoint] = ()) -> None:
        """Insert a batch of event rows (and the runs' signed checkpoints) in one transaction."""

        def write(db: sqlite3.Connection) -> None:
            db.executemany(_INSERT_EVENTS, rows)
            if checkpoints:
                db.executemany(_CHECKPOINT, [(n, h, sig, rid) for rid, n, h, sig in checkpoints])

        self._transaction(write)

    def put_run(self, run: Run, rows: Sequence[EventRow]) -> bool:
        """Insert a run and its events atomically; False if the run is already there."""

        def put(db: sqlite3.Connection) -> bool:
            if db.execute("SELECT 1 FROM runs WHERE id = ?", (run.id,)).fetchone():
                return False
            db.execute(_INSERT_RUN, run_to_row(run))
            db.executemany(_INSERT_EVENTS, rows)
            return True

        return bool(self._transaction(put))

    def replace_run(self, run: Run, rows: Sequence[EventRow]) -> None:
        """Overwrite a run's header and all its events in one transaction (``scan --fix``).

        The old rows' bytes are zeroed (``secure_delete``) and the WAL is truncated afterwards,
        so what was replaced is gone from the files too, not just from query results.
        """

        def replace(db: sqlite3.Connection) -> None:
            db.execute("DELETE FROM events WHERE run_id = ?", (run.id,))
            db.execute("DELETE FROM runs WHERE id = ?", (run.id,))
            db.execute(_INSERT_RUN, run_to_row(run))
            db.executemany(_INSERT_EVENTS, rows)

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
            db.execute(
                "DELETE FROM events WHERE run_id IN (SELECT id FROM runs WHERE started_at < ?)",
                (before,),
            )
            return int(db.execute("DELETE FROM runs WHERE started_at < ?", (before,)).rowcount)

        return int(self._transaction(delete))

    def save_check(self, check: Sequence[Any], runs: Sequence[Sequence[Any]]) -> None:
        """Insert a check and its runs' outcomes in one transaction."""

        def save(db: sqlite3.Connection) -> None:
            db.execute(_INSERT_CHECK, tuple(check))
            db.executemany(_INSERT_CHECK_RUNS, runs)

        self._transaction(save)

    # -- reading -----------------------------------------------------------------------------

    def get_run(self, run_id: str) -> Run:
        """The run with this id or unique id prefix."""
        pattern = like_escape(run_id) + "%"
        rows = self._run(
            lambda db: db.execute(
                f"SELECT {_RUNS} FROM runs WHERE id = ? OR id LIKE ? ESCAPE '\\' LIMIT 3",
                (run_id, pattern),
            ).fetchall()
        )
        return pick_run(run_id, rows, self, self.url)

    def iter_events(self, run_id: str) -> Iterator[Event]:
        """The run's events in seq order, streamed from a cursor (references resolved)."""
        return resolve_refs(self, self._stored_events(run_id))

    def _stored_events(self, run_id: str) -> Iterator[Event]:
        cursor = self._run(
            lambda db: db.execute(
                f"SELECT {_EVENTS} FROM events WHERE run_id = ? ORDER BY seq", (run_id,)
            )
        )
        while batch := cursor.fetchmany(500):
            for row in batch:
                yield row_to_event(row)

    def list_runs(self, query: RunQuery | None = None) -> list[Run]:
        """Runs matching ``query``, newest first."""
        q = query or RunQuery()
        where, params = runs_query(
            q, ph="?", tag_clause="json_extract(tags, ?) = ?", tag_path=lambda tag: f'$."{tag}"'
        )
        sql = f"SELECT {_RUNS} FROM runs{where}"
        rows = self._run(lambda db: db.execute(sql, params).fetchall())
        return only_status(q, [run_from_row(r, self) for r in rows])

    def list_checks(self, limit: int = 50) -> list[tuple[Any, ...]]:
        """Check rows, newest first."""
        sql = f"SELECT {_CHECKS} FROM checks ORDER BY started_at DESC LIMIT ?"
        return [tuple(r) for r in self._run(lambda db: db.execute(sql, (limit,)).fetchall())]

    def get_check(self, check_id: str) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
        """A check (id or unique prefix) and its run rows in order."""
        pattern = like_escape(check_id) + "%"
        rows = self._run(
            lambda db: db.execute(
                f"SELECT {_CHECKS} FROM checks WHERE id = ? OR id LIKE ? ESCAPE '\\' LIMIT 3",
                (check_id, pattern),
            ).fetchall()
        )
        check = pick_check(check_id, rows, self.url)
        runs = self._run(
            lambda db: db.execute(
                f"SELECT {', '.join(CHECK_RUN_COLUMNS)} FROM check_runs WHERE check_id = ? "
                "ORDER BY seq",
                (check[0],),
            ).fetchall()
        )
        return check, [tuple(r) for r in runs]

    def close(self) -> None:
        """Stop this store's background writer, then close every connection it opened.

        The writer's thread holds a connection of its own: closing it under a write in progress
        would crash the interpreter, so the writer finishes (or gives up) first.
        """
        from replayable._writer import stop_writer  # _writer imports the store modules

        stop_writer(self)
        with self._lock:
            conns, self._conns = self._conns, []
            self._local = threading.local()
        for conn in conns:
            conn.close()

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"
