"""Store fixtures: a fresh PostgreSQL schema per test, and the two writable backends."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from replayable.store.base import Store
from replayable.store.postgres import PostgresStore
from replayable.store.sqlite import SQLiteStore


@pytest.fixture(params=["sqlite", "postgres"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    """Each writable backend in turn, empty."""
    store: Store
    if request.param == "sqlite":
        store = SQLiteStore(tmp_path / "contract.db")
    else:
        store = PostgresStore(request.getfixturevalue("pg_url"))
    yield store
    store.close()
