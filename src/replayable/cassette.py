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

import functools
import inspect
import os
import threading
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from replayable import canonical
from replayable._diff import diff_values
from replayable.boundary import decode_error, encode_error
from replayable.context import SESSION, AsyncToo, Session
from replayable.errors import FixtureMiss, ReplayableError, ReplayableWarning, TraceCorrupt
from replayable.redact import might_hold_secrets, redact

if TYPE_CHECKING:
    from replayable.boundary import Boundary

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: O_APPEND alone
    fcntl = None  # type: ignore[assignment]

__all__ = ["MODES", "Cassette", "CassetteCall", "cassette", "force_mode", "resolve_mode"]

MODES = ("record", "replay", "auto", "off")
_FORCED_MODE: str | None = None
"""Set by the pytest plugin's ``--replayable-mode``; ``$REPLAYABLE_MODE`` still wins."""

F = TypeVar("F", bound=Callable[..., Any])


def force_mode(mode: str | None) -> None:
    """Force every cassette into ``mode`` (``None`` lifts it); ``$REPLAYABLE_MODE`` still wins."""
    global _FORCED_MODE
    if mode is not None and mode not in MODES:
        raise ReplayableError(f"cassette mode must be one of {', '.join(MODES)}, not {mode!r}")
    _FORCED_MODE = mode


def resolve_mode(mode: str) -> str:
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


class Cassette(Session, AsyncToo["Cassette"]):
    """An exact-match fixture file; a context manager (sync or async) and a decorator.

    >>> with rp.cassette("tests/cassettes/weather.jsonl", mode="replay") as tape:
    ...     forecast("Paris")
    >>> tape.hits, tape.misses
    (1, 0)
    """

    def __init__(
        self, path: str | os.PathLike[str], mode: str = "auto", *, live: Iterable[str] = ()
    ) -> None:
        resolve_mode(mode)  # fail early on a bad mode
        self.path = Path(path)
        self.requested_mode = mode
        self.mode = mode
        self.live = frozenset(live)
        self.calls: list[CassetteCall] = []
        self.hits = 0
        self.misses = 0
        self._entries: dict[tuple[str, str], list[_Entry]] = {}
        self._cursor: dict[tuple[str, str], int] = {}
        self._by_boundary: dict[str, list[_Entry]] = {}
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._token: Any = None

    # -- the file ----------------------------------------------------------------------------

    def __len__(self) -> int:
        return sum(len(v) for v in self._entries.values())

    def load(self) -> None:
        """(Re)read the file into the lookup table."""
        self._entries.clear()
        self._cursor.clear()
        self._by_boundary.clear()
        try:
            fd = os.open(self.path, os.O_RDONLY)
        except FileNotFoundError:
            return
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
                f"cassette {self.path}: line {len(lines)} is truncated (no newline); "
                "delete it and re-record",
                line=len(lines),
            )
        for lineno, raw in enumerate(lines, start=1):
            if not raw.strip():
                continue
            try:
                d = orjson.loads(raw)
                entry = _Entry(d["boundary"], d["key"], d["input"], d.get("output"), d.get("error"))
            except (orjson.JSONDecodeError, KeyError, TypeError):
                raise TraceCorrupt(
                    f"cassette {self.path}: line {lineno} is not a recorded call", line=lineno
                ) from None
            self._add(entry)

    def _add(self, entry: _Entry) -> None:
        self._entries.setdefault((entry.boundary, entry.key), []).append(entry)
        self._by_boundary.setdefault(entry.boundary, []).append(entry)

    def _append(self, b: Boundary, key: str, data: bytes, out: Any, error: Any) -> None:
        line = (
            orjson.dumps(
                {
                    "boundary": b.name,
                    "error": error,
                    "input": orjson.Fragment(data),
                    "key": key,
                    "kind": b.kind,
                    "output": out,
                },  # keys in sorted order; values keep their own (what is served)
            )
            + b"\n"
        )
        entry = _Entry(b.name, key, orjson.loads(data), out, error, data)
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

    def __enter__(self) -> Cassette:
        if SESSION.get() is not None:
            raise ReplayableError("a record, replay or cassette is already active in this context")
        self.mode = resolve_mode(self.requested_mode)
        if self.mode == "record":
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.path.write_bytes(b"")
            self.load()
        elif self.mode in ("replay", "auto"):
            self.load()
        if self.mode != "off":
            self._token = SESSION.set(self)
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._token is not None:
            SESSION.reset(self._token)
            self._token = None
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

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
        return Cassette(self.path, self.requested_mode, live=self.live)

    # -- lookup -------------------------------------------------------------------------------

    def _runs_live(self, b: Boundary) -> bool:
        return b.kind == "agent" or b.name in self.live or b.bare_name in self.live

    def _lookup(self, b: Boundary, args: tuple[Any, ...], kwargs: dict[str, Any]) -> _Lookup:
        data, value = canonical.clean_input(b, canonical.snapshot(b.bind(args, kwargs)))
        key = canonical.input_key(b, data, value)
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
                    return _Lookup(key, data, entry)
            self.misses += 1
        if self.mode == "replay":
            raise self._miss(b, key, data, value)
        return _Lookup(key, data, None)

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
            warnings.warn(
                f"cassette {self.path}: {b.name} matched by key, but fields left out of the key "
                f"differ from the recording: {fields}",
                ReplayableWarning,
                stacklevel=5,
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

    def _served(self, b: Boundary, entry: _Entry) -> Any:
        if entry.error is not None:
            raise decode_error(entry.error)
        return b.decode_output(entry.output)

    def _record(
        self, b: Boundary, look: _Lookup, out: Any = None, exc: BaseException | None = None
    ) -> None:
        if exc is not None and (isinstance(exc, ReplayableError) or not isinstance(exc, Exception)):
            return  # our own errors and interrupts are not the boundary's behaviour
        error = None if exc is None else redact(encode_error(exc))
        if exc is None:
            raw = canonical.snapshot(out)
            if b.redactors or b.redact_keys or might_hold_secrets(raw):
                out = redact(orjson.loads(raw), extra_keys=b.redact_keys, redactors=b.redactors)
            else:
                out = orjson.loads(raw)
        else:
            out = None
        self.calls.append(CassetteCall(b.name, look.data, False, out, error, b.kind))
        self._append(b, look.key, look.data, out, error)

    # -- the four call shapes ----------------------------------------------------------------

    def call(self, b: Boundary, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._runs_live(b):
            return b.fn(*args, **kwargs)
        look = self._lookup(b, args, kwargs)
        if look.entry is not None:
            return self._served(b, look.entry)
        try:
            result = b.fn(*args, **kwargs)
        except BaseException as exc:
            self._record(b, look, exc=exc)
            raise
        self._record(b, look, b.encode_output(result))
        return result

    async def call_async(self, b: Boundary, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        if self._runs_live(b):
            return await b.fn(*args, **kwargs)
        look = self._lookup(b, args, kwargs)
        if look.entry is not None:
            return self._served(b, look.entry)
        try:
            result = await b.fn(*args, **kwargs)
        except BaseException as exc:
            self._record(b, look, exc=exc)
            raise
        self._record(b, look, b.encode_output(result))
        return result

    def call_gen(self, b: Boundary, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[Any]:
        if self._runs_live(b):
            return b.fn(*args, **kwargs)  # type: ignore[no-any-return]
        look = self._lookup(b, args, kwargs)
        if look.entry is not None:
            return self._serve_gen(b, look.entry)
        return self._record_gen(b, look, b.fn(*args, **kwargs))

    def _serve_gen(self, b: Boundary, entry: _Entry) -> Iterator[Any]:
        for chunk in entry.output if isinstance(entry.output, list) else ():
            yield b.decode_output(chunk)
        if entry.error is not None:
            raise decode_error(entry.error)

    def _record_gen(self, b: Boundary, look: _Lookup, gen: Iterator[Any]) -> Iterator[Any]:
        chunks: list[Any] = []
        try:
            for item in gen:
                chunks.append(b.encode_output(item))
                yield item
        except GeneratorExit:
            raise  # closed early: a partial stream is not a recording
        except BaseException as exc:
            self._record(b, look, chunks, exc)
            raise
        self._record(b, look, chunks)

    def call_agen(
        self, b: Boundary, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncIterator[Any]:
        if self._runs_live(b):
            return b.fn(*args, **kwargs)  # type: ignore[no-any-return]
        look = self._lookup(b, args, kwargs)
        if look.entry is not None:
            return self._serve_agen(b, look.entry)
        return self._record_agen(b, look, b.fn(*args, **kwargs))

    async def _serve_agen(self, b: Boundary, entry: _Entry) -> AsyncIterator[Any]:
        for chunk in entry.output if isinstance(entry.output, list) else ():
            yield b.decode_output(chunk)
        if entry.error is not None:
            raise decode_error(entry.error)

    async def _record_agen(
        self, b: Boundary, look: _Lookup, agen: AsyncIterator[Any]
    ) -> AsyncIterator[Any]:
        chunks: list[Any] = []
        try:
            async for item in agen:
                chunks.append(b.encode_output(item))
                yield item
        except GeneratorExit:
            raise
        except BaseException as exc:
            self._record(b, look, chunks, exc)
            raise
        self._record(b, look, chunks)


@dataclass(slots=True)
class _Lookup:
    key: str
    data: bytes
    entry: _Entry | None


def cassette(
    path: str | os.PathLike[str], mode: str = "auto", *, live: Iterable[str] = ()
) -> Cassette:
    """Serve and record boundary calls from an exact-match fixture file (JSONL).

    ``mode`` is ``auto`` (replay hits, record misses), ``replay``, ``record`` or ``off``;
    ``$REPLAYABLE_MODE`` overrides it. Boundaries named in ``live`` (full or bare name) and those
    of kind ``agent`` always run. Use it as ``with``, ``async with`` or a decorator.

    >>> with cassette("tests/cassettes/support.jsonl") as tape:
    ...     support_agent("delete my record")
    """
    return Cassette(path, mode, live=live)
