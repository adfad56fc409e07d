"""PostgreSQL store (issue 3 builds it)."""

from __future__ import annotations

from replayable.errors import StoreUnavailable
from replayable.store.sqlite import SQLiteStore

__all__ = ["PostgresStore"]


class PostgresStore(SQLiteStore):
    """Placeholder until the PostgreSQL store lands."""

    def __init__(self, url: str) -> None:
        raise StoreUnavailable(f"PostgreSQL store not implemented yet: {url}")
