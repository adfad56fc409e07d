"""The writer: redaction, keys, hash chain and batched inserts, off the agent's calls.

During a run the agent's thread only snapshots (one orjson pass) and enqueues; a background
thread writes in batches. A run's end only enqueues too (``strict`` waits). Every read in the
process waits first for what is queued for its store (:func:`settle`: read your writes), and
:func:`flush_all` (``rp.flush``) waits for every store. Writing is fail-open: a store error is
logged once, rows are kept for retry up to a bound, and the agent never sees the error unless
the recording is ``strict``.
"""

from __future__ import annotations

import atexit
import contextlib
import logging
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

import orjson

from replayable import _cut, canonical
from replayable._ranges import Ranges
from replayable.errors import StoreUnavailable, Unserializable
from replayable.redact import (
    REDACTED,
    might_hold_secrets,
    might_hold_secrets_or,
    names_clean,
    redact,
)
from replayable.store.base import Checkpoint, Counters, EventRow, Store
from replayable.trace import (
    Event,
    Run,
    checkpoint,
    event_payload,
    genesis_hash,
    link_hash,
    payload_digest,
    seal_run,
)
from replayable.trace import signing_key as _signing_key

if TYPE_CHECKING:
    from replayable.boundary import Boundary

__all__ = [
    "BatchStore",
    "Buffer",
    "Pending",
    "Writer",
    "flush_all",
    "pending_row",
    "settle",
    "stop_writer",
    "stop_writers",
    "writer_for",
]

log = logging.getLogger("replayable")

_SORTED = orjson.OPT_SORT_KEYS
MAX_PENDING = 200_000
BATCH = 1000
MAX_RUN_OPS = 10_000
STALL_S = 1.0
"""A store call taking longer than this holds no one: ``flush`` stops waiting for it."""
SETTLE_S = 30.0
"""How long a read waits, at most, for this process's pending writes to its store (a store
that stops answering is waited for :data:`STALL_S` only)."""


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
    pii: Any = None
    """The run's pseudonymizer (:mod:`replayable._pii`) when personal data is pseudonymized;
    a replay has applied it to ``input`` already, with the redaction."""
    max_value_bytes: int = 0
    """The size cap of a stored input or output (:mod:`replayable._cut`); 0: the default."""


_ENGINE_META = frozenset(
    (
        "served",
        "source_seq",
        "stream",
        "closed_early",
        "never_started",
        "handled_throws",
        canonical.TAGGED_META,
    )
)
"""Step metadata keys the engine, replay and writer set themselves, to booleans, numbers and
lists of numbers (a served step's ``served`` and ``source_seq``, a stream's flags, an output's
colliding-keys flag)."""


_PLAIN = frozenset((bool, int, float, type(None)))


def _plain(meta: dict[str, Any]) -> bool:
    """Every value a boolean, a number or null, or a list of them (exact types: no subclass,
    no ``orjson.Fragment``, whose bytes would go out as they are)."""
    for value in meta.values():
        kind = type(value)
        if kind is list:
            if not all(type(v) in _PLAIN for v in value):
                return False
        elif kind not in _PLAIN:
            return False
    return True


def _meta_bytes(meta: dict[str, Any]) -> bytes:
    """Step metadata as JSON, redacted (``annotate`` values are recorded data too); values
    with no JSON form become markers rather than costing the whole event."""
    if meta.keys() <= _ENGINE_META and _plain(meta) and names_clean(_ENGINE_META):
        # Only the engine's keys, holding only booleans and numbers (an ``annotate`` under the
        # same name could put anything there): nothing redaction could change, no scan.
        try:
            return orjson.dumps(meta, option=_SORTED)
        except TypeError:  # an int past 64 bits: the full path marks it
            pass
    try:
        data = canonical.dumps(meta)
    except Unserializable:
        data = canonical.dumps(canonical.sanitize(meta)[0])
    if might_hold_secrets(data):
        try:
            value = orjson.loads(data)
        except orjson.JSONDecodeError:  # an orjson.Fragment passed through raw, and not JSON
            value = {k: REDACTED if isinstance(v, orjson.Fragment) else v for k, v in meta.items()}
        data = canonical.dumps(redact(value))
    return data


def _cut_values(p: Pending, inp: bytes, out: bytes, limit: int) -> tuple[bytes, bytes, bytes]:
    """The input and output as stored when one is over the cap (cut, after redaction and
    pseudonymization, so the marker's preview holds neither), and the metadata saying so."""
    given = p.meta.get(_cut.META)  # a served marker (serve_cut=True) says so already
    cut = [w for w in given if w == "output"] if isinstance(given, list) and p.served else []
    if len(inp) > limit:
        inp = _cut.cut(inp)
        cut.append("input")
    if len(out) > limit and not p.served:
        out = _cut.cut(out)
        cut.append("output")
        p.meta.pop(canonical.TAGGED_META, None)  # the marker holds no dict to rebuild
    p.meta[_cut.META] = cut
    meta = _meta_bytes(p.meta)
    if p.pii is not None and meta != b"{}":
        meta = p.pii.json(meta)
    return inp, out, meta


def _as_snapshotted(p: Pending) -> bool:
    """Whether ``p`` is stored exactly as its snapshots are when neither holds a secret's shape
    (:func:`~replayable.redact.might_hold_secrets`): recorded live (neither keyed nor served by
    a replay), no pseudonymizer, no error, no step metadata, a boundary with no redaction rules
    of its own, both values under the size cap and the output no tagged dict. What every path
    of :func:`pending_row` then does is key the input and chain the values as they are."""
    b = p.boundary
    limit = p.max_value_bytes or _cut.DEFAULT_MAX_VALUE_BYTES
    return (
        p.key is None
        and not p.meta
        and p.error is None
        and p.pii is None
        and p.source is None
        and not p.served
        and not b.redact_keys
        and not b.redactors
        and len(p.input) <= limit
        and len(p.output) <= limit
        and not canonical.has_tagged(p.output)
    )


def pending_row(p: Pending, chains: dict[str, tuple[int, str]]) -> EventRow:
    """A completed call as a store row: redacted, keyed and linked into its run's hash chain
    (``chains`` maps a run id to its (events so far, head hash) and is updated).

    Each value is scanned for secrets' shapes once: a call with neither (most) is keyed and
    chained as snapshotted, with no redaction, metadata or size pass (the same row the whole
    path makes: the property is tested); otherwise the whole path gets the verdicts."""
    if not _as_snapshotted(p):
        return _redacted_row(p, chains, None, None)
    b = p.boundary
    # The input's one pass also looks for what keying it would otherwise scan it for.
    words = canonical.normalize_words(b.transient)
    in_secrets, to_normalize = might_hold_secrets_or(p.input, words)
    out_secrets = might_hold_secrets(p.output)
    if in_secrets or out_secrets:
        return _redacted_row(p, chains, in_secrets, out_secrets)
    key = canonical.input_key(b, p.input, plain=not to_normalize)
    payload = payload_digest(p.input, p.output)
    return _linked_row(p, chains, key, payload, p.input, p.output, None, b"{}")


def _redacted_row(
    p: Pending,
    chains: dict[str, tuple[int, str]],
    in_secrets: bool | None,
    out_secrets: bool | None,
) -> EventRow:
    """:func:`pending_row`'s whole path: redaction, pseudonymization, metadata, size caps and
    references to a served step's source. ``in_secrets`` and ``out_secrets``: whether the input
    and output snapshots may hold secrets, when already scanned (None: scan them)."""
    b = p.boundary
    pii = p.pii
    if p.key is not None:  # a replay keyed the call: its input is cleaned already
        inp, key = p.input, p.key
    else:
        inp, _, key = canonical.keyed_input(b, p.input, pii, secrets=in_secrets)
    out = p.output
    if not p.served:  # a served output was cleaned when it was recorded
        out = canonical.clean_output(
            b, out, stream=bool(p.meta.get("stream")), pii=pii, secrets=out_secrets
        )
    error = None if p.error is None else redact(p.error)
    if canonical.has_tagged(p.source.stored("output") if p.source is not None else out):
        # A dict whose keys collide as strings, kept as its pairs: a replay rebuilds it.
        p.meta[canonical.TAGGED_META] = True
    meta = _meta_bytes(p.meta)
    if pii is not None:
        if error is not None:
            error = pii.value(error)
        if meta != b"{}":
            meta = pii.json(meta)
    limit = p.max_value_bytes or _cut.DEFAULT_MAX_VALUE_BYTES
    if len(inp) > limit or (len(out) > limit and not p.served):
        inp, out, meta = _cut_values(p, inp, out, limit)
    err = None if error is None else orjson.dumps(error, option=_SORTED)
    stored_in, stored_out, stored_meta = inp, out, meta
    src = p.source
    if src is not None:
        # Stored as a reference to the source event; hashed as the values it stands for, so
        # the resolved event (what every reader gets) verifies.
        out = src.stored("output")
        same_input = p.same_input or src.stored("input") == inp
        ref = orjson.dumps({"$ref": [p.source_run, src.seq, int(same_input)]})
        stored_meta = ref[:-1] + (b"}" if meta == b"{}" else b"," + meta[1:])
        stored_out = b"null"
        if same_input:  # the source's input and output: its verification's digest serves
            stored_in = b"null"
            payload = event_payload(src, inp, out)
        else:
            payload = payload_digest(inp, out)
    else:
        payload = payload_digest(inp, out)
    row = _linked_row(p, chains, key, payload, stored_in, stored_out, err, meta)
    return row if stored_meta is meta else row._replace(meta=stored_meta.decode())


def _linked_row(
    p: Pending,
    chains: dict[str, tuple[int, str]],
    key: str,
    payload: str,
    stored_in: bytes,
    stored_out: bytes,
    err: bytes | None,
    meta: bytes,
) -> EventRow:
    """The row of ``p`` as stored (``stored_in``, ``stored_out``, ``meta``), linked into its
    run's chain after the run's head: its hash covers ``payload`` (the digest of the values it
    stands for), ``err`` and ``meta``."""
    b = p.boundary
    run_id = p.run_id
    chain_seq, prev = chains.get(run_id, (0, ""))
    digest = link_hash(
        prev,
        run_id,
        p.seq,
        chain_seq,
        p.address,
        p.parent_seq,
        b.name,
        b.kind,
        key,
        p.started_at,
        p.duration_ns,
        payload,
        err,
        meta,
    )
    chains[run_id] = (chain_seq + 1, digest)
    return EventRow(
        run_id,
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
        meta.decode(),
        p.started_at,
        p.duration_ns,
        digest,
    )


class Buffer:
    """A sink (:class:`replayable._engine.Sink`) that keeps a run's steps in memory: nothing
    is written and no thread starts. ``rp.check`` keeps each replay here and turns only the
    ones worth keeping (diverged, failed) into rows with :meth:`rows`."""

    error: BaseException | None = None
    failing = False

    def __init__(self) -> None:
        self.pending: list[Pending] = []

    def begin_run(self, run: Run) -> None:
        """Nothing to create: a kept run is written whole, later."""

    def submit(self, item: Pending) -> None:
        """Keep the step in memory."""
        self.pending.append(item)

    def end_run(self, run: Run) -> None:
        """Nothing to finish: a kept run is written whole, later."""

    @property
    def busy(self) -> bool:
        """Nothing is ever queued."""
        return False

    def flush(self, timeout: float | None = 30.0, *, stall_limit: float | None = None) -> bool:
        """Nothing is queued."""
        return True

    def rows(self, run: Run) -> list[EventRow]:
        """The kept steps of ``run`` as store rows in write order, and ``run`` sealed (head
        hash and event count), ready for ``Store.put_run``."""
        chains: dict[str, tuple[int, str]] = {run.id: (0, genesis_hash(run))}
        ranges = Ranges(chains)
        rows: list[EventRow] = []
        for p in self.pending:
            if not ranges.add(p, rows):
                rows.append(pending_row(p, chains))
        ranges.close_all(rows)
        count, head = chains[run.id]
        seal_run(run, head, count)
        return rows


LINGER_S = 0.05
"""How long the writer, woken by new work, lets it gather before writing: short runs ending
close together go in one transaction, and a long run's events go in few, large ones (a read
does not wait for it: it writes what is queued itself). While work keeps coming the writer
looks again at this pace; it sleeps until woken after :data:`QUIET_PASSES` looks that found
nothing."""
QUIET_PASSES = 10
RETRY_MIN_S = 0.5
RETRY_MAX_S = 30.0
"""While a refusing store holds work back and nothing new comes to carry it, the idle writer
tries it again after :data:`RETRY_MIN_S`, doubling the wait up to :data:`RETRY_MAX_S` while the
store stays down: what was recorded in an outage goes in once the store is back, without
waiting for the next event. (Stopping the writer does not try it once more: closing a store
that is down must not wait on it; at exit, the last flush does.)"""
INLINE_WAIT_S = 0.25
"""How long a run's end, writing on the agent's thread, waits for a lock another process
holds before it leaves the write to the background writer (which waits its turn)."""
FLUSH_WAIT_S = 30.0
"""How long ``rp.flush``, writing on its caller's thread, waits at most for such a lock (its
timeout permitting)."""


@runtime_checkable
class BatchStore(Protocol):
    """A store that writes a whole batch in one transaction and can bound its wait for a lock.

    The writer then writes a run's end on the agent's own thread (no hand-off between threads)
    whenever it is not busy: one transaction creates the run if it is new, inserts its events
    and finishes it, so the run is on disk, complete, when its ``with`` block exits.
    """

    def write_batch(
        self,
        creates: Sequence[Run],
        rows: Sequence[EventRow],
        checkpoints: Sequence[Checkpoint],
        finishes: Sequence[Run],
        *,
        wait_s: float | None = None,
        counts: Mapping[str, int] | None = None,
    ) -> None:
        """Insert ``creates`` (as they are now: a run also in ``finishes`` goes in finished),
        then ``rows``, set ``checkpoints`` on runs still running, then update ``finishes`` and
        add ``counts`` to the store's counters; all or nothing. ``wait_s`` bounds the wait for
        another process's lock."""

    def housekeep(self) -> None:
        """Upkeep the background writer does between batches, so that a batch written on the
        agent's thread never pays for it (SQLite: checkpoint the WAL)."""


@dataclass(slots=True)
class _Begin:
    run: Run


@dataclass(slots=True)
class _End:
    run: Run


@dataclass(slots=True)
class _Count:
    name: str
    n: int


@dataclass(slots=True)
class _Batch:
    """Work ready to write, in the order it must go in: new runs, event rows, ended runs, and
    what to add to the store's counters."""

    creates: list[Run] = field(default_factory=list)
    rows: list[EventRow] = field(default_factory=list)
    finishes: list[Run] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    def __bool__(self) -> bool:
        return bool(self.creates or self.rows or self.finishes or self.counts)

    def then(self, later: _Batch) -> _Batch:
        """This batch followed by ``later``, as one (runs are created before any event, and
        ended after every event, of either)."""
        counts = dict(self.counts)
        for name, n in later.counts.items():
            counts[name] = counts.get(name, 0) + n
        return _Batch(
            self.creates + later.creates,
            self.rows + later.rows,
            self.finishes + later.finishes,
            counts,
        )


class Writer:
    """One background thread per store, shared by every run recorded into it.

    The agent's threads queue work; it is written in batches, one transaction each when the
    store is a :class:`BatchStore`. :meth:`flush` (a read, ``rp.flush``, a ``strict`` run's
    end) writes what is queued on the calling thread when the store allows and the writer is
    not mid-write; otherwise it waits for the thread (bounded: a hung store never holds a
    read for long).
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._items: deque[Any] = deque()
        self._io = threading.Lock()
        """Held while queued work is taken and written (by the thread or a flushing caller):
        each item is written once, and in order."""
        self._owner: int | None = None
        self._wake = threading.Event()
        self._hurry = threading.Event()
        self._idle = True
        self._stopping = False
        self._chains: dict[str, tuple[int, str]] = {}
        self._ranges = Ranges(self._chains)
        """Served steps gathered into range rows (:mod:`replayable._ranges`)."""
        self._checkpoints: dict[str, tuple[int, str, bytes]] = {}
        self._held = _Batch()
        """Prepared work the store refused (down, locked): written before anything newer."""
        self._retry_ops: list[Callable[[], None]] = []
        self._failed = False
        self._retry_s = RETRY_MIN_S
        self._key: bytes | None = None
        self._busy_since: float | None = None
        self._hang_warned = False
        self._dropped = 0
        self.error: BaseException | None = None
        self._batches: BatchStore | None = store if isinstance(store, BatchStore) else None
        self._counters = isinstance(store, Counters)
        # Lingering pays where a batch is one transaction (many short runs to a commit);
        # elsewhere each run is its own store calls anyway: write as soon as work arrives.
        self._linger = LINGER_S if self._batches is not None else 0.0
        self._thread = threading.Thread(target=self._loop, name="replayable-writer", daemon=True)
        self._thread.start()

    @property
    def failing(self) -> bool:
        """True while the store rejects writes (events are being buffered)."""
        return self._failed

    # -- queueing (the agent's threads) ------------------------------------------------------

    def _put(self, item: Any) -> None:
        items = self._items
        items.append(item)
        if self._idle:  # set before the thread looks at the queue: no wake-up is lost
            self._idle = False
            self._wake.set()
        elif len(items) >= BATCH and not self._hurry.is_set():  # set once, not on every put
            self._hurry.set()

    def submit(self, item: Pending) -> None:
        """Queue a completed call; drops it (logged once) past the buffer bound."""
        if len(self._items) > MAX_PENDING:
            if not self._dropped:
                log.warning("replayable: write buffer full; dropping events until it drains")
            self._dropped += 1
            return
        self._put(item)

    def count(self, name: str, n: int = 1) -> None:
        """Add ``n`` to the store's counter ``name`` (sampling's kept and dropped runs), with
        the work queued around it; a store without counters ignores it."""
        if self._counters:
            self._put(_Count(name, n))

    def run_op(self, op: Callable[[], None]) -> None:
        """Queue a run-level store operation, ordered with the events around it."""
        self._put(op)

    def begin_run(self, run: Run) -> None:
        """Queue the creation of ``run``; its hash chain starts from its header (genesis)."""
        self._put(_Begin(run))

    def end_run(self, run: Run) -> None:
        """Queue the end of ``run`` (its status and end time set): it is sealed from its chain
        after its events, then stored finished. Until sealed, reading its sealed fields waits
        for this writer (:meth:`settle`)."""
        run.seal_pending(self.settle)
        self._put(_End(run))

    def settle(self) -> None:
        """Read your writes: write what is queued before a read (see :func:`settle`)."""
        if self.busy and not self._failed:
            self.flush(timeout=SETTLE_S, stall_limit=STALL_S)

    def seal(self, run: Run) -> None:
        """Set a finishing run's event count, sealed head and signature from its chain.

        Call it where the run's events are taken (after them, holding the writer's lock)."""
        run.seal_pending(None)
        chain = self._chains.pop(run.id, None)
        count, head = (0, genesis_hash(run)) if chain is None else chain
        self._checkpoints.pop(run.id, None)
        seal_run(run, head, count, self._key or b"")  # b"": the key was looked up, none is set

    def head(self, run_id: str) -> tuple[int, str]:
        """(events written, head hash) of a run so far."""
        return self._chains.get(run_id, (0, ""))

    # -- waiting for the store ---------------------------------------------------------------

    def stalled(self, limit: float = STALL_S) -> bool:
        """True while one batch or run operation has been in the store for over ``limit``
        seconds (a frozen server, a database locked by another process)."""
        since = self._busy_since
        return since is not None and time.monotonic() - since > limit

    @property
    def busy(self) -> bool:
        """True while work is queued or being written (cheap: read on every store read)."""
        return bool(self._items) or self._owner is not None

    def flush(self, timeout: float | None = 30.0, *, stall_limit: float | None = None) -> bool:
        """Block until everything queued so far is written (or has failed, fail-open).

        On a :class:`BatchStore` that is answering, the calling thread writes the queue itself
        (waiting for a batch the thread is writing first). With ``stall_limit`` (the end of a
        run, on the agent's thread: :data:`STALL_S`), stop waiting, with one warning, once a
        single store call has taken longer than that: the agent is never held by a hung store,
        the rest is left to the background writer. A store that is slow but answering
        (batches waiting their turn) is waited for. ``timeout=None`` waits as long as it takes.

        Work the store refused earlier (held for the writer's retry timer: a lock another
        process held, a store that was down) is retried now, by this call, not when the timer
        next fires: a flush after the lock is gone succeeds at once. Without ``stall_limit``
        (``rp.flush``) that retry waits for another process's lock as long as ``timeout``
        allows; with it (a read, a run's end) a store that is failing is left to the thread.

        Returns True when everything queued before the call is in the store; False when it
        gave up waiting or the store refused work (kept for retry)."""
        me = threading.get_ident()
        if me in (self._owner, self._thread.ident):
            return False  # called from inside a write: what is queued goes in after it
        deadline = time.monotonic() + (timeout if timeout is not None else 1e9)
        if self._batches is not None and (stall_limit is None or not self._failed):
            here = self._write_here(deadline, stall_limit)
            if here is None:
                return False
            if here:
                return self._written()
        done = threading.Event()
        self._items.append(done)
        self._idle = False
        self._wake.set()
        self._hurry.set()
        while not done.wait(0.02):
            if time.monotonic() >= deadline:
                return False
            if stall_limit is not None and self.stalled(stall_limit):
                self._warn_hung()
                return False
        return self._written()

    def _written(self) -> bool:
        """Nothing is held back for retry (the store took every batch so far)."""
        return not (self._held or self._retry_ops or self._failed)

    def _warn_hung(self) -> None:
        if not self._hang_warned:
            self._hang_warned = True
            log.warning(
                "replayable: store %s is not answering; the agent goes on and the "
                "writer keeps its events for when it does",
                self.store.url,
            )

    def _write_here(self, deadline: float, stall_limit: float | None) -> bool | None:
        """Write the queue on this thread; False when the store refused it or the thread is
        mid-write (either way the rest is the background writer's: wait for its marker), True
        when written, None when given up waiting (the deadline, a hung store)."""
        io = self._io
        while not io.acquire(timeout=0.005):
            if self._owner == self._thread.ident:
                # The thread is writing batches (a long run's, maybe without end): wait for it
                # to pass a marker instead, which bounds the wait by what is queued now.
                return False
            if time.monotonic() >= deadline:
                return None
            if stall_limit is not None and self.stalled(stall_limit):
                self._warn_hung()
                return None
        self._owner = threading.get_ident()
        # An explicit flush waits for a foreign lock as long as its timeout allows (within
        # the store's own bound); a read or a run's end only briefly.
        wait_s = INLINE_WAIT_S
        if stall_limit is None:
            wait_s = max(INLINE_WAIT_S, min(deadline - time.monotonic(), FLUSH_WAIT_S))
        try:
            items = self._items
            if self._retry_ops:
                self._replay_ops()  # held run operations go first, in order
            while items or self._held:
                batch, markers, op = self._take()
                if op is not None:
                    items.appendleft(op)  # a run operation of another kind: the thread's
                self._busy_since = time.monotonic()
                try:
                    written = self._commit(batch, inline=True, wait_s=wait_s)
                finally:
                    self._busy_since = None
                if not written:
                    items.extendleft(reversed(markers))
                    break
                for m in markers:
                    m.set()
                if op is not None:
                    written = False
                    break
            else:
                return not self._retry_ops
        finally:
            self._owner = None
            io.release()
        self._idle = False
        self._wake.set()
        self._hurry.set()
        return written

    def stop(self, timeout: float = 10.0) -> None:
        """Write what is queued, then end the thread."""
        self._stopping = True
        self._wake.set()
        self._hurry.set()
        self._thread.join(timeout)

    # -- the thread --------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            self._idle = True
            if not self._items and not self._stopping:
                if self._held or self._retry_ops:
                    if not self._wake.wait(self._retry_s):  # nothing new: try the held again
                        self._retry_held()
                        continue
                else:
                    self._wake.wait()
            self._idle = False
            self._wake.clear()
            quiet, linger = 0, self._linger
            while quiet < (QUIET_PASSES if linger else 1):
                if linger and not self._stopping:
                    self._hurry.wait(linger)
                self._hurry.clear()
                with self._io:
                    self._owner = threading.get_ident()
                    try:
                        busy = self._write_queued()
                    finally:
                        self._owner = None
                if self._stopping and not self._items:
                    return
                quiet = 0 if busy else quiet + 1
                if self._batches is not None:
                    try:
                        self._batches.housekeep()
                    except Exception as exc:  # upkeep only: the next pass tries again
                        log.debug("replayable: upkeep of %s failed: %s", self.store.url, exc)

    def _retry_held(self) -> None:
        """Write the work a refusing store left held, with nothing new queued to carry it; the
        next try waits twice as long while the store still refuses.

        A batch store (SQLite) is tried the way a run's end tries it: a short wait for another
        process's lock, no one-call-at-a-time fallback, so a retry never keeps the store's
        write lock (which closing the store waits for) for long. New work still goes the
        usual way."""
        with self._io:
            self._owner = threading.get_ident()
            self._busy_since = time.monotonic()
            try:
                inline = self._batches is not None
                if inline and self._retry_ops:
                    self._replay_ops()  # an inline commit leaves them; the other does them
                self._commit(_Batch(), inline=inline)
            finally:
                self._busy_since = None
                self._owner = None
        if self._held or self._retry_ops:
            self._retry_s = min(self._retry_s * 2, RETRY_MAX_S)
        else:
            self._recovered()

    def _write_queued(self) -> bool:
        """Write everything queued (holding the lock); False if there was nothing."""
        items = self._items
        if not items:
            return False
        while items:
            batch, markers, op = self._take()
            self._busy_since = time.monotonic()
            try:
                self._commit(batch)
                if op is not None:
                    self._guard(op)
            finally:
                self._busy_since = None
            for m in markers:
                m.set()
        return True

    def _take(self) -> tuple[_Batch, list[threading.Event], Callable[[], None] | None]:
        """Up to :data:`BATCH` queued items as a batch ready to write (events redacted, keyed
        and chained, ended runs sealed), the flush markers among them, and the run operation
        of another kind that cut the batch short, if one did."""
        items = self._items
        batch = _Batch()
        markers: list[threading.Event] = []
        self._key = _signing_key()
        for _ in range(BATCH):
            try:
                item = items.popleft()
            except IndexError:
                break
            kind = type(item)
            if kind is Pending:
                try:
                    if not self._ranges.add(item, batch.rows):
                        batch.rows.append(self._row(item))
                except Exception as exc:
                    log.warning("replayable: could not encode event %s: %s", item.address, exc)
            elif kind is _Begin:
                run = item.run
                if run.id not in self._chains:
                    self._chains[run.id] = (0, genesis_hash(run))
                batch.creates.append(run)
            elif kind is _End:
                self._ranges.close(item.run.id, batch.rows)
                self.seal(item.run)
                batch.finishes.append(item.run)
            elif kind is _Count:
                batch.counts[item.name] = batch.counts.get(item.name, 0) + item.n
            elif kind is threading.Event:
                markers.append(item)
            else:
                self._close_ranges(batch)
                return batch, markers, item
        self._close_ranges(batch)
        return batch, markers, None

    def _close_ranges(self, batch: _Batch) -> None:
        """Write the served steps gathered into ranges with ``batch`` (a range never waits
        for a later batch: what is queued is what a read sees)."""
        if not self._ranges.open:
            return
        for run_id in self._ranges.close_all(batch.rows):
            if self._key is not None:  # a signed checkpoint goes in with the batch
                count, head = self._chains[run_id]
                self._checkpoints[run_id] = (count, head, self._key)

    def _row(self, p: Pending) -> EventRow:
        row = pending_row(p, self._chains)
        if self._key is not None:  # a signed checkpoint goes in with the batch
            count, head = self._chains[p.run_id]
            self._checkpoints[p.run_id] = (count, head, self._key)
        return row

    # -- writing -----------------------------------------------------------------------------

    def _commit(self, batch: _Batch, *, inline: bool = False, wait_s: float | None = None) -> bool:
        """Write ``batch`` after any held work; False (the work held) if the store refused.

        ``inline`` (a run's end or a flush on the caller's thread): wait ``wait_s`` (default
        :data:`INLINE_WAIT_S`) for another process's lock, and leave a refusal to the
        background writer, which logs and retries it."""
        if self._retry_ops and not inline:
            self._replay_ops()
        if self._held:
            batch = self._held.then(batch)
            self._held = _Batch()
        if not batch:
            return True
        pending = dict(self._checkpoints)
        checkpoints: list[Checkpoint] = [
            (run_id, count, head, checkpoint(run_id, head, count, key))
            for run_id, (count, head, key) in pending.items()
        ]
        written = False
        if self._batches is not None:
            try:
                self._batches.write_batch(
                    batch.creates,
                    batch.rows,
                    checkpoints,
                    batch.finishes,
                    wait_s=(wait_s or INLINE_WAIT_S) if inline else None,
                    counts=batch.counts,
                )
                written = True
            except Exception:
                if inline:
                    self._hold(batch)
                    return False
                # Refused whole: write it one call at a time, so what the store still takes
                # goes in (a run's header when its events table is broken) and only what it
                # rejects outright (a run id already there) is lost or held.
        if not written and not self._write_each(batch, checkpoints):
            return False
        for run_id, state in pending.items():
            if self._checkpoints.get(run_id) is state:
                del self._checkpoints[run_id]
        self._recovered()
        return True

    def _recovered(self) -> None:
        if self._failed:
            log.warning("replayable: store %s is writable again", self.store.url)
        self._failed = False
        self._retry_s = RETRY_MIN_S

    def _write_each(self, batch: _Batch, checkpoints: list[Checkpoint]) -> bool:
        """Write ``batch`` with the plain :class:`Store` calls, in order; what the store
        refuses while down is held for retry, what it rejects outright is logged and lost."""
        store = self.store
        while batch.creates:
            if not self._run_call(store.create_run, batch.creates[0], batch):
                return False
            batch.creates.pop(0)
        if batch.rows:
            try:
                if checkpoints:
                    store.write_rows(batch.rows, checkpoints)
                else:
                    store.write_rows(batch.rows)
            except Exception as exc:
                self._fail(exc)
                self._hold(batch)
                return False
            batch.rows = []
        while batch.finishes:
            if not self._run_call(store.finish_run, batch.finishes[0], batch):
                return False
            batch.finishes.pop(0)
        if batch.counts and isinstance(store, Counters):
            try:
                store.add_counts(batch.counts)
            except StoreUnavailable as exc:
                self._fail(exc)
                self._hold(batch)
                return False
            except Exception as exc:
                log.warning("replayable: could not add to counters of %s: %s", store.url, exc)
            batch.counts = {}
        return True

    def _run_call(self, call: Callable[[Run], None], run: Run, batch: _Batch) -> bool:
        try:
            call(run)
        except StoreUnavailable as exc:
            self._fail(exc)
            self._hold(batch)
            return False
        except Exception as exc:
            log.warning("replayable: run operation failed on %s: %s", self.store.url, exc)
        return True

    def _hold(self, batch: _Batch) -> None:
        """Keep refused work for the next write, within bounds."""
        del batch.rows[:-MAX_PENDING]
        del batch.creates[:-MAX_RUN_OPS]
        del batch.finishes[:-MAX_RUN_OPS]
        self._held = batch.then(self._held) if self._held else batch

    def _guard(self, op: Callable[[], None]) -> None:
        # A run operation that failed (store down) is retried later, in order.
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
    _AT.clear()


_AT: dict[str, list[Writer]] = {}
"""Writers by the place their store writes to: two store objects for one SQLite file (a path
and its ``sqlite:///`` URL, say) share the wait of a read."""
_PLACES: weakref.WeakKeyDictionary[Any, str] = weakref.WeakKeyDictionary()


def _place(store: Store) -> str:
    """Where ``store`` writes: its file, resolved, or its URL."""
    try:
        return _PLACES[store]
    except (KeyError, TypeError):
        pass
    path = getattr(store, "path", None)
    place = str(Path(path).resolve()) if isinstance(path, str | Path) else str(store.url)
    with contextlib.suppress(TypeError):  # an unhashable store: looked up each time
        _PLACES[store] = place
    return place


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_writers_in_child)


def writer_for(store: Store) -> Writer:
    """The background writer of ``store`` (started on first use)."""
    w = _WRITERS.get(store)
    if w is not None:
        return w
    with _WRITERS_LOCK:
        w = _WRITERS.get(store)
        if w is None:
            w = Writer(store)
            _WRITERS[store] = w
            _AT.setdefault(_place(store), []).append(w)
            _flush_at_child_exit()
        return w


_CHILD_HOOKED: list[int] = []


def _flush_at_child_exit() -> None:
    """In a ``multiprocessing`` child (a pool worker, a ``Process``), flush at its exit too: it
    leaves by ``os._exit``, which skips ``atexit``, after running its own finalizers."""
    import multiprocessing

    pid = os.getpid()
    if pid in _CHILD_HOOKED or multiprocessing.parent_process() is None:
        return
    _CHILD_HOOKED.append(pid)
    from multiprocessing import util

    util.Finalize(None, _flush_all, exitpriority=100)


def stop_writer(store: Store) -> None:
    """Flush and stop the writer of ``store``, if it has one."""
    with _WRITERS_LOCK:
        w = _WRITERS.pop(store, None)
        if w is not None:
            at = _AT.get(_place(store), [])
            if w in at:
                at.remove(w)
    if w is not None:
        w.stop()


def stop_writers() -> None:
    """Flush and stop every writer of the process (test isolation, shutdown)."""
    for store in list(_WRITERS.keys()):
        stop_writer(store)


def settle(store: Store) -> None:
    """Read your writes: write what this process has queued for ``store`` (runs just ended, the
    events of a run still open) before a read of it.

    The one wait behind every read: each backend calls it where a read or a write of its own
    takes a connection, and a recorded :class:`Run` calls it before its sealed fields are read.
    Free when nothing is queued; never waits on a store that is failing or hung (fail-open),
    nor on the writer's own thread."""
    for w in _AT.get(_place(store), ()):
        w.settle()


def flush_all(timeout: float | None = None) -> bool:
    """Wait until every store written from this process has every event recorded so far.

    Returns True when all of it is stored; False when ``timeout`` seconds passed first or a
    store is refusing writes (its writer keeps the work and retries)."""
    deadline = None if timeout is None else time.monotonic() + timeout
    ok = True
    for w in list(_WRITERS.values()):
        left = None if deadline is None else max(0.0, deadline - time.monotonic())
        ok = w.flush(timeout=left) and ok
    return ok


@atexit.register
def _flush_all() -> None:
    for w in list(_WRITERS.values()):
        # Exiting: wait while the store makes progress, not for one that stopped answering.
        w.flush(timeout=120.0, stall_limit=10.0)
