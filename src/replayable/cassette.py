"""Exact-match fixture files: ``rp.cassette(path, mode=...)``.

A cassette is a JSONL file, one boundary call a line, keyed by the boundary's canonical input key
(the same key rules as a replay: ``key=`` / ``ignore=`` / transient fields, redaction first). It
loads into a dict, so a lookup costs one hash no matter how many calls the file holds.

Modes (``$REPLAYABLE_MODE`` overrides the one in code, then pytest's ``--replayable-mode``):

- ``replay``: serve recorded calls; a call with no recording raises :class:`FixtureMiss`, which
  names the nearest recorded input and the fields that differ.
- ``auto``: serve on a hit, call through and append on a miss (the default).
- ``record``: start the file afresh and record every call.
- ``off``: the cassette does nothing; boundaries call straight through.

Identical calls made several times replay in the order they were recorded; past the last
recording, ``replay`` serves the last one again and ``auto`` records a new one. Appends are
single ``O_APPEND`` writes of whole lines under an advisory lock, so pytest-xdist workers can
share one file. Boundaries of kind ``agent`` and those named in ``live`` always run.
"""

from __future__ import annotations

import asyncio
import functools
import inspect
import os
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import orjson

from replayable import canonical
from replayable._diff import diff_values
from replayable._engine import Ending, Engine, Serve
from replayable._errors_codec import encode_error
from replayable._warn import warn
from replayable.boundary import resolve_live
from replayable.context import AsyncToo, Frame, refuse_nested
from replayable.errors import FixtureMiss, ReplayableError, TraceCorrupt
from replayable.redact import redact

if TYPE_CHECKING:
    from replayable.boundary import Boundary

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: O_APPEND alone
    fcntl = None  # type: ignore[assignment]

__all__ = [
    "MODES",
    "Cassette",
    "CassetteCall",
    "cassette",
    "force_mode",
    "read_cassette",
    "resolve_mode",
    "write_cassette",
]

Mode = Literal["record", "replay", "auto", "off"]
MODES: tuple[Mode, ...] = ("record", "replay", "auto", "off")
_STREAM_META = ("stream", "closed_early", "never_started", "handled_throws")
_FORCED_MODE: str | None = None
"""Set by the pytest plugin's ``--replayable-mode``; ``$REPLAYABLE_MODE`` still wins."""

F = TypeVar("F", bound=Callable[..., Any])


def force_mode(mode: str | None) -> None:
    """Force every cassette into ``mode`` (``None`` lifts it); ``$REPLAYABLE_MODE`` still wins."""
    global _FORCED_MODE
    if mode is not None and mode not in MODES:
        raise ReplayableError(f"cassette mode must be one of {', '.join(MODES)}, not {mode!r}")
    _FORCED_MODE = mode


def resolve_mode(mode: str) -> Mode:
    """The mode in force: ``$REPLAYABLE_MODE``, else ``--replayable-mode``, else ``mode``."""
    chosen = os.environ.get("REPLAYABLE_MODE") or _FORCED_MODE or mode
    if chosen not in MODES:
        raise ReplayableError(f"cassette mode must be one of {', '.join(MODES)}, not {chosen!r}")
    return chosen


@dataclass(slots=True)
class _Entry:
    boundary: str
    key: str
    input: Any
    output: Any
    error: dict[str, Any] | None
    meta: dict[str, Any] = field(default_factory=dict)
    _raw: bytes | None = None

    def raw_input(self) -> bytes:
        if self._raw is None:
            self._raw = canonical.snapshot(self.input)
        return self._raw


@dataclass(slots=True)
class CassetteCall:
    """One call a cassette saw: its boundary, input, and whether it was served or recorded."""

    boundary: str
    data: bytes
    served: bool
    output: Any = None
    error: dict[str, Any] | None = None
    kind: str = "tool"
    _input: Any = field(default=None, repr=False)

    @property
    def input(self) -> Any:
        """The bound, redacted input as JSON types."""
        if self._input is None:
            self._input = orjson.loads(self.data)
        return self._input


_MISSED: Any = object()
"""``Frame.scratch`` of a call the cassette missed, to append when it ends."""


class Cassette(AsyncToo["Cassette"]):
    """An exact-match fixture file; a context manager (sync or async) and a decorator.

    >>> import replayable as rp
    >>> forecast = rp.boundary(kind="tool")(lambda city: f"sunny in {city}")
    >>> with rp.cassette("cassettes/weather.jsonl", mode="record"):
    ...     forecast("Paris")
    'sunny in Paris'
    >>> with rp.cassette("cassettes/weather.jsonl", mode="replay") as tape:
    ...     forecast("Paris")
    'sunny in Paris'
    >>> tape.hits, tape.misses
    (1, 0)
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        mode: Mode | str = "auto",
        *,
        live: Iterable[str] = (),
        pii: Any = None,
    ) -> None:
        resolve_mode(mode)  # fail early on a bad mode
        self.path = Path(path)
        self.pii = pii
        """Personal data pseudonymized in what the file keeps and in each lookup's input
        (a replay's own pseudonymizer, when the cassette is its fallback)."""
        self.requested_mode = mode
        self.mode = mode
        self.live = tuple(live)
        self._live_names: set[str] = set()
        self._live_calls: set[tuple[str, int]] = set()
        self._counts: dict[str, int] = {}
        self.calls: list[CassetteCall] = []
        self.hits = 0
        self.misses = 0
        self._entries: dict[tuple[str, str], list[_Entry]] = {}
        self._cursor: dict[tuple[str, str], int] = {}
        self._by_boundary: dict[str, list[_Entry]] = {}
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._engine: Engine | None = None

    # -- the file ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return sum(len(v) for v in self._entries.values())

    def load(self) -> None:
        """(Re)read the file into the lookup table."""
        self._entries.clear()
        self._cursor.clear()
        self._by_boundary.clear()
        try:
            lines = read_cassette(self.path)
        except FileNotFoundError:
            return
        for d in lines.values():
            entry = _Entry(
                d["boundary"],
                d["key"],
                d["input"],
                d.get("output"),
                d.get("error"),
                d.get("meta") or {},
            )
            self._add(entry)

    def _add(self, entry: _Entry) -> None:
        self._entries.setdefault((entry.boundary, entry.key), []).append(entry)
        self._by_boundary.setdefault(entry.boundary, []).append(entry)

    def _append(
        self, b: Boundary, key: str, data: bytes, out: Any, error: Any, meta: dict[str, Any]
    ) -> None:
        line = (
            orjson.dumps(
                {
                    "boundary": b.name,
                    "error": error,
                    "input": orjson.Fragment(data),
                    "key": key,
                    "kind": b.kind,
                    **({"meta": meta} if meta else {}),
                    "output": out,
                },  # keys in sorted order; values keep their own (what is served)
            )
            + b"\n"
        )
        entry = _Entry(b.name, key, orjson.loads(data), out, error, meta, data)
        with self._lock:
            self._add(entry)
            k = (b.name, key)
            self._cursor[k] = len(self._entries[k])
            if self._fd is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
            # One write of a whole line, under an advisory lock: xdist workers may share the file.
            if fcntl is not None:
                fcntl.flock(self._fd, fcntl.LOCK_EX)
            try:
                os.write(self._fd, line)
            finally:
                if fcntl is not None:
                    fcntl.flock(self._fd, fcntl.LOCK_UN)

    # -- activation ---------------------------------------------------------------------------

    def open(self) -> Cassette:
        """Resolve the mode and read the file without becoming the active session: what a
        replay does with its ``fallback=`` cassette (it consults :meth:`at_start` and
        :meth:`at_end` itself). :meth:`close` releases the file."""
        self.mode = resolve_mode(self.requested_mode)
        if self.mode == "record":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(b"")
            self.load()
        elif self.mode in ("replay", "auto"):
            self.load()
        self._live_names, self._live_calls = resolve_live(self.live, set(self._by_boundary))
        self._counts.clear()
        return self

    def close(self) -> None:
        """Close the file opened for appending, if any."""
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self) -> Cassette:
        refuse_nested()
        self.open()
        if self.mode != "off":
            self._engine = Engine(self, unserializable="raise")
            self._engine.enter()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        engine, self._engine = self._engine, None
        try:
            if engine is not None:
                engine.leave()
        finally:
            self.close()

    def __call__(self, fn: F) -> F:
        """Use the cassette as a decorator: each call of ``fn`` runs inside a fresh activation."""
        if inspect.iscoroutinefunction(fn):

            @functools.wraps(fn)
            async def awrapper(*args: Any, **kwargs: Any) -> Any:
                async with self._copy():
                    return await fn(*args, **kwargs)

            return awrapper  # type: ignore[return-value]

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            with self._copy():
                return fn(*args, **kwargs)

        return wrapper  # type: ignore[return-value]

    def _copy(self) -> Cassette:
        return Cassette(self.path, self.requested_mode, live=self.live, pii=self.pii)

    # -- lookup -------------------------------------------------------------------------------

    serves_recordings = False

    def function(self, frame: Frame) -> Callable[..., Any]:
        """The boundary's own function."""
        b = frame.b
        assert b is not None
        return b.fn

    def at_start(self, frame: Frame) -> Serve | None:
        """Serve a recorded call, or run it live (agents, ``live=``, a miss in ``auto``/``record``
        mode); a miss in ``replay`` mode raises :class:`FixtureMiss`."""
        b = frame.b
        assert b is not None
        with self._lock:
            nth = self._counts[b.name] = self._counts.get(b.name, 0) + 1
        if b.kind == "agent" or b.name in self._live_names or (b.name, nth) in self._live_calls:
            return None
        data, value, key = canonical.keyed_input(b, frame.data, self.pii)
        frame.data, frame.key = data, key
        k = (b.name, key)
        with self._lock:
            entries = self._entries.get(k) if self.mode != "record" else None
            if entries:
                i = self._cursor.get(k, 0)
                if i < len(entries) or self.mode == "replay":
                    entry = entries[min(i, len(entries) - 1)]
                    self._cursor[k] = i + 1
                    self.hits += 1
                    self._check_unkeyed(b, entry, data, value)
                    self.calls.append(
                        CassetteCall(b.name, data, True, entry.output, entry.error, b.kind)
                    )
                    output = entry.output
                    if entry.meta.get(canonical.TAGGED_META):  # colliding keys: rebuilt whole
                        output = canonical.untag(output)
                    return Serve.recorded(output, entry.error, entry.meta)
            self.misses += 1
        if self.mode == "replay":
            raise self._miss(b, key, data, value)
        frame.scratch = _MISSED  # kept at its end (at_end)
        return None

    def at_end(self, frame: Frame, outcome: Ending) -> None:
        """Append a miss that ran live to the file, unless what ended it is not the boundary's
        own behaviour (our errors, interrupts). A stream closed early or never iterated is kept
        as such: served again, it refuses to be read further than it was."""
        b = frame.b
        exc = outcome.error
        if b is None or frame.scratch is not _MISSED or outcome.refused:
            return
        if exc is not None and (
            isinstance(exc, ReplayableError)
            or not isinstance(exc, Exception | asyncio.CancelledError)
        ):
            return  # ours, or an interrupt; a cancellation is served by waiting for another
        error = None if exc is None else redact(encode_error(exc))
        out: Any = None
        tagged = False
        if outcome.output is not None:
            stream = bool(frame.meta.get("stream"))
            cleaned = canonical.clean_output(b, outcome.output, stream=stream, pii=self.pii)
            tagged = canonical.has_tagged(cleaned)
            out = orjson.loads(cleaned)
        if error is not None and self.pii is not None:
            error = self.pii.value(error)
        self.calls.append(CassetteCall(b.name, frame.data, False, out, error, b.kind))
        meta = {k: frame.meta[k] for k in _STREAM_META if k in frame.meta}
        if tagged:
            meta[canonical.TAGGED_META] = True
        self._append(b, frame.key or "", frame.data, out, error, meta)

    def _check_unkeyed(self, b: Boundary, entry: _Entry, data: bytes, value: Any) -> None:
        """Keys stay honest: warn when a field left out of the key differs from the recording."""
        if (b.key_fields is None and not b.ignore) or entry.raw_input() == data:
            return
        actual = value if value is not None else orjson.loads(data)
        recorded = entry.input
        if isinstance(actual, dict) and isinstance(recorded, dict):
            keyed = set(b.key_fields) if b.key_fields is not None else None
            outside = {
                k
                for k in set(actual) | set(recorded)
                if (k not in keyed if keyed is not None else k in b.ignore)
            }
            changes = [
                c
                for c in diff_values(recorded, actual)
                if c.path.split(".", 1)[0].split("[", 1)[0] in outside
            ]
        else:
            changes = []
        if changes:
            fields = ", ".join(str(c) for c in changes[:5])
            warn(
                f"cassette {self.path}: {b.name} matched by key, but fields left out of the key "
                f"differ from the recording: {fields}",
            )

    def _miss(self, b: Boundary, key: str, data: bytes, value: Any) -> FixtureMiss:
        actual = value if value is not None else orjson.loads(data)
        best: _Entry | None = None
        best_changes: list[Any] = []
        for entry in self._by_boundary.get(b.name, ()):
            changes = diff_values(entry.input, actual)
            if best is None or len(changes) < len(best_changes):
                best, best_changes = entry, changes
        return FixtureMiss(
            b.name,
            key,
            nearest=None if best is None else best.input,
            changes=best_changes,
            path=str(self.path),
        )


def read_cassette(path: str | os.PathLike[str]) -> dict[int, dict[str, Any]]:
    """Every recorded call of a cassette file, by line number (1-based; blank lines skipped),
    each as its JSON object (``boundary``, ``key``, ``input``, ``output``, ``error``...).

    Raises ``FileNotFoundError`` when there is no file, :class:`TraceCorrupt` naming the line
    when one is not a recorded call or the last is cut short.
    """
    path = Path(path)
    fd = os.open(path, os.O_RDONLY)
    try:
        # Shared lock: another process may be appending a line right now (xdist workers).
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_SH)
        with os.fdopen(os.dup(fd), "rb") as fh:
            data = fh.read()
    finally:
        os.close(fd)  # closing the descriptor releases the lock
    lines = data.split(b"\n")
    if lines[-1] == b"":
        lines.pop()
    elif lines:
        raise TraceCorrupt(
            f"cassette {path}: line {len(lines)} is truncated (no newline); "
            "delete it and re-record",
            line=len(lines),
        )
    out: dict[int, dict[str, Any]] = {}
    for lineno, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            d = orjson.loads(raw)
            if not (isinstance(d, dict) and isinstance(d.get("boundary"), str)):
                raise TypeError
            if "key" not in d or "input" not in d:
                raise KeyError
        except (orjson.JSONDecodeError, KeyError, TypeError):
            raise TraceCorrupt(
                f"cassette {path}: line {lineno} is not a recorded call", line=lineno
            ) from None
        out[lineno] = d
    return out


def write_cassette(path: str | os.PathLike[str], calls: Iterable[dict[str, Any]]) -> None:
    """Rewrite a cassette file with ``calls`` (what :func:`read_cassette` returns, edited),
    atomically: a temporary file renamed over it, under the lock appenders take."""
    path = Path(path)
    data = b"".join(orjson.dumps(c) + b"\n" for c in calls)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(path, os.O_RDONLY)
    try:
        if fcntl is not None:
            fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            tmp.write_bytes(data)
            os.replace(tmp, path)
        finally:
            tmp.unlink(missing_ok=True)
    finally:
        os.close(fd)


def cassette(
    path: str | os.PathLike[str],
    mode: Mode | str = "auto",
    *,
    live: Iterable[str] = (),
    pii: Any = None,
) -> Cassette:
    """Serve and record boundary calls from an exact-match fixture file (JSONL).

    ``mode`` is ``auto`` (replay hits, record misses), ``replay``, ``record`` or ``off``;
    ``$REPLAYABLE_MODE`` overrides it. Boundaries named in ``live`` (full or bare name) and those
    of kind ``agent`` always run. Use it as ``with``, ``async with`` or a decorator.
    ``pii=True`` or ``pii=rp.PII(...)`` keeps personal data out of the file as pseudonyms (each
    lookup's input is pseudonymized the same way first).

    >>> import replayable as rp
    >>> answer = rp.boundary(kind="llm")(lambda prompt: prompt.upper())
    >>> with cassette("cassettes/support.jsonl") as tape:  # auto: records the miss
    ...     answer("delete my record")
    'DELETE MY RECORD'
    >>> tape.misses
    1
    """
    from replayable._pii import for_record

    return Cassette(path, mode, live=live, pii=for_record(pii if pii is not None else False, None))
