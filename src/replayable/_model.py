"""The data model of a recording: runs (:class:`Run`) and their events (:class:`Event`, and
:class:`StoredEvent`, an event read from a store whose JSON fields stay stored bytes until read).

Public through :mod:`replayable.trace`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Generic, Literal, TypeVar, cast, get_args, overload

import orjson

from replayable._propagation import Link
from replayable.errors import TraceCorrupt

if TYPE_CHECKING:
    from replayable.store.base import Store

__all__ = ["RUN_STATUSES", "Event", "Run", "RunStatus", "StoredEvent"]

RunStatus = Literal["running", "ok", "error", "diverged", "incomplete"]
"""A run's status: ``running`` while recording, then ``ok`` or ``error`` (``diverged``: a replay
that found divergences); ``incomplete`` when read back after its recording process died."""

RUN_STATUSES: tuple[RunStatus, ...] = get_args(RunStatus)


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

    def stored(self, name: str) -> bytes:
        """The JSON bytes of field ``name`` (``input``, ``output``, ``error``, ``meta``) as a
        store holds them: what the event's hash covers."""
        return _json_bytes(getattr(self, name))

    def stored_fields(self) -> tuple[bytes, bytes, bytes | None, bytes]:
        """The stored JSON bytes of ``input``, ``output``, ``error`` (None when there is no
        error) and ``meta`` at once: what the event's hash covers besides its plain fields."""
        error = self.error
        return (
            _json_bytes(self.input),
            _json_bytes(self.output),
            None if error is None else _json_bytes(error),
            _json_bytes(self.meta),
        )

    def has_meta(self, name: str) -> bool:
        """Whether ``name`` is a key of :attr:`meta`."""
        return name in self.meta

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
    def from_dict(cls, d: Any) -> Event:
        """Inverse of :meth:`to_dict`; a missing or mistyped field raises KeyError/TypeError."""
        if not isinstance(d, dict):
            raise TypeError(f"an event is a JSON object, not {type(d).__name__}")
        return cls(
            run_id=_field(d, "run_id", str),
            seq=_field(d, "seq", int),
            address=_field(d, "address", str),
            parent_seq=_field(d, "parent_seq", int, None),
            boundary=_field(d, "boundary", str),
            kind=_field(d, "kind", str),
            key=_field(d, "key", str, ""),
            input=d.get("input"),
            output=d.get("output"),
            error=_field(d, "error", dict, None),
            meta=_field(d, "meta", dict, {}),
            started_at=float(_field(d, "started_at", float, 0.0)),
            duration_ns=_field(d, "duration_ns", int, 0),
            chain_seq=_field(d, "chain_seq", int, 0),
            hash=_field(d, "hash", str, ""),
        )


def _json_bytes(value: Any) -> bytes:
    """A parsed stored value back to its stored bytes (orjson output round-trips exactly)."""
    return orjson.dumps(value)


_NEEDLES: dict[str, bytes] = {}
"""A meta key as it appears in stored JSON (``"key"``), per key asked about."""


class StoredEvent(Event):
    """An :class:`Event` read from a store, its JSON fields (``input``, ``output``, ``error``,
    ``meta``) kept as the stored bytes until first read.

    Most of a replay's work never needs them decoded: the fast match compares the input bytes,
    the hash chain covers the bytes as stored, and a served output is decoded once, for the agent.
    Reading a field decodes it (and from then on the decoded value is the field: changing it in
    place changes the event, as for any :class:`Event`); :meth:`stored` gives the stored bytes
    while they are still the field's value.
    """

    __slots__ = ("_payload", "_raw_error", "_raw_input", "_raw_meta", "_raw_output")

    _raw_input: bytes | None
    _raw_output: bytes | None
    _raw_error: bytes | None
    _raw_meta: bytes | None
    _payload: tuple[bytes, bytes, str] | None

    @classmethod
    def from_stored(
        cls,
        run_id: str,
        seq: int,
        chain_seq: int,
        address: str,
        parent_seq: int | None,
        boundary: str,
        kind: str,
        key: str,
        input: bytes | None,
        output: bytes | None,
        error: bytes | None,
        meta: bytes | None,
        started_at: float,
        duration_ns: int,
        hash: str,
    ) -> StoredEvent:
        """An event from its stored columns; JSON fields as bytes (``None``: SQL NULL)."""
        ev = cls.__new__(cls)  # no __init__: the JSON fields are set as bytes below
        ev.run_id = run_id
        ev.seq = seq
        ev.chain_seq = chain_seq
        ev.address = address
        ev.parent_seq = parent_seq
        ev.boundary = boundary
        ev.kind = kind
        ev.key = key
        ev.started_at = started_at
        ev.duration_ns = duration_ns
        ev.hash = hash
        # SQL NULL reads as the field's empty value, as :func:`~replayable.store.base.row_to_event`
        # always did: null for input/output/error, {} for meta.
        ev._raw_input = b"null" if input is None else input
        ev._raw_output = b"null" if output is None else output
        if error is None or error == b"null":
            _SET_ERROR(ev, None)
            ev._raw_error = None
        else:
            ev._raw_error = error
        ev._raw_meta = b"{}" if meta is None or meta == b"null" else meta
        ev._payload = None
        return ev

    def remembered_payload(self) -> str | None:
        """The digest of the input and output bytes (hash version 3) noted by
        :meth:`note_payload`, while the fields still hold those very bytes (so a field set or
        read since forgets it)."""
        try:
            memo = self._payload
        except AttributeError:  # built by __init__ (dataclasses.replace): nothing noted
            return None
        if memo is not None and memo[0] is self._raw_input and memo[1] is self._raw_output:
            return memo[2]
        return None

    def note_payload(self, input: bytes, output: bytes, digest: str) -> None:
        """Remember ``digest``, computed from ``input`` and ``output`` (the stored bytes, as
        :meth:`stored_fields` gave them), for :meth:`remembered_payload`."""
        self._payload = (input, output, digest)

    def stored(self, name: str) -> bytes:
        """The JSON bytes of field ``name``: as stored while the field was never read, else its
        value serialized again."""
        raw: bytes | None = _RAW[name].__get__(self)
        return raw if raw is not None else orjson.dumps(getattr(self, name))

    def stored_fields(self) -> tuple[bytes, bytes, bytes | None, bytes]:
        """As :meth:`Event.stored_fields`, from the stored bytes while a field was never read
        (one call where the chain is verified or extended, not four)."""
        i, o, e, m = self._raw_input, self._raw_output, self._raw_error, self._raw_meta
        if e is None and _GET_ERROR(self) is not None:  # read (decoded) already
            e = orjson.dumps(_GET_ERROR(self))
        return (
            i if i is not None else orjson.dumps(self.input),
            o if o is not None else orjson.dumps(self.output),
            e,
            m if m is not None else orjson.dumps(self.meta),
        )

    def has_meta(self, name: str) -> bool:
        """``name in self.meta``, answered from the stored bytes when they cannot hold it."""
        raw = self._raw_meta
        if raw == b"{}":
            return False
        if raw is not None:
            needle = _NEEDLES.get(name) or _NEEDLES.setdefault(name, f'"{name}"'.encode())
            if needle not in raw and b"\\u" not in raw:
                return False
        return name in self.meta

    def set_stored(self, name: str, raw: bytes) -> None:
        """Set field ``name`` to the value whose stored JSON bytes are ``raw`` (copied when it
        is not ``bytes``: a later change to a ``bytearray`` must not change the field)."""
        setattr(self, name, None)
        setattr(self, "_raw_" + name, bytes(raw))

    def decoded(self, name: str) -> Any:
        """A fresh decode of field ``name`` from the stored bytes (a value no one else holds),
        leaving the stored bytes in place; the field itself when it was read already."""
        raw: bytes | None = _RAW[name].__get__(self)
        return orjson.loads(raw) if raw is not None else getattr(self, name)

    def __eq__(self, other: object) -> bool:
        if isinstance(other, Event):
            return self.to_dict() == other.to_dict()
        return NotImplemented

    __hash__ = None  # type: ignore[assignment]  # mutable, like Event

    def __reduce__(self) -> tuple[Any, ...]:
        return (Event.from_dict, (self.to_dict(),))


def _lazy_field(name: str, empty: Any) -> property:
    slot = Event.__dict__[name]
    raw_slot = StoredEvent.__dict__["_raw_" + name]

    def get(self: StoredEvent) -> Any:
        raw = raw_slot.__get__(self)
        if raw is None:
            return slot.__get__(self)
        value = orjson.loads(raw)
        if value is None and empty is not None:
            value = empty()
        slot.__set__(self, value)
        raw_slot.__set__(self, None)
        return value

    def set_(self: StoredEvent, value: Any) -> None:
        slot.__set__(self, value)
        raw_slot.__set__(self, None)

    return property(get, set_, doc=f"The event's {name}, decoded on first read.")


# The error's own slot, under the lazy property: set or read without decoding anything.
_SET_ERROR = Event.__dict__["error"].__set__
_GET_ERROR = Event.__dict__["error"].__get__
_RAW: dict[str, Any] = {
    n: StoredEvent.__dict__["_raw_" + n] for n in ("input", "output", "error", "meta")
}
"""Field name -> the slot holding its stored bytes."""
StoredEvent.input = _lazy_field("input", None)
StoredEvent.output = _lazy_field("output", None)
StoredEvent.error = _lazy_field("error", None)  # type: ignore[assignment]
StoredEvent.meta = _lazy_field("meta", dict)  # type: ignore[assignment]


_REQUIRED = object()
_TYPE_NAMES = {str: "a string", int: "an integer", float: "a number", dict: "an object"}


def _field(d: dict[str, Any], name: str, kind: type, default: Any = _REQUIRED) -> Any:
    """``d[name]`` checked to be ``kind`` (int for float allowed, bool never an int); a
    missing field takes ``default`` (KeyError if required), null too when the default is
    None."""
    if name not in d or (d[name] is None and default is not _REQUIRED):
        if default is _REQUIRED:
            raise KeyError(name)
        return default
    value = d[name]
    ok = isinstance(value, kind) and not isinstance(value, bool)
    if kind is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    if not ok:
        raise TypeError(f"field {name!r} must be {_TYPE_NAMES[kind]}, not {type(value).__name__}")
    return value


_TRACE_ID = re.compile(r"[0-9a-f]{32}")


_T = TypeVar("_T")


class _Sealed(Generic[_T]):
    """A run field the writer sets when it seals the run (head hash, event count, signature):
    read while a hand-off to the writer is pending (:meth:`Run.seal_pending`), it waits for
    the writer first, so the value read is the sealed one (read your writes)."""

    def __init__(self, default: _T) -> None:
        self.default = default
        self.slot = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.slot = "_" + name

    @overload
    def __get__(self, obj: None, owner: type | None = None) -> _T: ...
    @overload
    def __get__(self, obj: Run, owner: type | None = None) -> _T: ...
    def __get__(self, obj: Run | None, owner: type | None = None) -> _T:
        if obj is None:
            return self.default  # the dataclass's default
        d = obj.__dict__
        wait = d.get("_sealing")
        if wait is not None:
            wait()
        return d[self.slot]  # type: ignore[no-any-return]

    def __set__(self, obj: Run, value: _T) -> None:
        obj.__dict__[self.slot] = value


@dataclass
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
    status: RunStatus = "running"
    error: dict[str, Any] | None = None
    parent_run: str | None = None
    head_hash: _Sealed[str | None] = _Sealed(None)
    event_count: _Sealed[int] = _Sealed(0)
    signature: _Sealed[str | None] = _Sealed(None)
    hash_version: int = 3
    """How the run is hashed: 3 digests input and output apart from the other fields, 2 covers
    the header (see :func:`genesis_hash`); 1 is older."""
    store: Store | None = field(default=None, repr=False, compare=False)

    def seal_pending(self, wait: Callable[[], object] | None) -> None:
        """Have reads of the sealed fields (``head_hash``, ``event_count``, ``signature``) call
        ``wait`` first: the recorder sets it when it hands the ended run to the writer, the
        writer clears it (None) when it seals the run."""
        self.__dict__["_sealing"] = wait

    @property
    def trace_id(self) -> str | None:
        """The run's W3C trace id (32 hex digits), kept in ``metadata["trace_id"]``: set when the
        run first propagates its context, or inherited from the request that started it."""
        value = self.metadata.get("trace_id")
        return value if isinstance(value, str) and _TRACE_ID.fullmatch(value) else None

    @property
    def parent(self) -> Link | None:
        """The step of another run (usually in another service) that started this run, kept in
        ``metadata["parent"]`` (so the run's seal covers it); ``None`` for a run of its own."""
        return Link.from_metadata(self.metadata.get("parent"))

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
            "hash_version": self.hash_version,
        }

    def _repr_html_(self) -> str | None:
        """HTML for notebooks (the viewer's fragments, every recorded value escaped); None
        without jinja2, so the notebook shows the plain repr."""
        try:
            from replayable.viewer._notebook import run_html
        except ImportError:
            return None
        return run_html(self)

    def __rich__(self) -> Any:
        """For a rich console (terminals, ``rich.print``): recorded markup and terminal
        escapes print as text."""
        from replayable._inert import Inert
        from replayable.cli._render import run_view

        return Inert(run_view(self))

    @classmethod
    def from_dict(cls, d: Any) -> Run:
        """Inverse of :meth:`to_dict`; a missing or mistyped field raises KeyError/TypeError.

        A dict without ``hash_version`` is a run recorded before version 2 (header not hashed).
        """
        if not isinstance(d, dict):
            raise TypeError(f"the run is a JSON object, not {type(d).__name__}")
        tags = _field(d, "tags", dict, {})
        if not all(isinstance(v, str) for v in tags.values()):
            raise TypeError("field 'tags' must map names to strings")
        return cls(
            id=_field(d, "id", str),
            name=_field(d, "name", str, None),
            tags=dict(tags),
            metadata=dict(_field(d, "metadata", dict, {})),
            environment=dict(_field(d, "environment", dict, {})),
            started_at=float(_field(d, "started_at", float, 0.0)),
            ended_at=_field(d, "ended_at", float, None),
            status=cast(RunStatus, _field(d, "status", str, "ok")),
            error=_field(d, "error", dict, None),
            parent_run=_field(d, "parent_run", str, None),
            head_hash=_field(d, "head_hash", str, None),
            event_count=_field(d, "event_count", int, 0),
            signature=_field(d, "signature", str, None),
            hash_version=_field(d, "hash_version", int, 1),
        )
