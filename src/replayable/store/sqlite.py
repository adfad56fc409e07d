"""The embedded SQLite store: WAL mode, one connection per thread, batched inserts."""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import orjson

from replayable.errors import RunNotFound, StoreUnavailable
from replayable.store.base import EVENT_COLUMNS, EventRow, RunQuery, row_to_event
from replayable.trace import Event, Run

__all__ = ["SQLiteStore"]


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


MIGRATIONS: list[Callable[[sqlite3.Connection], None]] = [_m001_initial]
"""Ordered schema migrations; the ``_migrations`` table records which have run."""

_RUN_COLUMNS = (
    "id, name, tags, metadata, environment, started_at, ended_at, status, error, "
    "parent_run, head_hash, event_count"
)


def _dump(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


class SQLiteStore:
    """Runs and events in one SQLite file (WAL; safe for several processes on one host)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.url = f"sqlite:///{self.path}"
        self._local = threading.local()
        self._lock = threading.Lock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._migrate(self._conn())
        except (OSError, sqlite3.Error) as exc:
            raise StoreUnavailable(f"cannot open SQLite store {self.path}: {exc}") from None

    def _conn(self) -> sqlite3.Connection:
        conn: sqlite3.Connection | None = getattr(self._local, "conn", None)
        if conn is None:
            conn = sqlite3.connect(self.path, timeout=30.0, isolation_level=None)
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA synchronous=NORMAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._local.conn = conn
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

    def create_run(self, run: Run) -> None:
        """Insert a new run."""
        self._conn().execute(
            f"INSERT INTO runs ({_RUN_COLUMNS}) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (
                run.id,
                run.name,
                _dump(run.tags),
                _dump(run.metadata),
                _dump(run.environment),
                run.started_at,
                run.ended_at,
                run.status,
                None if run.error is None else _dump(run.error),
                run.parent_run,
                run.head_hash,
                run.event_count,
            ),
        )

    def finish_run(self, run: Run) -> None:
        """Record a run's outcome."""
        self._conn().execute(
            "UPDATE runs SET ended_at=?, status=?, error=?, head_hash=?, event_count=?, "
            "metadata=? WHERE id=?",
            (
                run.ended_at,
                run.status,
                None if run.error is None else _dump(run.error),
                run.head_hash,
                run.event_count,
                _dump(run.metadata),
                run.id,
            ),
        )

    def write_rows(self, rows: Sequence[EventRow]) -> None:
        """Insert a batch of event rows in one transaction."""
        db = self._conn()
        placeholders = ",".join("?" * len(EVENT_COLUMNS))
        db.execute("BEGIN IMMEDIATE")
        try:
            db.executemany(
                f"INSERT INTO events ({','.join(EVENT_COLUMNS)}) VALUES ({placeholders})", rows
            )
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise

    def _run_from_row(self, row: Sequence[Any]) -> Run:
        status = row[7]
        return Run(
            id=row[0],
            name=row[1],
            tags=orjson.loads(row[2]),
            metadata=orjson.loads(row[3]),
            environment=orjson.loads(row[4]),
            started_at=row[5],
            ended_at=row[6],
            status="incomplete" if status == "running" and not self._alive(row) else status,
            error=None if row[8] is None else orjson.loads(row[8]),
            parent_run=row[9],
            head_hash=row[10],
            event_count=row[11],
            store=self,
        )

    @staticmethod
    def _alive(row: Sequence[Any]) -> bool:
        env = orjson.loads(row[4])
        pid, host = env.get("pid"), env.get("host")
        if not isinstance(pid, int):
            return False
        import os
        import socket

        if host != socket.gethostname():
            return True
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True

    def get_run(self, run_id: str) -> Run:
        """The run with this id or unique id prefix."""
        rows = (
            self._conn()
            .execute(
                f"SELECT {_RUN_COLUMNS} FROM runs WHERE id = ? OR id LIKE ? ESCAPE '\\' LIMIT 3",
                (run_id, run_id.replace("%", "\\%").replace("_", "\\_") + "%"),
            )
            .fetchall()
        )
        exact = [r for r in rows if r[0] == run_id]
        if exact:
            return self._run_from_row(exact[0])
        if len(rows) == 1:
            return self._run_from_row(rows[0])
        if not rows:
            raise RunNotFound(f"no run {run_id!r} in {self.url}; list runs with `replayable runs`")
        raise RunNotFound(f"run id prefix {run_id!r} is ambiguous in {self.url}; give more of it")

    def iter_events(self, run_id: str) -> Iterator[Event]:
        """The run's events in seq order, streamed from a cursor."""
        cursor = self._conn().execute(
            f"SELECT {','.join(EVENT_COLUMNS)} FROM events WHERE run_id = ? ORDER BY seq",
            (run_id,),
        )
        while batch := cursor.fetchmany(500):
            for row in batch:
                yield row_to_event(row)

    def list_runs(self, query: RunQuery | None = None) -> list[Run]:
        """Runs matching ``query``, newest first."""
        q = query or RunQuery()
        where: list[str] = []
        params: list[Any] = []
        if q.name is not None:
            where.append("name = ?")
            params.append(q.name)
        if q.status is not None:
            if q.status == "incomplete":
                where.append("status = 'running'")
            else:
                where.append("status = ?")
                params.append(q.status)
        if q.since is not None:
            where.append("started_at >= ?")
            params.append(q.since)
        if q.until is not None:
            where.append("started_at < ?")
            params.append(q.until)
        for tag, value in (q.tags or {}).items():
            where.append("json_extract(tags, ?) = ?")
            params.extend([f'$."{tag}"', value])
        if q.boundary is not None:
            where.append(
                "EXISTS (SELECT 1 FROM events e WHERE e.run_id = runs.id "
                "AND (e.boundary = ? OR e.boundary LIKE ?))"
            )
            params.extend([q.boundary, f"%:{q.boundary}"])
        if q.has_error is not None:
            clause = (
                "(status = 'error' OR EXISTS (SELECT 1 FROM events e WHERE e.run_id = runs.id "
                "AND e.error IS NOT NULL))"
            )
            where.append(clause if q.has_error else f"NOT {clause}")
        sql = f"SELECT {_RUN_COLUMNS} FROM runs"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY started_at DESC LIMIT ?"
        params.append(q.limit)
        runs = [self._run_from_row(r) for r in self._conn().execute(sql, params)]
        if q.status == "incomplete":
            runs = [r for r in runs if r.status == "incomplete"]
        return runs

    def delete_runs(self, *, before: float) -> int:
        """Delete runs (and their events) that started before ``before``."""
        db = self._conn()
        db.execute("BEGIN IMMEDIATE")
        try:
            db.execute(
                "DELETE FROM events WHERE run_id IN (SELECT id FROM runs WHERE started_at < ?)",
                (before,),
            )
            n = db.execute("DELETE FROM runs WHERE started_at < ?", (before,)).rowcount
            db.execute("COMMIT")
        except BaseException:
            db.execute("ROLLBACK")
            raise
        return int(n)

    def close(self) -> None:
        """Close this thread's connection."""
        conn = getattr(self._local, "conn", None)
        if conn is not None:
            conn.close()
            self._local.conn = None

    def __repr__(self) -> str:
        return f"SQLiteStore({str(self.path)!r})"
