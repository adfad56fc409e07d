"""The one schema migration runner of the SQL stores (SQLite and PostgreSQL).

A store's schema is versioned by ordered, named migrations; a ``_migrations`` table records the
name of each one applied, and opening a store applies the ones it lacks, in order, each recorded
as it runs (the model is simonw/llm's ``migrations.py``). The store runs this inside one
transaction of its own (SQLite: ``BEGIN IMMEDIATE``; PostgreSQL: a transaction holding an
advisory lock), so concurrent first opens apply each migration once.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from typing import Any, Protocol

__all__ = ["RUN_REFS", "Execute", "apply_migrations", "run_refs_fill"]

RUN_REFS = """
CREATE TABLE run_refs (
    run_id TEXT NOT NULL,
    source_run TEXT NOT NULL,
    PRIMARY KEY (run_id, source_run)
);
CREATE INDEX run_refs_source ON run_refs (source_run)
"""
"""m007 on both SQL stores: which runs' events each run's rows refer to (a replay's range rows
and served references); pruning keeps those runs."""


def run_refs_fill(position: str) -> str:
    """m007's fill from the references stored before it (each meta begins ``{"$ref":["<run>"``:
    the run id is the text from character 11 to the next quote); ``position`` is the SQL
    function finding a substring (SQLite ``instr``, PostgreSQL ``strpos``, same arguments)."""
    rest = "substr(meta, 11)"
    return (
        "INSERT INTO run_refs (run_id, source_run) "
        f"SELECT DISTINCT run_id, substr({rest}, 1, {position}({rest}, '\"') - 1) FROM events "
        f"WHERE meta LIKE '{{\"$ref\":[\"%' AND {position}({rest}, '\"') > 1 "
        "ON CONFLICT DO NOTHING"
    )


class Execute(Protocol):
    """A connection's ``execute`` (sqlite3 and psycopg alike): runs one statement."""

    def __call__(self, sql: str, params: Any = ..., /) -> Any: ...


def apply_migrations(
    execute: Execute,
    migrations: Iterable[tuple[str, Callable[[], None]]],
    *,
    param: str,
    time_type: str,
) -> list[str]:
    """Apply the ``(name, apply)`` migrations not recorded in ``_migrations`` yet, in order,
    recording each; returns the names applied now. ``param`` is the driver's placeholder
    (``?``, ``%s``), ``time_type`` the SQL type of the applied-at column."""
    execute(
        f"CREATE TABLE IF NOT EXISTS _migrations (name TEXT PRIMARY KEY, applied_at {time_type})"
    )
    done = {name for (name,) in execute("SELECT name FROM _migrations").fetchall()}
    applied = []
    for name, apply in migrations:
        if name in done:
            continue
        apply()
        execute(f"INSERT INTO _migrations VALUES ({param}, {param})", (name, time.time()))
        applied.append(name)
    return applied
