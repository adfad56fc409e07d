"""Shared fixtures: every test gets its own store and working directory."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from replayable import redact as redact_mod
from replayable import store as store_mod

pytest_plugins = ["pytester"]


@pytest.fixture(autouse=True)
def _isolated(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Each test records into its own SQLite file, from its own working directory."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("REPLAYABLE_STORE", str(tmp_path / "traces.db"))
    monkeypatch.setenv("REPLAYABLE_DEMO_DB", str(tmp_path / "customers.db"))
    monkeypatch.delenv("REPLAYABLE_MODE", raising=False)
    monkeypatch.delenv("NO_COLOR", raising=False)
    for name in ("REPLAYABLE_PII", "REPLAYABLE_PII_KEY", "REPLAYABLE_PII_KEY_FILE"):
        monkeypatch.delenv(name, raising=False)
    yield
    store_mod.close_all()


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
