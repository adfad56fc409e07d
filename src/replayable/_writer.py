"""The background writer: redaction, keys, hash chain and batched inserts, off the agent's thread.

The agent's thread only snapshots (one orjson pass) and enqueues. Everything else happens here.
Writing is fail-open: a store error is logged once, rows are kept for retry up to a bound, and
the agent never sees the error unless the recording is ``strict``.
"""

from __future__ import annotations

import atexit
import logging
import os
import queue
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from replayable import canonical
from replayable.errors import StoreUnavailable, Unserializable
from replayable.redact import might_hold_secrets, redact, redact_split
from replayable.store.base import Checkpoint, EventRow, Store
from replayable.trace import (
    Event,
    Run,
    chain_hash,
    checkpoint,
    content_bytes,
    genesis_hash,
    seal_run,
)
from replayable.trace import signing_key as _signing_key

if TYPE_CHECKING:
    from replayable.boundary import Boundary

__all__ = ["Pending", "Writer", "pending_row", "stop_writer", "writer_for"]

log = logging.getLogger("replayable")

_SORTED = orjson.OPT_SORT_KEYS
MAX_PENDING = 200_000
_STOP = object()
BATCH = 1000
MAX_RUN_OPS = 10_000
STALL_S = 1.0
"""A store call taking longer than this holds no one: ``flush`` stops waiting for it."""


@dataclass(slots=True)
class Pending:
    """A completed call as the agent's thread hands it over: snapshots, not live objects."""

    run_id: str
    seq: int
    address: str
    parent_seq: int | None
    boundary: Boundary
    input: bytes
    output: bytes
    error: dict[str, Any] | None
    meta: dict[str, Any]
    started_at: float
    duration_ns: int
    key: str | None = None
    """Set by a replay, which has redacted ``input`` already to compute it."""
    served: bool = False
    """The output was served from a recording (and so was redacted when recorded)."""
    source: Event | None = None
    """A served step's recorded event, in the same store: the step is stored as a reference
    to it (``meta["$ref"]``) instead of a second copy of its output (and of its input, when
    byte-identical). The hash covers the resolved values, so a resolved copy verifies."""
    source_run: str = ""
    same_input: bool = False
    """``input`` is byte for byte the source event's (the replay matched it so)."""


def _meta_bytes(meta: dict[str, Any]) -> bytes:
    """Step metadata as JSON, redacted (``annotate`` values are recorded data too); values
    with no JSON form become markers rather than costing the whole event."""
    try:
        data = canonical.dumps(meta)
    except Unserializable:
        data = canonical.dumps(canonical.sanitize(meta)[0])
    if might_hold_secrets(data):
        data = canonical.dumps(redact(orjson.loads(data)))
    return data


def pending_row(p: Pending, chains: dict[str, tuple[int, str]]) -> EventRow:
    """A completed call as a store row: redacted, keyed and linked into its run's hash chain
    (``chains`` maps a run id to its (events so far, head hash) and is updated)."""
    b = p.boundary
    if p.key is not None:  # a replay keyed the call: its input is redacted already
        inp, key = p.input, p.key
    else:
        inp, value = canonical.clean_input(b, p.input)
        key = canonical.input_key(b, inp, value)
    out = p.output
    if p.served:
        pass  # served from a recording, so redacted when it was recorded
    elif p.meta.get("stream") and out.startswith(b'["'):  # text chunks: a secret may span some
        out = canonical.snapshot(
            redact(redact_split(orjson.loads(out)), extra_keys=b.redact_keys, redactors=b.redactors)
        )
    elif b.redactors or b.redact_keys or might_hold_secrets(out):
        out = canonical.snapshot(
            redact(orjson.loads(out), extra_keys=b.redact_keys, redactors=b.redactors)
        )
    error = None if p.error is None else redact(p.error)
    err = None if error is None else orjson.dumps(error, option=_SORTED)
    meta = _meta_bytes(p.meta)
    stored_in, stored_out, stored_meta = inp, out, meta
    src = p.source
    if src is not None:
        # Stored as a reference to the source event; hashed as the values it stands for, so
        # the resolved event (what every reader gets) verifies.
        out = orjson.dumps(src.output)
        same_input = p.same_input or orjson.dumps(src.input) == inp
        ref = orjson.dumps({"$ref": [p.source_run, src.seq, int(same_input)]})
        stored_meta = ref[:-1] + (b"}" if meta == b"{}" else b"," + meta[1:])
        stored_out = b"null"
        if same_input:
            stored_in = b"null"
    chain_seq, prev = chains.get(p.run_id, (0, ""))
    content = content_bytes(
        run_id=p.run_id,
        seq=p.seq,
        chain_seq=chain_seq,
        address=p.address,
        parent_seq=p.parent_seq,
        boundary=b.name,
        kind=b.kind,
        key=key,
        started_at=p.started_at,
        duration_ns=p.duration_ns,
        input=inp,
        output=out,
        error=err,
        meta=meta,
    )
    digest = chain_hash(prev, content)
    chains[p.run_id] = (chain_seq + 1, digest)
    return (
        p.run_id,
        p.seq,
        chain_seq,
        p.address,
        p.parent_seq,
        b.name,
        b.kind,
        key,
        stored_in.decode(),
        stored_out.decode(),
        None if err is None else err.decode(),
        stored_meta.decode(),
        p.started_at,
        p.duration_ns,
        digest,
    )


class Writer:
    """One background thread per store, shared by every run recorded into it."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._chains: dict[str, tuple[int, str]] = {}
        self._checkpoints: dict[str, tuple[int, str, bytes]] = {}
        self._retry: list[EventRow] = []
        self._retry_ops: list[Callable[[], None]] = []
        self._failed = False
        self._key: bytes | None = None
        self._busy_since: float | None = None
        self._hang_warned = False
        self._dropped = 0
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._loop, name="replayable-writer", daemon=True)
        self._thread.start()

    @property
    def failing(self) -> bool:
        """True while the store rejects writes (events are being buffered)."""
        return self._failed

    def submit(self, item: Pending) -> None:
        """Queue a completed call; drops it (logged once) past the buffer bound."""
        if self._queue.qsize() > MAX_PENDING:
            if not self._dropped:
                log.warning("replayable: write buffer full; dropping events until it drains")
            self._dropped += 1
            return
        self._queue.put(item)

    def run_op(self, op: Callable[[], None]) -> None:
        """Queue a run-level store operation, ordered with the events around it."""
        self._queue.put(op)

    def begin_run(self, run: Run) -> None:
        """Queue the creation of ``run``; its hash chain starts from its header (genesis)."""

        def create() -> None:
            self._chains.setdefault(run.id, (0, genesis_hash(run)))
            self.store.create_run(run)

        self._queue.put(create)

    def seal(self, run: Run) -> None:
        """Set a finishing run's event count, sealed head and signature from its chain.

        Call it from a run operation (on this thread, after the run's events)."""
        count, head = self._chains.pop(run.id, (0, genesis_hash(run)))
        self._checkpoints.pop(run.id, None)
        seal_run(run, head, count)

    def stalled(self, limit: float = STALL_S) -> bool:
        """True while one batch or run operation has been in the store for over ``limit``
        seconds (a frozen server, a database locked by another process)."""
        since = self._busy_since
        return since is not None and time.monotonic() - since > limit

    def flush(self, timeout: float = 30.0, *, stall_limit: float | None = None) -> None:
        """Block until everything queued so far is written (or has failed, fail-open).

        With ``stall_limit`` (the end of a run, on the agent's thread: :data:`STALL_S`), stop
        waiting, with one warning, once a single store call has taken longer than that: the
        agent is never held by a hung store, the rest is left to the background writer. A
        store that is slow but answering (batches waiting their turn) is waited for."""
        done = threading.Event()
        self._queue.put(done)
        deadline = time.monotonic() + timeout
        while not done.wait(0.02):
            if time.monotonic() >= deadline:
                return
            if stall_limit is not None and self.stalled(stall_limit):
                if not self._hang_warned:
                    self._hang_warned = True
                    log.warning(
                        "replayable: store %s is not answering; the agent goes on and the "
                        "writer keeps its events for when it does",
                        self.store.url,
                    )
                return

    def head(self, run_id: str) -> tuple[int, str]:
        """(events written, head hash) of a run so far."""
        return self._chains.get(run_id, (0, ""))

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then end the thread."""
        self._queue.put(_STOP)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            items = [self._queue.get()]
            if items[0] is _STOP:
                return
            stop = False
            try:
                while len(items) < BATCH:
                    item = self._queue.get_nowait()
                    if item is _STOP:
                        stop = True
                        break
                    items.append(item)
            except queue.Empty:
                pass
            self._handle(items)
            if stop:
                return

    def _handle(self, items: list[Any]) -> None:
        self._busy_since = time.monotonic()
        try:
            self._handle_batch(items)
        finally:
            self._busy_since = None

    def _handle_batch(self, items: list[Any]) -> None:
        self._key = _signing_key()
        rows: list[EventRow] = []
        for item in items:
            if isinstance(item, Pending):
                try:
                    rows.append(self._row(item))
                except Exception as exc:
                    log.warning("replayable: could not encode event %s: %s", item.address, exc)
            elif isinstance(item, threading.Event):
                self._write(rows)
                rows = []
                item.set()
            else:
                self._write(rows)
                rows = []
                self._guard(item)
        self._write(rows)

    def _row(self, p: Pending) -> EventRow:
        row = pending_row(p, self._chains)
        if self._key is not None:  # a signed checkpoint goes in with the batch
            count, head = self._chains[p.run_id]
            self._checkpoints[p.run_id] = (count, head, self._key)
        return row

    def _write(self, rows: list[EventRow]) -> None:
        if self._retry_ops:
            self._replay_ops()
        if self._retry:
            rows = self._retry + rows
            self._retry = []
        if not rows:
            return
        pending = dict(self._checkpoints)
        checkpoints: list[Checkpoint] = [
            (run_id, count, head, checkpoint(run_id, head, count, key))
            for run_id, (count, head, key) in pending.items()
        ]
        try:
            if checkpoints:
                self.store.write_rows(rows, checkpoints)
            else:
                self.store.write_rows(rows)
        except Exception as exc:
            self._fail(exc)
            self._retry = rows[-MAX_PENDING:]
        else:
            for run_id, state in pending.items():
                if self._checkpoints.get(run_id) is state:
                    del self._checkpoints[run_id]
            if self._failed:
                log.warning("replayable: store %s is writable again", self.store.url)
            self._failed = False

    def _guard(self, op: Callable[[], None]) -> None:
        # A run operation that failed (store down) is retried later, in order, so a run
        # created while the store was down still gets its row once it is back.
        self._retry_ops.append(op)
        del self._retry_ops[:-MAX_RUN_OPS]
        self._replay_ops()

    def _replay_ops(self) -> None:
        while self._retry_ops:
            try:
                self._retry_ops[0]()
            except StoreUnavailable as exc:
                self._fail(exc)
                return
            except Exception as exc:
                log.warning("replayable: run operation failed on %s: %s", self.store.url, exc)
            self._retry_ops.pop(0)

    def _fail(self, exc: BaseException) -> None:
        if not self._failed:
            log.warning(
                "replayable: cannot write to store %s (%s); the agent keeps running and events "
                "are buffered (up to %d)",
                self.store.url,
                exc,
                MAX_PENDING,
            )
        self._failed = True
        self.error = StoreUnavailable(f"cannot write to store {self.store.url}: {exc}")


_WRITERS: weakref.WeakKeyDictionary[Any, Writer] = weakref.WeakKeyDictionary()
_WRITERS_LOCK = threading.Lock()


def _forget_writers_in_child() -> None:
    """After ``fork`` the parent's writer threads do not exist in the child: start afresh."""
    global _WRITERS_LOCK
    _WRITERS_LOCK = threading.Lock()
    _WRITERS.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_writers_in_child)


def writer_for(store: Store) -> Writer:
    """The background writer of ``store`` (started on first use)."""
    with _WRITERS_LOCK:
        w = _WRITERS.get(store)
        if w is None:
            w = Writer(store)
            _WRITERS[store] = w
        return w


def stop_writer(store: Store) -> None:
    """Flush and stop the writer of ``store``, if it has one."""
    with _WRITERS_LOCK:
        w = _WRITERS.pop(store, None)
    if w is not None:
        w.stop()


@atexit.register
def _flush_all() -> None:
    for w in list(_WRITERS.values()):
        # Exiting: wait while the store makes progress, not for one that stopped answering.
        w.flush(timeout=120.0, stall_limit=10.0)
