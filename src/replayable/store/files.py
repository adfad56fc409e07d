"""A directory of JSONL trace files as a read-only store (issue 3 builds it)."""

from __future__ import annotations

from replayable.errors import StoreUnavailable
from replayable.store.sqlite import SQLiteStore

__all__ = ["TraceDirStore"]


class TraceDirStore(SQLiteStore):
    """Placeholder until the trace-directory store lands."""

    def __init__(self, path: str) -> None:
        raise StoreUnavailable(f"trace directory stores not implemented yet: {path}")
