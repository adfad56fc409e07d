"""The data model of a recording (runs and events), its hash chain, and trace files.

A trace file is one run as JSONL: a header line (format, version, run with its environment), then
one event a line in ``seq`` (start) order, keys sorted so files diff well in git.
Each event's ``hash`` chains over the previous event *in write order* (``chain_seq``):
``sha256(prev_hash + canonical content)``, so any edit breaks the chain from that event on.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import tempfile
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from replayable.errors import TraceCorrupt

if TYPE_CHECKING:
    from replayable.store.base import Store

__all__ = [
    "SIGNING_KEY_ENV",
    "TRACE_FORMAT",
    "TRACE_VERSION",
    "Event",
    "Run",
    "Verification",
    "chain_hash",
    "check_trace",
    "event_content",
    "head_signature",
    "parse_trace",
    "read_trace",
    "sign_run",
    "signing_key",
    "trace_lines",
    "verify_events",
    "verify_run",
    "write_trace",
]

TRACE_FORMAT = "replayable-trace"
TRACE_VERSION = 1

_SORTED = orjson.OPT_SORT_KEYS


@dataclass(slots=True)
class Event:
    """One completed boundary call."""

    run_id: str
    seq: int
    address: str
    parent_seq: int | None
    boundary: str
    kind: str
    key: str
    input: Any
    output: Any = None
    error: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0
    duration_ns: int = 0
    chain_seq: int = 0
    hash: str = ""

    @property
    def name(self) -> str:
        """Alias of ``boundary``."""
        return self.boundary

    def to_dict(self) -> dict[str, Any]:
        """All fields, JSON types."""
        return {
            "address": self.address,
            "boundary": self.boundary,
            "chain_seq": self.chain_seq,
            "duration_ns": self.duration_ns,
            "error": self.error,
            "hash": self.hash,
            "input": self.input,
            "key": self.key,
            "kind": self.kind,
            "meta": self.meta,
            "output": self.output,
            "parent_seq": self.parent_seq,
            "run_id": self.run_id,
            "seq": self.seq,
            "started_at": self.started_at,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Event:
        """Inverse of :meth:`to_dict`."""
        return cls(
            run_id=d["run_id"],
            seq=int(d["seq"]),
            address=d["address"],
            parent_seq=d.get("parent_seq"),
            boundary=d["boundary"],
            kind=d["kind"],
            key=d.get("key", ""),
            input=d.get("input"),
            output=d.get("output"),
            error=d.get("error"),
            meta=d.get("meta") or {},
            started_at=float(d.get("started_at", 0.0)),
            duration_ns=int(d.get("duration_ns", 0)),
            chain_seq=int(d.get("chain_seq", 0)),
            hash=d.get("hash", ""),
        )


@dataclass(slots=True)
class Run:
    """A recorded run: its identity, environment and outcome.

    ``status`` is ``running`` while recording, then ``ok`` or ``error``; a run whose process died
    before it finished shows ``incomplete`` when read back.
    """

    id: str
    name: str | None = None
    tags: dict[str, str] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)
    environment: dict[str, Any] = field(default_factory=dict)
    started_at: float = 0.0
    ended_at: float | None = None
    status: str = "running"
    error: dict[str, Any] | None = None
    parent_run: str | None = None
    head_hash: str | None = None
    event_count: int = 0
    signature: str | None = None
    store: Store | None = field(default=None, repr=False, compare=False)

    @property
    def duration_s(self) -> float | None:
        """Wall time of the run in seconds, once it has ended."""
        return None if self.ended_at is None else self.ended_at - self.started_at

    def events(self) -> Iterator[Event]:
        """The run's events in start order, read from its store."""
        if self.store is None:
            raise TraceCorrupt(f"run {self.id} is not attached to a store")
        return self.store.iter_events(self.id)

    def to_dict(self) -> dict[str, Any]:
        """All fields but the store, JSON types."""
        return {
            "id": self.id,
            "name": self.name,
            "tags": self.tags,
            "metadata": self.metadata,
            "environment": self.environment,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "status": self.status,
            "error": self.error,
            "parent_run": self.parent_run,
            "head_hash": self.head_hash,
            "event_count": self.event_count,
            "signature": self.signature,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Run:
        """Inverse of :meth:`to_dict`."""
        return cls(
            id=d["id"],
            name=d.get("name"),
            tags=dict(d.get("tags") or {}),
            metadata=dict(d.get("metadata") or {}),
            environment=dict(d.get("environment") or {}),
            started_at=float(d.get("started_at") or 0.0),
            ended_at=d.get("ended_at"),
            status=d.get("status", "ok"),
            error=d.get("error"),
            parent_run=d.get("parent_run"),
            head_hash=d.get("head_hash"),
            event_count=int(d.get("event_count") or 0),
            signature=d.get("signature"),
        )


def event_content(ev: Event) -> bytes:
    """The canonical bytes an event's hash covers: every field but ``hash``, keys sorted."""
    d = ev.to_dict()
    del d["hash"]
    return orjson.dumps(d, option=_SORTED)


def chain_hash(prev: str, content: bytes) -> str:
    """Next link of the chain: SHA-256 over the previous hash and this event's content."""
    return hashlib.sha256(prev.encode("ascii") + content).hexdigest()


SIGNING_KEY_ENV = "REPLAYABLE_SIGNING_KEY"
_SIGNATURE_PREFIX = "hmac-sha256:"


def signing_key() -> bytes | None:
    """The HMAC key from ``$REPLAYABLE_SIGNING_KEY``, or None when it is unset or empty."""
    value = os.environ.get(SIGNING_KEY_ENV)
    return value.encode() if value else None


def head_signature(run_id: str, head_hash: str, event_count: int, key: bytes) -> str:
    """HMAC-SHA256 over a run's id, head hash and event count.

    >>> head_signature("r1", "ab" * 32, 3, b"secret")[:12]
    'hmac-sha256:'
    """
    message = f"replayable-head-v1\n{run_id}\n{head_hash}\n{event_count}".encode()
    return _SIGNATURE_PREFIX + hmac.new(key, message, hashlib.sha256).hexdigest()


def sign_run(run: Run, key: bytes | None = None) -> None:
    """Sign a finished run's head in place, with ``key`` or ``$REPLAYABLE_SIGNING_KEY`` if set.

    Stores call this when they record a run's outcome; without a key the run stays unsigned.
    """
    key = key if key is not None else signing_key()
    if key and run.head_hash is not None:
        run.signature = head_signature(run.id, run.head_hash, run.event_count, key)


@dataclass(slots=True)
class Verification:
    """The outcome of :func:`verify_run`: ``ok``, and if not, what is wrong and where.

    ``bad_seq``/``bad_address`` name the first event whose hash does not check out, ``line``
    its line in a trace file (1 for the header). ``signature`` is ``valid``, ``invalid``,
    ``missing`` (a key is set but the run is unsigned), ``unchecked`` (signed, no key set) or
    ``unsigned``.
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


def verify_run(
    run: Run,
    events: Iterable[Event],
    *,
    key: bytes | None = None,
    lines: dict[int, int] | None = None,
) -> Verification:
    """Recompute a run's hash chain in write order, check its head hash and its signature.

    ``key`` defaults to ``$REPLAYABLE_SIGNING_KEY`` (``b""``: check no signature); ``lines``
    maps event seq to trace-file line so problems can name the line.

    >>> result = verify_run(run, run.events())
    >>> result.ok, result.problem
    (True, None)
    """
    key = (key if key is not None else signing_key()) or None
    ordered = sorted(events, key=lambda e: e.chain_seq)
    prev = ""
    result = Verification(run_id=run.id, event_count=len(ordered), head_hash="")

    def bad(ev: Event | None, problem: str) -> Verification:
        result.ok = False
        result.problem = problem
        if ev is not None:
            result.bad_seq, result.bad_address = ev.seq, ev.address
            result.line = None if lines is None else lines.get(ev.seq)
        elif lines is not None:
            result.line = 1
        return result

    for i, ev in enumerate(ordered):
        where = f"run {run.id}: event seq={ev.seq} ({ev.address})"
        if ev.run_id != run.id:
            return bad(ev, f"{where} belongs to run {ev.run_id}, not {run.id}")
        if ev.chain_seq != i:
            what = "missing" if ev.chain_seq > i else "duplicated"
            return bad(
                ev, f"{where}: write position {ev.chain_seq}, expected {i} (an event is {what})"
            )
        if chain_hash(prev, event_content(ev)) != ev.hash:
            return bad(ev, f"{where}: hash does not match its content (edited) or its predecessor")
        prev = ev.hash
    result.head_hash = prev
    if run.head_hash is None:
        if run.status in ("ok", "error"):
            return bad(None, f"run {run.id} is finished ({run.status}) but has no head hash")
    elif run.head_hash != prev or run.event_count != len(ordered):
        return bad(
            None,
            f"run {run.id}: head hash or event count ({run.event_count}) does not match the "
            f"{len(ordered)} events (events removed, added, or the head edited)",
        )
    if run.signature is not None:
        if key is None:
            result.signature = "unchecked"
        elif run.head_hash is not None and hmac.compare_digest(
            run.signature, head_signature(run.id, run.head_hash, run.event_count, key)
        ):
            result.signature = "valid"
        else:
            result.signature = "invalid"
            return bad(None, f"run {run.id}: signature does not match (wrong key or tampered)")
    elif key is not None and run.head_hash is not None:
        result.signature = "missing"
        return bad(None, f"run {run.id} is not signed but ${SIGNING_KEY_ENV} is set")
    return result


def verify_events(events: Iterable[Event]) -> tuple[str, list[str]]:
    """Recompute the chain in write order. Returns (head hash, problems); empty list = intact."""
    evs = list(events)
    run = Run(id=evs[0].run_id if evs else "")
    result = verify_run(run, evs, key=b"")
    return result.head_hash, [] if result.ok else [str(result.problem)]


def check_trace(path: str | os.PathLike[str]) -> tuple[Run, list[Event]]:
    """Read a trace file and verify its chain; raises :class:`TraceCorrupt` naming the line.

    >>> run, events = check_trace("incident.jsonl")
    """
    run, events = read_trace(path)
    lines = {ev.seq: i for i, ev in enumerate(events, start=2)}
    result = verify_run(run, events, lines=lines)
    if not result.ok:
        raise TraceCorrupt(
            f"{path}: line {result.line}: {result.problem}", line=result.line, seq=result.bad_seq
        )
    return run, events


def trace_lines(run: Run, events: Iterable[Event]) -> Iterator[bytes]:
    """The lines of a trace file (each ending in a newline): the header, then events by seq."""
    header = {"format": TRACE_FORMAT, "version": TRACE_VERSION, "run": run.to_dict()}
    yield orjson.dumps(header, option=_SORTED) + b"\n"
    for ev in sorted(events, key=lambda e: e.seq):
        # Fields in sorted order (to_dict gives them so); values keep their recorded order.
        yield orjson.dumps(ev.to_dict()) + b"\n"


def write_trace(run: Run, events: Iterable[Event], path: str | os.PathLike[str]) -> Path:
    """Write one run as a JSONL trace file, atomically (temp file + rename).

    >>> write_trace(run, run.events(), "traces/incident.jsonl")
    """
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.writelines(trace_lines(run, events))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return target


def read_trace(path: str | os.PathLike[str]) -> tuple[Run, list[Event]]:
    """Read a JSONL trace file; raises :class:`TraceCorrupt` naming the bad line."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise TraceCorrupt(f"no such trace file: {p}") from None
    except OSError as exc:
        raise TraceCorrupt(f"cannot read trace file {p}: {exc.strerror or exc}") from None
    return parse_trace(data, p)


def parse_trace(data: bytes, p: str | os.PathLike[str] = "trace") -> tuple[Run, list[Event]]:
    """A trace file's bytes as a run and its events (``p`` names it in errors); raises
    :class:`TraceCorrupt` naming the bad line."""
    lines = data.split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    elif lines:
        raise TraceCorrupt(f"{p}: line {len(lines)} is truncated (no newline)", line=len(lines))
    if not lines:
        raise TraceCorrupt(f"{p}: empty trace file", line=1)
    try:
        header = orjson.loads(lines[0])
    except orjson.JSONDecodeError:
        raise TraceCorrupt(f"{p}: line 1 (header) is not valid JSON", line=1) from None
    if not isinstance(header, dict) or header.get("format") != TRACE_FORMAT:
        raise TraceCorrupt(f"{p}: not a replayable trace file (bad header)", line=1)
    version = header.get("version")
    if version != TRACE_VERSION:
        raise TraceCorrupt(
            f"{p}: trace format version {version} is not supported (this replayable reads "
            f"version {TRACE_VERSION}); upgrade replayable or re-export the run",
            line=1,
        )
    run = Run.from_dict(header["run"])
    events: list[Event] = []
    for lineno, raw in enumerate(lines[1:], start=2):
        try:
            events.append(Event.from_dict(orjson.loads(raw)))
        except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
            raise TraceCorrupt(f"{p}: line {lineno} is not a valid event", line=lineno) from None
    return run, events
