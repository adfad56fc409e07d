"""Shared fixtures: every test gets its own store and working directory."""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest
from hypothesis import settings

from replayable import _writer
from replayable import redact as redact_mod
from replayable import store as store_mod

pytest_plugins = ["pytester"]

# Performance is measured in bench/, not in timed tests: no per-example deadline (a loaded
# machine made the default 200 ms one fail properties that hold).
settings.register_profile("replayable", deadline=None)
settings.load_profile("replayable")


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test records into its own SQLite file, from its own working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REPLAYABLE_STORE", str(tmp_path / "traces.db"))
    monkeypatch.setenv("REPLAYABLE_DEMO_DB", str(tmp_path / "customers.db"))
    monkeypatch.delenv("REPLAYABLE_MODE", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    for name in (
        "REPLAYABLE_PII",
        "REPLAYABLE_PII_KEY",
        "REPLAYABLE_PII_KEY_FILE",
        "REPLAYABLE_SAMPLE",
        "REPLAYABLE_MAX_VALUE_BYTES",
    ):
        monkeypatch.delenv(name, raising=False)
    yield
    store_mod.close_all()
    # Writers of stores a test opened by hand too: rp.flush() in a later test is about that
    # test's stores, never a store an earlier one left refusing writes.
    _writer.stop_writers()


@pytest.fixture
def store_path(tmp_path: Path) -> Path:
    """The SQLite file this test records into."""
    return tmp_path / "traces.db"


@pytest.fixture
def redaction_rules(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Rules a test adds (``add_key``, ``add_pattern``) do not outlive it."""
    monkeypatch.setattr(redact_mod, "_RULES", redact_mod._RULES)
    monkeypatch.setattr(redact_mod, "_user_parts", set())
    redact_mod.is_secret_key.cache_clear()
    yield
    redact_mod.is_secret_key.cache_clear()


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
    """A URL whose search_path is a new, empty schema on the test server, dropped after the
    test (every PostgreSQL test of the suite uses this one fixture)."""
    server = postgres_server()
    schema = f"rp_test_{secrets.token_hex(6)}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in server else "?"
    yield f"{server}{sep}options=-csearch_path%3D{schema}"
    with psycopg.connect(server, autocommit=True) as conn:
        conn.execute(f"DROP SCHEMA {schema} CASCADE")
