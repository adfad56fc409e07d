"""The SQL stores' one migration runner: each named migration applied once, in order, recorded."""

from __future__ import annotations

import sqlite3

import pytest

from replayable.store._migrations import apply_migrations


class TestApplyMigrations:
    def test_each_migration_runs_once_in_order(self) -> None:
        """A first run applies every migration in order; a second applies none; a migration
        added later is applied alone."""
        db = sqlite3.connect(":memory:")
        ran: list[str] = []
        steps = [(name, lambda name=name: ran.append(name)) for name in ("m001", "m002")]
        assert apply_migrations(db.execute, steps, param="?", time_type="REAL") == ["m001", "m002"]
        assert apply_migrations(db.execute, steps, param="?", time_type="REAL") == []
        later = [*steps, ("m003", lambda: ran.append("m003"))]
        assert apply_migrations(db.execute, later, param="?", time_type="REAL") == ["m003"]
        assert ran == ["m001", "m002", "m003"]
        recorded = [n for (n,) in db.execute("SELECT name FROM _migrations ORDER BY rowid")]
        assert recorded == ["m001", "m002", "m003"]

    def test_a_failing_migration_is_not_recorded(self) -> None:
        """A migration that raises is not marked applied (the store's transaction rolls back
        what it did)."""
        db = sqlite3.connect(":memory:")

        def broken() -> None:
            raise sqlite3.OperationalError("no such table: nowhere")

        with pytest.raises(sqlite3.OperationalError, match="nowhere"):
            apply_migrations(db.execute, [("m001", broken)], param="?", time_type="REAL")
        assert db.execute("SELECT count(*) FROM _migrations").fetchone() == (0,)
