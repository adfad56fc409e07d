"""Store fixtures: a fresh PostgreSQL schema per test, and the two writable backends."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from replayable.store.base import Store
from replayable.store.postgres import PostgresStore
from replayable.store.sqlite import SQLiteStore


def postgres_server() -> str:
    """The test server's URL; failing loudly (never skipping) when it is not configured."""
    url = os.environ.get("REPLAYABLE_TEST_POSTGRES")
    if not url:
        pytest.fail(
            "REPLAYABLE_TEST_POSTGRES is not set: start a server with "
            '`eval "$(bash .ci/postgres.sh)"` (see .ci/run)'
        )
    return url


@pytest.fixture
def pg_url() -> Iterator[str]:
    """A URL whose search_path is a new, empty schema, dropped after the test."""
    server = postgres_server()
    schema = f"rp_test_{secrets.token_hex(6)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in server else "?"
    yield f"{server}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")


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
