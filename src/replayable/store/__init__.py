"""Stores: where recorded runs live. ``open_store(url)`` picks the backend from the URL."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from replayable._exports import publish
from replayable.errors import StoreUnavailable
from replayable.store.base import (
    EVENT_COLUMNS,
    CheckRow,
    CheckRunRow,
    EventRow,
    RunQuery,
    RunRow,
    Store,
)
from replayable.trace import Event, Run

__all__ = [
    "DEFAULT_STORE",
    "EVENT_COLUMNS",
    "CheckRow",
    "CheckRunRow",
    "EventRow",
    "RunQuery",
    "RunRow",
    "Store",
    "close_all",
    "default_url",
    "load_run",
    "open_store",
]

DEFAULT_STORE = ".replayable/traces.db"

_OPEN: dict[str, Store] = {}


def default_url() -> str:
    """``$REPLAYABLE_STORE`` when set, else ``.replayable/traces.db`` in the working directory."""
    return os.environ.get("REPLAYABLE_STORE") or DEFAULT_STORE


def open_store(
    url: str | os.PathLike[str] | Store | None = None,
    *,
    must_exist: bool = False,
    pii: Any = None,
    sample: float | None = None,
    keep: Any = None,
) -> Store:
    """Open a store by URL or path (the same URL twice gives the same object).

    - ``sqlite:///path.db`` or a plain file path: the embedded SQLite store (the default,
      ``.replayable/traces.db``, or ``$REPLAYABLE_STORE``);
    - ``postgresql://...``: PostgreSQL (``pip install "replayable[postgres]"``);
    - a directory: its JSONL trace files, read-only.

    ``must_exist=True`` (for reading) refuses to create a SQLite file that is not there yet.
    ``pii=True`` or ``pii=rp.PII(...)`` makes pseudonymized personal data the default of every
    run recorded into this store (``record(pii=False)`` still opts a run out).
    ``sample=0.05`` (with ``keep=rp.Keep(...)``) makes head sampling the default of every run
    recorded into it, e.g. by a service's middleware (``record(sample=1.0)`` records a run
    whole).

    >>> store = open_store("sqlite:///traces.db")
    """
    if pii is not None or sample is not None:
        store = open_store(url, must_exist=must_exist)
        if pii is not None:
            from replayable._pii import set_store_default

            set_store_default(store, pii)
        if sample is not None:
            from replayable import _sampling

            _sampling.set_store_default(store, sample, keep)
        return store
    if url is not None and not isinstance(url, str | os.PathLike):
        return url
    text = os.fspath(url) if url is not None else default_url()
    if text in _OPEN:
        return _OPEN[text]
    path = _sqlite_path(text)
    if must_exist and path is not None and not path.exists():
        raise StoreUnavailable(
            f"no store at {path}: nothing has been recorded there "
            "(check --store or $REPLAYABLE_STORE)"
        )
    store = _open(text)
    _OPEN[text] = store
    return store


def load_run(
    ref: str | os.PathLike[str] | Run, store: str | os.PathLike[str] | Store | None = None
) -> tuple[Run, list[Event]]:
    """A run and its events, in start order: from a :class:`Run`, a trace file path, or a run
    id (or unique prefix) in ``store`` (default: the default store).

    The one loader behind ``replay``, ``fuzz``, ``drift``, the CLI and the integrations.
    """
    from replayable.trace import read_trace

    if isinstance(ref, Run):
        src = ref.store or open_store(store)
        return ref, list(src.iter_events(ref.id))
    text = os.fspath(ref)
    if text.endswith(".jsonl") or Path(text).is_file():
        return read_trace(text)
    src = open_store(store)
    run = src.get_run(text)
    return run, list(src.iter_events(run.id))


def close_all() -> None:
    """Flush and close every store opened with :func:`open_store` (tests, shutdown)."""
    from replayable._writer import stop_writer

    for store in list(_OPEN.values()):
        stop_writer(store)
        store.close()
    _OPEN.clear()


def _sqlite_path(text: str) -> Path | None:
    """The file behind a SQLite URL or plain path; None for other stores."""
    if text.startswith("sqlite://"):
        path = text.removeprefix("sqlite://")
        return Path((path[1:] if path.startswith("/") else path) or DEFAULT_STORE)
    if "://" in text or Path(text).is_dir():
        return None
    return Path(text)


def _open(text: str) -> Store:
    if text.startswith(("postgresql://", "postgres://")):
        try:
            from replayable.store.postgres import PostgresStore
        except ImportError as exc:
            raise StoreUnavailable(
                f"PostgreSQL support is not installed ({exc.name} missing): "
                'pip install "replayable[postgres]"'
            ) from None
        return PostgresStore(text)
    path = _sqlite_path(text)
    if path is not None:
        from replayable.store.sqlite import SQLiteStore

        return SQLiteStore(path)
    if "://" in text:
        raise StoreUnavailable(
            f"unsupported store URL {text!r}: use sqlite:///path.db, postgresql://..., "
            "a .db path or a directory of trace files"
        )
    from replayable.store.files import TraceDirStore

    return TraceDirStore(text)


publish(globals())
