"""The hash chain over a run's events, its seal and signature, and verification.

Each event's ``hash`` chains over the previous event *in write order* (``chain_seq``),
``sha256(prev_hash + content)``, starting from a hash of the run's header; a finished run's head
hash seals the chain with its outcome, and a signing key signs that head (see the comment above
:data:`HASH_VERSION`). Any edit, header included, breaks the head. :func:`verify_run` checks all
of it.

Everything here is re-exported by :mod:`replayable.trace`, the public home of these names
(import them from there). This module builds on the data model (:class:`~replayable.trace.Run`,
:class:`~replayable.trace.Event`), which needs nothing from it: ``replayable.trace`` defines the
model, then imports this module.
"""

from __future__ import annotations

import functools
import hashlib
import hmac
import os
from collections.abc import Iterable
from dataclasses import dataclass
from hashlib import sha256 as _sha256
from typing import Any

import orjson

from replayable._model import Event, Run, StoredEvent
from replayable._version import __version__
from replayable.errors import TraceCorrupt

__all__ = [
    "HASH_VERSION",
    "SIGNING_KEY_ENV",
    "Verification",
    "chain_events",
    "chain_hash",
    "check_recording",
    "checkpoint",
    "content_bytes",
    "event_content",
    "event_hash",
    "event_payload",
    "genesis_hash",
    "head_signature",
    "link_hash",
    "payload_digest",
    "rechain",
    "seal_hash",
    "seal_run",
    "sign_run",
    "signing_key",
    "verify_events",
    "verify_run",
]

_SORTED = orjson.OPT_SORT_KEYS


# -- the hashed content ---------------------------------------------------------------------
#
# Version 2 (every run recorded since): the chain starts from the run's *genesis* hash, over
# the header fields fixed when the run starts (id, name, tags, environment, start time, parent
# run); each event hashes its fields with input, output, error and meta exactly as stored (the
# order they were recorded in); a finished run's ``head_hash`` is a *seal* over the last event
# hash and the outcome (status, error, end time, metadata, event count). So an edit anywhere in
# a run, header included, breaks ``head_hash``; with a signing key the signature over it makes
# the edit undetectable only to someone holding the key.
# Version 3 (every run recorded since): as version 2, except how an event is hashed. Its input
# and output bytes are digested on their own first (:func:`payload_digest`), and the event's hash
# covers that digest with its other fields and the previous hash (:func:`link_hash`). A replay's
# served step has its source event's input and output: it takes the digest that verifying the
# source computed (:meth:`StoredEvent.verified_payload`) instead of hashing 2 KB again.
# Version 1 (older runs): a chain from "" over events with every key sorted; the header is not
# covered. They stay readable and verifiable, and verify says that the header is unchecked.
# Versions 1 and 2 stay verifiable, and a run is rechained in its own version.

HASH_VERSION = 3
"""The hash format new runs are recorded with (see the comment above)."""

_LINK_TAG = b"replayable-event-v3\n"


def _norm(value: Any) -> bytes:
    """JSON of a header value as it reads back from any store: sorted keys, one round trip
    (so a tuple, a datetime or a dataclass hashes as the list, string or dict it is stored as)."""
    return orjson.dumps(orjson.loads(orjson.dumps(value, option=_SORTED)), option=_SORTED)


def genesis_hash(run: Run) -> str:
    """Where a version-2 run's chain starts: SHA-256 over the header fixed at its start."""
    start = {
        "environment": run.environment,
        "id": run.id,
        "name": run.name,
        "parent_run": run.parent_run,
        "started_at": run.started_at,
        "tags": run.tags,
    }
    return hashlib.sha256(b"replayable-run-v2\n" + _norm(start)).hexdigest()


def seal_hash(run: Run, chain_head: str, event_count: int) -> str:
    """A finished version-2 run's ``head_hash``: the last event hash and the run's outcome."""
    end = {
        "chain_head": chain_head,
        "ended_at": run.ended_at,
        "error": run.error,
        "event_count": event_count,
        "metadata": run.metadata,
        "status": run.status,
    }
    return hashlib.sha256(b"replayable-seal-v2\n" + _norm(end)).hexdigest()


def content_bytes(
    *,
    run_id: str,
    seq: int,
    chain_seq: int,
    address: str,
    parent_seq: int | None,
    boundary: str,
    kind: str,
    key: str,
    started_at: float,
    duration_ns: int,
    input: bytes,
    output: bytes,
    error: bytes | None,
    meta: bytes,
) -> bytes:
    """The bytes a version-2 event hash covers: its fields, JSON values exactly as stored.

    The one definition of an event's hashed content: the writer calls it with the bytes it
    stores, :func:`event_content` with an :class:`Event` read back.
    """
    return orjson.dumps(
        {
            "address": address,
            "boundary": boundary,
            "chain_seq": chain_seq,
            "duration_ns": duration_ns,
            "error": None if error is None else orjson.Fragment(error),
            "input": orjson.Fragment(input),
            "key": key,
            "kind": kind,
            "meta": orjson.Fragment(meta),
            "output": orjson.Fragment(output),
            "parent_seq": parent_seq,
            "run_id": run_id,
            "seq": seq,
            "started_at": started_at,
        }
    )


def payload_digest(input: bytes, output: bytes) -> str:
    """Version 3: SHA-256 over an event's input and output bytes as stored (the input's length
    first, so the two cannot trade bytes)."""
    # Fed in parts: no 2.4 KB copy joined first, and parts under 2 KB let hashlib keep the GIL
    # (dropping and taking it back again costs more than hashing one of them).
    h = _sha256(b"%d\n" % len(input))
    h.update(input)
    h.update(output)
    return h.hexdigest()


def link_hash(
    prev: str,
    run_id: str,
    seq: int,
    chain_seq: int,
    address: str,
    parent_seq: int | None,
    boundary: str,
    kind: str,
    key: str,
    started_at: float,
    duration_ns: int,
    payload: str,
    error: bytes | None,
    meta: bytes,
) -> str:
    """A version-3 event's hash: its fields, the digest of its input and output
    (:func:`payload_digest`), the previous hash, then its error and meta bytes as stored.

    The fixed fields go in as one JSON array (orjson escapes every newline, so the first one
    ends it); error and meta, which are stored JSON text nobody re-encodes, follow with their
    lengths in front. No bytes can move from one field to another without changing the hash
    (the version-2 content pasted them inside its JSON object, where they could). Positional
    on purpose: it runs twice for every replayed step, and keywords cost a dict.

    The one definition of a version-3 event hash: the writer calls it with the bytes it stores,
    :func:`event_hash` with an :class:`Event` read back.
    """
    head = orjson.dumps(
        [
            address,
            boundary,
            chain_seq,
            duration_ns,
            key,
            kind,
            parent_seq,
            payload,
            prev,
            run_id,
            seq,
            started_at,
        ]
    )
    err = b"-" if error is None else b"%d:%s" % (len(error), error)
    return _sha256(b"%s%s\n%s\n%d:%s" % (_LINK_TAG, head, err, len(meta), meta)).hexdigest()


def event_payload(ev: Event, input: bytes | None = None, output: bytes | None = None) -> str:
    """:func:`payload_digest` of ``ev``'s input and output as stored now (``input`` and
    ``output``: those bytes, when the caller holds them already); a stored event remembers it
    while its fields hold the same bytes (a replay's served step reuses the digest its source's
    verification computed)."""
    if input is None or output is None:
        input, output, _, _ = ev.stored_fields()
    if type(ev) is not StoredEvent:
        return payload_digest(input, output)
    known = ev.remembered_payload()
    if known is None:
        known = payload_digest(input, output)
        ev.note_payload(input, output, known)
    return known


def event_hash(prev: str, ev: Event, hash_version: int = HASH_VERSION) -> str:
    """The hash of ``ev`` after ``prev`` in the given version, computed from its fields as they
    are now (what verification and rechaining compare and store)."""
    if hash_version < 3:
        return chain_hash(prev, event_content(ev, hash_version))
    inp, out, error, meta = ev.stored_fields()
    return link_hash(
        prev,
        ev.run_id,
        ev.seq,
        ev.chain_seq,
        ev.address,
        ev.parent_seq,
        ev.boundary,
        ev.kind,
        ev.key,
        ev.started_at,
        ev.duration_ns,
        event_payload(ev, inp, out),
        error,
        meta,
    )


def event_content(ev: Event, hash_version: int = 2) -> bytes:
    """The canonical bytes a version-1 or version-2 event hash covers (see
    :func:`content_bytes`; version 3 hashes in two steps, see :func:`event_hash`)."""
    if hash_version < 2:
        d = ev.to_dict()
        del d["hash"]
        return orjson.dumps(d, option=_SORTED)
    inp, out, error, meta = ev.stored_fields()
    return content_bytes(
        run_id=ev.run_id,
        seq=ev.seq,
        chain_seq=ev.chain_seq,
        address=ev.address,
        parent_seq=ev.parent_seq,
        boundary=ev.boundary,
        kind=ev.kind,
        key=ev.key,
        started_at=ev.started_at,
        duration_ns=ev.duration_ns,
        input=inp,
        output=out,
        error=error,
        meta=meta,
    )


def chain_hash(prev: str, content: bytes) -> str:
    """Next link of the chain: SHA-256 over the previous hash and this event's content."""
    return hashlib.sha256(prev.encode("ascii") + content).hexdigest()


SIGNING_KEY_ENV = "REPLAYABLE_SIGNING_KEY"
_SIGNATURE_PREFIX = "hmac-sha256:"


def signing_key() -> bytes | None:
    """The HMAC key from ``$REPLAYABLE_SIGNING_KEY``, or None when it is unset or empty."""
    value = os.environ.get(SIGNING_KEY_ENV)
    return value.encode() if value else None


def _finished(status: str) -> bool:
    return status not in ("running", "incomplete")


def head_signature(
    run_id: str, head_hash: str, event_count: int, key: bytes, *, state: str | None = None
) -> str:
    """HMAC-SHA256 over a run's id, head hash and event count (and, version 2, its state:
    ``running`` for a checkpoint, ``finished`` for a sealed head).

    >>> head_signature("r1", "ab" * 32, 3, b"secret")[:12]
    'hmac-sha256:'
    """
    if state is None:
        message = f"replayable-head-v1\n{run_id}\n{head_hash}\n{event_count}"
    else:
        message = f"replayable-run-v2\n{run_id}\n{state}\n{head_hash}\n{event_count}"
    return _SIGNATURE_PREFIX + hmac.new(key, message.encode(), hashlib.sha256).hexdigest()


def _expected_signature(run: Run, key: bytes) -> str | None:
    if run.head_hash is None:
        return None
    if run.hash_version < 2:
        return head_signature(run.id, run.head_hash, run.event_count, key)
    state = "finished" if _finished(run.status) else "running"
    return head_signature(run.id, run.head_hash, run.event_count, key, state=state)


def sign_run(run: Run, key: bytes | None = None) -> None:
    """Sign a run's head in place, with ``key`` or ``$REPLAYABLE_SIGNING_KEY`` if set.

    Without a key the run stays unsigned.
    """
    key = key if key is not None else signing_key()
    if key:
        run.signature = _expected_signature(run, key)


def checkpoint(run_id: str, chain_head: str, event_count: int, key: bytes) -> str:
    """The signature of a running run's checkpoint (written with every batch under a key)."""
    return head_signature(run_id, chain_head, event_count, key, state="running")


def seal_run(run: Run, chain_head: str, event_count: int, key: bytes | None = None) -> None:
    """Set a finished run's event count, sealed head hash and (with a key) signature; for a
    run not finished, its checkpoint (the chain head)."""
    run.event_count = event_count
    if run.hash_version < 2:
        run.head_hash = chain_head or None
    elif _finished(run.status):
        run.head_hash = seal_hash(run, chain_head, event_count)
    else:  # still running (or died): the head is a checkpoint of the chain
        run.head_hash = chain_head
    run.signature = None
    sign_run(run, key)


def chain_events(run: Run, events: Iterable[Event], key: bytes | None = None) -> list[Event]:
    """Give ``events`` (in write order) their chain positions and hashes, then seal ``run``.

    For code that builds a run outside the recorder (e.g. a fuzz outcome written as a trace).
    """
    run.hash_version = HASH_VERSION
    prev = genesis_hash(run)
    out: list[Event] = []
    for i, ev in enumerate(events):
        ev.run_id, ev.chain_seq = run.id, i
        ev.hash = event_hash(prev, ev)
        prev = ev.hash
        out.append(ev)
    seal_run(run, prev, len(out), key)
    return out


def rechain(run: Run, events: Iterable[Event], key: bytes | None = None) -> None:
    """Recompute the hashes of ``events`` (kept in their write order) and ``run``'s head, in the
    run's own hash version: after a deliberate rewrite such as redacting a secret.

    A run that has a head (finished, or checkpointed) is sealed and signed again (``key`` or
    ``$REPLAYABLE_SIGNING_KEY``).
    """
    prev = genesis_hash(run) if run.hash_version >= 2 else ""
    ordered = sorted(events, key=lambda e: e.chain_seq)
    for ev in ordered:
        ev.hash = event_hash(prev, ev, run.hash_version)
        prev = ev.hash
    if run.head_hash is not None or (run.hash_version >= 2 and _finished(run.status)):
        seal_run(run, prev, len(ordered), key)


@dataclass(slots=True)
class Verification:
    """The outcome of :func:`verify_run`: ``ok``, and if not, what is wrong and where.

    ``bad_seq``/``bad_address`` name the first event whose hash does not check out, ``line``
    its line in a trace file (1 for the header). ``signature`` is ``valid``, ``invalid``,
    ``missing`` (a key is set but the run is unsigned), ``unchecked`` (signed, no key set) or
    ``unsigned``. ``legacy`` marks a run in the version-1 hash format, whose header (status,
    name, tags, metadata, ...) is not covered: only its events are checked. ``sealed`` is
    False for a run that never finished (``running``, ``incomplete``): its chain holds as far as
    it goes, but nothing seals its end, so events may be missing after the last one (a signed
    checkpoint, when there is one, covers what it names).
    """

    run_id: str
    event_count: int
    head_hash: str
    ok: bool = True
    problem: str | None = None
    bad_seq: int | None = None
    bad_address: str | None = None
    line: int | None = None
    signature: str = "unsigned"
    legacy: bool = False
    sealed: bool = True

    def to_dict(self) -> dict[str, Any]:
        """JSON types, as ``replayable verify --json`` prints them (without ``source``)."""
        return {
            "run_id": self.run_id,
            "ok": self.ok,
            "events": self.event_count,
            "head_hash": self.head_hash,
            "signature": self.signature,
            "legacy": self.legacy,
            "sealed": self.sealed,
            "problem": self.problem,
            "bad_seq": self.bad_seq,
            "bad_address": self.bad_address,
            "line": self.line,
        }


def verify_run(
    run: Run,
    events: Iterable[Event],
    *,
    key: bytes | None = None,
    lines: dict[int, int] | None = None,
) -> Verification:
    """Recompute a run's hash chain in write order, check its head hash and its signature.

    ``key`` defaults to ``$REPLAYABLE_SIGNING_KEY`` (``b""``: check no signature); ``lines``
    maps event seq to trace-file line so problems can name the line. ``events`` may come in any
    order; in write order (or nearly: start order) they are streamed, not held.

    >>> import replayable as rp
    >>> lookup = rp.boundary(kind="tool")(lambda name: {"name": name, "id": 7})
    >>> with rp.record() as run:
    ...     lookup("Bob")["id"]
    7
    >>> result = verify_run(run, run.events())
    >>> result.ok, result.problem
    (True, None)
    """
    pairs = ((ev, None if lines is None else lines.get(ev.seq)) for ev in events)
    return verify_pairs(run, pairs, key=key, in_file=lines is not None)


def _check_header(
    run: Run, result: Verification, prev: str, position: int, hashes_at: dict[int, str]
) -> str | None:
    """What is wrong with the run's header against the chain of its ``position`` events
    ending at ``prev`` (its seal, checkpoint or version-1 head), or None."""
    v2 = run.hash_version >= 2
    if v2 and _finished(run.status):
        expected = seal_hash(run, prev, position)
        if run.head_hash is None:
            return f"run {run.id} is finished ({run.status}) but has no head hash"
        if run.head_hash != expected or run.event_count != position:
            return (
                f"run {run.id}: head hash or event count ({run.event_count}) does not match the "
                f"header and the {position} events (header edited, events removed or added)"
            )
        result.head_hash = run.head_hash
    elif v2 and run.head_hash is not None:
        # A running run with a signed checkpoint: the events it covers must all be there.
        at = run.event_count - 1
        checked = hashes_at.get(at) if at >= 0 else genesis_hash(run)
        if position < run.event_count or checked != run.head_hash:
            return (
                f"run {run.id} ({run.status}): its checkpoint covers {run.event_count} events, "
                f"{position} are there or they differ (events removed or edited)"
            )
    elif not v2:
        if run.head_hash is None:
            if _finished(run.status):
                return f"run {run.id} is finished ({run.status}) but has no head hash"
        elif run.head_hash != prev or run.event_count != position:
            return (
                f"run {run.id}: head hash or event count ({run.event_count}) does not match the "
                f"{position} events (events removed, added, or the head edited)"
            )
    return None


def _check_signature(run: Run, result: Verification, key: bytes | None) -> str | None:
    """Check the run's signature with ``key`` (noting the outcome on ``result``): what is
    wrong, or None."""
    if run.signature is not None:
        expected_sig = None if key is None else _expected_signature(run, key)
        if key is None:
            result.signature = "unchecked"
        elif expected_sig is not None and hmac.compare_digest(run.signature, expected_sig):
            result.signature = "valid"
        else:
            result.signature = "invalid"
            return f"run {run.id}: signature does not match (wrong key or tampered)"
    elif key is not None:  # any version: a run set back to version 1 and unsigned is no pass
        result.signature = "missing"
        return f"run {run.id} is not signed but ${SIGNING_KEY_ENV} is set"
    return None


def _served_note(ev: Event) -> str:
    """Why a replay's served step read back changed, when the store's reading said so."""
    if ev.has_meta("unresolved_ref"):
        ref = ev.meta["unresolved_ref"]
        source = ref[0] if isinstance(ref, list) and ref else ref
        return (
            f"; it refers to events of run {source!r} that are gone (or the reference was edited)"
        )
    if ev.has_meta("source_changed"):
        run_id, seq = ev.meta["source_changed"]
        return (
            f"; it serves run {run_id}'s event seq={seq}, which changed since (edited and "
            "re-chained, or another run put in its place)"
        )
    if ev.has_meta("range_edited"):
        return "; the range row it is stored in was edited"
    return ""


def _failed(
    result: Verification, in_file: bool, ev: Event | None, line: int | None, problem: str
) -> Verification:
    """``result`` marked failed with ``problem``, at ``ev`` (its line in the file) or, for the
    header, at line 1 of a file."""
    result.ok = False
    result.problem = problem
    if ev is not None:
        result.bad_seq, result.bad_address, result.line = ev.seq, ev.address, line
    elif in_file:
        result.line = 1
    return result


def verify_pairs(
    run: Run,
    pairs: Iterable[tuple[Event, int | None]],
    *,
    key: bytes | None,
    in_file: bool,
) -> Verification:
    key = (key if key is not None else signing_key()) or None
    v2 = run.hash_version >= 2
    result = Verification(
        run_id=run.id, event_count=0, head_hash="", legacy=not v2, sealed=_finished(run.status)
    )

    bad = functools.partial(_failed, result, in_file)
    if not 1 <= run.hash_version <= HASH_VERSION:
        return bad(
            None,
            None,
            f"run {run.id} says hash version {run.hash_version}; this replayable "
            f"({__version__}) knows versions 1 to {HASH_VERSION}: verify it with the version "
            "that recorded it (or its header was edited)",
        )
    prev = genesis_hash(run) if v2 else ""
    position = 0
    # Events arrive in start order and are chained in write order (a parent after its
    # children): hold only those whose turn has not come yet.
    waiting: dict[int, tuple[Event, int | None]] = {}
    hashes_at: dict[int, str] = {}
    checkpoint_at = (
        run.event_count - 1 if (v2 and run.head_hash and not _finished(run.status)) else None
    )

    run_id, hash_version = run.id, run.hash_version

    def take(ev: Event, line: int | None) -> Verification | None:
        nonlocal prev, position
        if ev.run_id != run_id:
            where = f"run {run_id}: event seq={ev.seq} ({ev.address})"
            return bad(ev, line, f"{where} belongs to run {ev.run_id}, not {run_id}")
        if event_hash(prev, ev, hash_version) != ev.hash:
            where = f"run {run_id}: event seq={ev.seq} ({ev.address})"
            return bad(
                ev,
                line,
                f"{where}: hash does not match its content (edited) or its predecessor"
                + _served_note(ev),
            )
        prev = ev.hash
        if position == checkpoint_at:
            hashes_at[position] = prev
        position += 1
        return None

    last: tuple[Event, int | None] | None = None
    for ev, line in pairs:
        last = (ev, line)
        if ev.chain_seq < position or ev.chain_seq in waiting:
            where = f"run {run.id}: event seq={ev.seq} ({ev.address})"
            return bad(ev, line, f"{where}: write position {ev.chain_seq} is duplicated")
        if ev.chain_seq != position:
            waiting[ev.chain_seq] = (ev, line)
            continue
        if (problem := take(ev, line)) is not None:
            return problem
        while position in waiting:
            if (problem := take(*waiting.pop(position))) is not None:
                return problem
    if waiting:
        ev, line = waiting[min(waiting)]
        return bad(
            ev,
            line,
            f"run {run.id}: event seq={ev.seq} ({ev.address}): write position {ev.chain_seq}, "
            f"expected {position} (an event is missing)",
        )
    del last
    result.event_count = position
    result.head_hash = prev
    wrong = _check_header(run, result, prev, position, hashes_at) or _check_signature(
        run, result, key
    )
    if wrong is not None:
        return bad(None, None, wrong)
    return result


def check_recording(run: Run, events: Iterable[Event], *, trust: bool = False) -> Verification:
    """What replay checks before it serves a recording.

    With ``$REPLAYABLE_SIGNING_KEY`` set, a recording that does not verify (signature invalid
    or missing, chain or header edited) raises :class:`TraceCorrupt` unless ``trust=True``.
    Otherwise the result says whether the chain holds, for the caller to warn.
    """
    key = signing_key()
    result = verify_run(run, events, key=b"" if trust or key is None else key)
    if key is not None and not trust and not result.ok:
        raise TraceCorrupt(
            f"run {run.id} does not verify against ${SIGNING_KEY_ENV} ({result.problem}); "
            "refusing to replay it. Pass trust=True (--trust) to replay it anyway"
        )
    return result


def verify_events(events: Iterable[Event]) -> tuple[str, list[str]]:
    """Recompute a version-1 style chain (from ""). Returns (head hash, problems)."""
    evs = list(events)
    run = Run(id=evs[0].run_id if evs else "", hash_version=1)
    result = verify_run(run, evs, key=b"")
    return result.head_hash, [] if result.ok else [str(result.problem)]
