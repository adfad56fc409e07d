"""The call engine: every boundary call of every mode runs through the four shape drivers here.

A boundary hands its call to the active session (``SESSION``); every session is an
:class:`Engine`. The engine owns what is the same in every mode: the step (its ``Frame``: seq,
address, parent, input snapshot), the four call shapes (sync, async, generator, async
generator), stream semantics (``send``/``throw``, early close, never iterated, cancellation) and
the bookkeeping of streams created but not started. A *mode* is a policy: a subclass that answers
the few questions the drivers ask.

The policy interface
--------------------
``at_start(frame) -> Serve | None``
    Called once per call, when it starts (for a stream: when the generator object is created).
    Return ``None`` to run the boundary's function live, a :class:`Serve` to serve a recorded
    value (``output``; for a stream, the list of chunks) or raise a recorded error (``error``,
    the recorded form, or ``exc``, an exception object), or raise to refuse the call. A refusal
    reaches :meth:`Engine.at_end` (``outcome.refused``) and then the caller.
``at_end(frame, outcome)``
    Called once per call, when it is over: returned, raised, served, refused, a stream exhausted,
    failed, closed early (``frame.meta["closed_early"]``), or never iterated before the session
    closed (``frame.meta["never_started"]``). ``outcome`` says what happened (:class:`Ending`);
    the policy decides what to keep (an event, a cassette line, nothing).
``function(frame)``
    The function a live call runs (default: the boundary's own; a what-if puts a fake here).
``unserializable``
    ``"mark"``: a value with no JSON form is snapshotted with a marker where it could not be
    serialized (and a warning); ``"raise"``: the call fails with ``Unserializable``.

Everything else has one home here. The input is snapshotted when the call starts and the output
when it returns, before the agent can mutate either. A served value is decoded with the
boundary's codec or return annotation; a served stream yields its recorded chunks, then raises
its recorded error, and it honours ``throw()`` and ``close()`` like a live one (``send()``
values have nowhere to go and are dropped). A served ``CancelledError`` is not raised: the
driver waits for the agent's code to cancel the call again, as it did when it was recorded (an
``asyncio.wait_for`` turns only the cancellation it made into ``TimeoutError``).

Policies compose by delegation: a policy's ``at_start`` may hand a call to another policy's
``at_start`` and ``at_end`` (a cassette as a replay's fallback, say), remembering the choice in
``frame.meta``.

Threads: the session and the parent step travel in context variables. ``asyncio`` tasks and
``asyncio.to_thread`` copy them; ``loop.run_in_executor`` and raw thread pools do not, so a
callable must be wrapped with :func:`replayable.bind`. A boundary called with no session in its
context while a session is active elsewhere in the process warns once, naming ``rp.bind``; while
a replay is active, a side-effecting boundary called that way is refused rather than fired.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
import warnings
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from replayable import canonical
from replayable._errors_codec import decode_error
from replayable.context import FRAME, Frame, Session
from replayable.errors import (
    ReplayableError,
    ReplayableWarning,
    SideEffectRefused,
    UnknownBoundary,
    Unserializable,
)

if TYPE_CHECKING:
    from replayable.boundary import Boundary

__all__ = [
    "ACTIVE",
    "Ending",
    "Engine",
    "Serve",
    "activate",
    "deactivate",
    "orphan_call",
    "resolve_live",
]

log = logging.getLogger("replayable")

_UNSERIALIZABLE_WARNED: set[tuple[str, str]] = set()


@dataclass(slots=True)
class Serve:
    """A policy's answer "serve this": a recorded ``output`` (a stream's chunk list), or an
    error to raise (its recorded form ``error``, or ``exc`` as it is).

    For a stream: ``handled`` lists the positions (chunks yielded so far) where the recorded
    stream caught an exception the consumer threw in and went on; ``partial`` says the recorded
    stream was closed early or never iterated, so reading past its chunks is an error.
    """

    output: Any = None
    error: dict[str, Any] | None = None
    exc: BaseException | None = None
    handled: tuple[int, ...] = ()
    partial: bool = False
    source: Any = None
    """The recorded event served, when the policy serves its recorded output as it is (a
    recording policy then keeps a reference to it instead of a copy)."""

    @classmethod
    def recorded(cls, output: Any, error: dict[str, Any] | None, meta: dict[str, Any]) -> Serve:
        """Serve a recorded call (an event's, a cassette line's) with its stream metadata."""
        if "stream" not in meta:
            return cls(output, error)
        return cls(
            output,
            error,
            handled=tuple(meta.get("handled_throws") or ()),
            partial=bool(meta.get("closed_early") or meta.get("never_started")),
        )

    def exception(self) -> BaseException | None:
        """The exception to raise, if this serves one."""
        if self.exc is not None:
            return self.exc
        return None if self.error is None else decode_error(self.error)


@dataclass(slots=True)
class Ending:
    """How a call ended, as :meth:`Engine.at_end` sees it.

    ``output``: the snapshot (JSON bytes, in the value's own order) of what a live call returned,
    or of the chunks a live stream yielded; ``None`` when served, or when a plain call raised.
    ``error``: the exception the call raised (a served one included). ``served``: what the policy
    served, if it served. ``refused``: ``at_start`` raised ``error``.
    """

    output: bytes | None = None
    error: BaseException | None = None
    served: Serve | None = None
    refused: bool = False


class Engine(Session):
    """A session whose calls run through the shape drivers; modes subclass it (see the module
    docstring for what a mode decides)."""

    unserializable: Literal["mark", "raise"] = "mark"
    root: Frame

    def __init__(self) -> None:
        self.root = Frame(seq=-1, address="")
        self._seq = itertools.count()
        # Streams created but not iterated yet: ended as never started when the session closes.
        self._unstarted: dict[int, Frame] = {}
        self.orphans_warned: set[str] = set()
        """Boundaries warned about being called outside this session's context."""

    # -- the policy ------------------------------------------------------------------------

    def at_start(self, frame: Frame) -> Serve | None:
        """Run live (``None``), serve (:class:`Serve`), or raise to refuse."""
        return None

    def at_end(self, frame: Frame, outcome: Ending) -> None:
        """Keep what the mode keeps of a finished call."""

    def function(self, frame: Frame) -> Callable[..., Any]:
        """The function a live call runs: the boundary's own (a policy may put a fake here)."""
        b = frame.b
        assert b is not None
        return b.fn

    # -- steps ------------------------------------------------------------------------------

    def begin(self, b: Boundary, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Frame:
        """Open a step: its seq, its address under the current step, its input snapshot."""
        parent = FRAME.get() or self.root
        # Positional (seq, address, rec_seq, meta, counters, parent, data, started_at, t0, b):
        # a class called with keywords builds a dict first, and this runs on every call.
        frame = Frame(
            next(self._seq),
            parent.next_child(b.name),
            None,
            {},
            {},
            parent,
            b"null",
            0.0,
            0,
            b,
        )
        value = b.bind(args, kwargs)
        try:
            frame.data = canonical.snapshot(value)
        except Unserializable:
            frame.data = self.snapshot(frame, value, "input")
        frame.started_at = time.time()
        frame.t0 = time.perf_counter_ns()
        return frame

    def snapshot(self, frame: Frame, value: Any, what: str) -> bytes:
        """JSON bytes of ``value`` now, in its own order (see ``function(frame)``
            The function a live call runs (default: the boundary's own; a what-if puts a fake here).
        ``unserializable``)."""
        try:
            return canonical.snapshot(value)
        except Unserializable as exc:
            if self.unserializable == "raise":
                raise
            b = frame.b
            name = b.name if b is not None else "?"
            if (name, what) not in _UNSERIALIZABLE_WARNED:
                _UNSERIALIZABLE_WARNED.add((name, what))
                warnings.warn(
                    f"{name}: {what} not recorded faithfully: {exc}",
                    ReplayableWarning,
                    stacklevel=5,
                )
            frame.meta[f"unserializable_{what}"] = exc.path
            # Keep every field that serializes; only the bad parts become markers.
            return canonical.snapshot(canonical.sanitize(value)[0])

    def _open(self, b: Boundary, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Frame:
        frame = self.begin(b, args, kwargs)
        try:
            frame.serve = self.at_start(frame)
        except BaseException as exc:
            self.at_end(frame, Ending(error=exc, refused=True))
            raise
        return frame

    def _returned(self, frame: Frame, result: Any) -> Any:
        b = frame.b
        assert b is not None
        self.at_end(frame, Ending(self.snapshot(frame, b.encode_output(result), "output")))
        return result

    def _served(self, frame: Frame, serve: Serve) -> Any:
        b = frame.b
        assert b is not None
        if serve.error is not None or serve.exc is not None:
            exc = serve.exception()
            assert exc is not None
            self.at_end(frame, Ending(error=exc, served=serve))
            raise exc
        self.at_end(frame, Ending(None, None, serve))  # served: positional, on every call
        return b.decode_output(serve.output)

    def end_unstarted(self) -> None:
        """End the streams created but never iterated (a session calls this as it closes)."""
        for frame in list(self._unstarted.values()):
            frame.meta.update(stream=True, never_started=True)
            serve = frame.serve
            out = None if serve is not None else b"[]"
            self.at_end(frame, Ending(output=out, served=serve))
        self._unstarted.clear()

    # -- the four call shapes ----------------------------------------------------------------

    def call(self, b: Boundary, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        frame = self._open(b, args, kwargs)
        if frame.serve is not None:
            return self._served(frame, frame.serve)
        token = FRAME.set(frame)
        try:
            result = self.function(frame)(*args, **kwargs)
        except BaseException as exc:
            FRAME.reset(token)
            self.at_end(frame, Ending(error=exc))
            raise
        FRAME.reset(token)
        return self._returned(frame, result)

    async def call_async(self, b: Boundary, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        frame = self._open(b, args, kwargs)
        serve = frame.serve
        if serve is not None:
            if serve.error is not None and str(serve.error.get("type", "")).endswith(
                ":CancelledError"
            ):
                try:  # cancelled from outside when recorded: wait to be cancelled again
                    await asyncio.get_running_loop().create_future()
                except asyncio.CancelledError as exc:
                    self.at_end(frame, Ending(error=exc, served=serve))
                    raise
            return self._served(frame, serve)
        token = FRAME.set(frame)
        try:
            result = await self.function(frame)(*args, **kwargs)
        except BaseException as exc:
            FRAME.reset(token)
            self.at_end(frame, Ending(error=exc))
            raise
        FRAME.reset(token)
        return self._returned(frame, result)

    def call_gen(self, b: Boundary, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[Any]:
        frame = self._open(b, args, kwargs)
        self._unstarted[frame.seq] = frame
        return self._drive_gen(frame, args, kwargs)

    def _drive_gen(
        self, frame: Frame, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> Iterator[Any]:
        # `yield from` the live generator or the recorded chunks, with the step's frame around
        # each resumption, send() and throw() handed on, and one at_end() however it stops.
        self._unstarted.pop(frame.seq, None)
        b, serve = frame.b, frame.serve
        assert b is not None
        frame.meta["stream"] = True
        source: Iterator[Any] = (
            self.function(frame)(*args, **kwargs) if serve is None else _chunks(b, serve)
        )
        gen: Any = source
        chunks: list[Any] = []
        sent: Any = None
        thrown: BaseException | None = None
        try:
            while True:
                token = FRAME.set(frame)
                throwing = thrown is not None
                try:
                    if thrown is not None:
                        exc, thrown = thrown, None
                        item = gen.throw(exc)
                    else:
                        item = gen.send(sent)
                except StopIteration:
                    if throwing and serve is None:
                        _handled(frame, chunks)
                    break
                finally:
                    FRAME.reset(token)
                if serve is None:
                    if throwing:
                        _handled(frame, chunks)
                    chunks.append(b.encode_output(item))
                try:
                    sent = yield item
                except GeneratorExit:
                    raise
                except BaseException as exc:  # thrown in by the consumer: hand it on
                    thrown, sent = exc, None
        except GeneratorExit:
            frame.meta["closed_early"] = True
            gen.close()
            self._stream_end(frame, chunks, None)
            raise
        except BaseException as exc:
            self._stream_end(frame, chunks, exc)
            raise
        self._stream_end(frame, chunks, None)

    def call_agen(
        self, b: Boundary, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncIterator[Any]:
        frame = self._open(b, args, kwargs)
        self._unstarted[frame.seq] = frame
        return self._drive_agen(frame, args, kwargs)

    async def _drive_agen(
        self, frame: Frame, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncIterator[Any]:
        # The async mirror of _drive_gen.
        self._unstarted.pop(frame.seq, None)
        b, serve = frame.b, frame.serve
        assert b is not None
        frame.meta["stream"] = True
        source: Any = self.function(frame)(*args, **kwargs) if serve is None else _achunks(b, serve)
        chunks: list[Any] = []
        sent: Any = None
        thrown: BaseException | None = None
        try:
            while True:
                token = FRAME.set(frame)
                throwing = thrown is not None
                try:
                    if thrown is not None:
                        exc, thrown = thrown, None
                        item = await source.athrow(exc)
                    else:
                        item = await source.asend(sent)
                except StopAsyncIteration:
                    if throwing and serve is None:
                        _handled(frame, chunks)
                    break
                finally:
                    FRAME.reset(token)
                if serve is None:
                    if throwing:
                        _handled(frame, chunks)
                    chunks.append(b.encode_output(item))
                try:
                    sent = yield item
                except GeneratorExit:
                    raise
                except BaseException as exc:
                    thrown, sent = exc, None
        except GeneratorExit:
            frame.meta["closed_early"] = True
            await source.aclose()
            self._stream_end(frame, chunks, None)
            raise
        except BaseException as exc:
            self._stream_end(frame, chunks, exc)
            raise
        self._stream_end(frame, chunks, None)

    def _stream_end(self, frame: Frame, chunks: list[Any], exc: BaseException | None) -> None:
        serve = frame.serve
        out = None if serve is not None else self.snapshot(frame, chunks, "output")
        self.at_end(frame, Ending(output=out, error=exc, served=serve))


def _handled(frame: Frame, chunks: list[Any]) -> None:
    """The live stream caught what the consumer threw in after ``len(chunks)`` chunks."""
    frame.meta.setdefault("handled_throws", []).append(len(chunks))


def _chunks(b: Boundary, serve: Serve) -> Iterator[Any]:
    """A recorded stream: its chunks, throws handled where the recording handled them, then
    its recorded end."""
    chunks = serve.output if isinstance(serve.output, list) else []
    for i, chunk in enumerate(chunks):
        try:
            yield b.decode_output(chunk)
        except GeneratorExit:
            raise
        except BaseException:
            if i + 1 not in serve.handled:
                raise
    _recorded_end(b, serve, len(chunks))


async def _achunks(b: Boundary, serve: Serve) -> AsyncIterator[Any]:
    chunks = serve.output if isinstance(serve.output, list) else []
    for i, chunk in enumerate(chunks):
        try:
            yield b.decode_output(chunk)
        except GeneratorExit:
            raise
        except BaseException:
            if i + 1 not in serve.handled:
                raise
    if serve.error is not None and str(serve.error.get("type", "")).endswith(":CancelledError"):
        await asyncio.get_running_loop().create_future()  # cancelled when recorded: wait
    _recorded_end(b, serve, len(chunks))


def _recorded_end(b: Boundary, serve: Serve, n: int) -> None:
    exc = serve.exception()
    if exc is not None:
        raise exc
    if serve.partial:
        raise ReplayableError(
            f"{b.name}: the recorded stream was closed after {n} chunk(s); this code reads "
            "further, and there is nothing recorded to serve: run it live or record it again"
        )


def resolve_live(
    entries: Iterable[str], recorded: set[str]
) -> tuple[set[str], set[tuple[str, int]]]:
    """Resolve ``live=`` entries to (full names, (full name, N) pairs).

    An entry is a full ``module:qualname``, a bare function name (resolved among the recording's
    boundaries first, then among every registered one; ambiguous is an error), or ``name#N``:
    only the N-th call of that boundary (1-based, in start order).
    """
    from replayable.boundary import registry, resolve_name

    names: set[str] = set()
    calls: set[tuple[str, int]] = set()
    known: set[str] | None = None
    for entry in entries:
        name, _, nth = entry.partition("#")
        full = resolve_name(name, recorded, missing_ok=True)
        if full is None:
            if known is None:
                known = set(registry()) | recorded
            full = resolve_name(name, known)
        if nth:
            if not nth.isdigit() or int(nth) < 1:
                raise UnknownBoundary(f"bad call number in {entry!r}: use name#N with N >= 1")
            calls.add((full, int(nth)))
        else:
            names.add(full)
    return names, calls


# -- calls with no session in their context ------------------------------------------------------

ACTIVE: dict[int, Engine] = {}
"""Sessions active anywhere in the process, by id (a boundary with no session in its context
checks this to tell "no run at all" from "a run this thread was not given")."""
_ACTIVE_LOCK = threading.Lock()


def activate(session: Engine) -> None:
    """Note a session as active in the process."""
    with _ACTIVE_LOCK:
        ACTIVE[id(session)] = session


def deactivate(session: Engine) -> None:
    """Note a session as no longer active."""
    with _ACTIVE_LOCK:
        ACTIVE.pop(id(session), None)


def orphan_call(b: Boundary) -> None:
    """A boundary was called with no session in its context while one is active elsewhere:
    most likely a thread started without the caller's context. Warn once per session and
    boundary; refuse a side effect while a replay is active (it would fire for real)."""
    sessions = list(ACTIVE.values())
    if not sessions:
        return
    if b.side_effects and any(getattr(s, "serves_recordings", False) for s in sessions):
        raise SideEffectRefused(
            f"{b.name} has side effects and was called outside the replay's context (in a "
            "thread started with loop.run_in_executor or a thread pool?): it would fire for "
            "real. Wrap the callable with rp.bind(fn) so the call is replayed"
        )
    warned = sessions[0].orphans_warned
    if b.name not in warned:
        warned.add(b.name)
        warnings.warn(
            f"{b.name} was called outside the active record/replay's context (in a thread "
            "started with loop.run_in_executor or a thread pool?), so it is neither recorded "
            "nor replayed; wrap the callable with rp.bind(fn)",
            ReplayableWarning,
            stacklevel=3,
        )
