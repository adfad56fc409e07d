"""The data model of a recording (runs and events), its hash chain, and trace files.

A trace file is one run as JSONL: a header line (format, version, run with its environment), then
one event a line in ``seq`` (start) order, keys sorted so files diff well in git.
Each event's ``hash`` chains over the previous event *in write order* (``chain_seq``):
``sha256(prev_hash + canonical content)``, so any edit breaks the chain from that event on.
"""

from __future__ import annotations

import hashlib
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
    "TRACE_FORMAT",
    "TRACE_VERSION",
    "Event",
    "Run",
    "chain_hash",
    "event_content",
    "read_trace",
    "verify_events",
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
        )


def event_content(ev: Event) -> bytes:
    """The canonical bytes an event's hash covers: every field but ``hash``, keys sorted."""
    d = ev.to_dict()
    del d["hash"]
    return orjson.dumps(d, option=_SORTED)


def chain_hash(prev: str, content: bytes) -> str:
    """Next link of the chain: SHA-256 over the previous hash and this event's content."""
    return hashlib.sha256(prev.encode("ascii") + content).hexdigest()


def verify_events(events: Iterable[Event]) -> tuple[str, list[str]]:
    """Recompute the chain in write order. Returns (head hash, problems); empty list = intact."""
    ordered = sorted(events, key=lambda e: e.chain_seq)
    prev = ""
    problems: list[str] = []
    for i, ev in enumerate(ordered):
        if ev.chain_seq != i:
            problems.append(f"event seq={ev.seq}: write position {ev.chain_seq}, expected {i}")
            break
        expected = chain_hash(prev, event_content(ev))
        if expected != ev.hash:
            problems.append(f"event seq={ev.seq} ({ev.address}): hash mismatch, content edited")
            break
        prev = ev.hash
    return prev, problems


def write_trace(run: Run, events: Iterable[Event], path: str | os.PathLike[str]) -> Path:
    """Write one run as a JSONL trace file, atomically (temp file + rename)."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    header = {"format": TRACE_FORMAT, "version": TRACE_VERSION, "run": run.to_dict()}
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(orjson.dumps(header, option=_SORTED) + b"\n")
            for ev in sorted(events, key=lambda e: e.seq):
                fh.write(orjson.dumps(ev.to_dict(), option=_SORTED) + b"\n")
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
    except OSError as exc:
        raise TraceCorrupt(f"cannot read trace file {p}: {exc.strerror or exc}") from None
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
