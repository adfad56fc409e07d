"""The call engine: every boundary call of every mode runs through the four shape drivers here.

A boundary hands its call to the active session (``SESSION``): an :class:`Engine` holding a
*policy*. The engine owns what is the same in every mode: the step (its ``Frame``: seq, address,
parent, input snapshot), the four call shapes (sync, async, generator, async generator), stream
semantics (``send``/``throw``, early close, never iterated, cancellation) and the bookkeeping of
streams created but not started. A mode is a policy object the engine holds, never a subclass of
the engine; the policies themselves are built from the small parts below, and a new mode
combines existing parts with the one part it changes.

The policy (:class:`Policy`)
----------------------------
``at_start(frame) -> Serve | None``
    Called once per call, when it starts (for a stream: when the generator object is created).
    Return ``None`` to run the call live, a :class:`Serve` to serve a recorded value (``output``;
    for a stream, the list of chunks) or raise a recorded error (``error``, the recorded form, or
    ``exc``, an exception object), or raise to refuse the call. A refusal reaches ``at_end``
    (``outcome.refused``) and then the caller.
``at_end(frame, outcome)``
    Called once per call, when it is over: returned, raised, served, refused, a stream exhausted,
    failed, closed early (``frame.meta["closed_early"]``), or never iterated before the session
    closed (``frame.meta["never_started"]``). ``outcome`` (:class:`Ending`) says what happened.
``function(frame) -> callable``
    What a live call runs: the boundary's own function (``frame.b.fn``), a what-if's fake, or a
    forwarding call.
``serves_recordings``
    ``True`` when calls may be served from a recording: a side effect called outside the
    session's context is then refused instead of fired.

What the rest of the package asks the active session (``SESSION.get()``) is on
:class:`~replayable.context.Session`: ``run`` (the run it records), and for a replay
(:class:`Replaying`, given to the engine) ``source``, ``source_events`` (an MCP client stays
offline, an SDK warns about a major-version change), ``follow`` and ``add_divergence`` (a
followed callee's divergences).

State a policy keeps about one call between ``at_start`` and ``at_end`` goes on the frame
(``frame.how``, ``frame.scratch``), never in ``frame.meta``: ``meta`` is stored and hashed as the
event's metadata.

The parts (:class:`Matcher`, :class:`Server`, :class:`Keeper`, :class:`Sink`)
--------------------------------------------------------------------------------
A replay's policy (:class:`replayable._replayer.ReplayPolicy`) decides each call from four parts
it holds, as temporalio's ``Replayer`` plugs hooks into one worker instead of subclassing it:

``Matcher.match(frame) -> Match``
    Which recorded step answers this call, and how it compares: ``Match.event`` is the recorded
    event taken for the call (consumed: it answers no other call), ``Match.divergence`` what
    differs (``None``: it matches). The matcher keys the live input (``frame.key``,
    ``frame.data`` redacted as recorded) and returns ``Match.same=True`` when the live input is
    byte for byte the recorded one (the usual served call: nothing was keyed or redacted).
    :class:`replayable._replayer.RecordingMatcher` matches by place and key (or key alone); its
    :class:`~replayable._replayer.RecordedRun` index (``group(parent, name)``,
    ``take(event)``, ``consume_subtree(seq)``) is what a matcher of another kind builds on.
``Server.serve(frame, event) -> Serve``
    How a recorded value is served: :class:`replayable._replayer.RecordedServer` serves a stored
    event as it is (and marks it the replay step's ``source``, so the step is kept as a reference
    to it); a what-if serves an overridden value.
``Keeper.keep(frame, outcome)``
    What is kept of a call at its end: :class:`replayable._replayer.StepKeeper` turns it into a
    ``Pending`` step of a run handed to its sink; a cassette appends a miss to its file; drift
    keeps its one live answer.
``Sink``
    Where kept steps go: the store's background :class:`replayable._writer.Writer`, a
    :class:`replayable._writer.Buffer` (``rp.check``: steps stay in memory and only a diverged or
    failed replay becomes rows), or nothing.

Where a new mode plugs in
-------------------------
- *Clean a live input the way the recording was cleaned* (personal data): every mode keys an
  input through :func:`replayable.canonical.keyed_input` (redaction, then the run's
  pseudonymizer when it has one, then the key); the replay hands the recorded run's
  pseudonymizer to its matcher and keeper (``replay_parts(..., pii=...)``), a cassette holds
  its own, the writer takes the run's from each ``Pending``.
- *Transform a live input before it is keyed and compared*:
  ``RecordingMatcher(..., prepare=fn)``; ``fn(boundary, data) -> data`` receives the live
  input snapshot (JSON bytes) before the byte comparison, the redaction and the key, and what it
  returns is what is compared, keyed and stored.
- *A matcher for steps that carry fewer fields* (imported OTLP traces): a :class:`Matcher`
  whose ``match`` compares only the fields the recorded event carries; it takes candidates from
  the policy's ``RecordedRun`` (``group((parent rec seq, name))``) and claims one with
  ``RecordedRun.take``. The rest of the replay (server, keeper, sink, ``live=``) is unchanged.
- *A live boundary that forwards a replay context* (cross-service ``follow=True``): give the
  policy a ``runner`` (``ReplayPolicy(..., runner=fn)``): ``fn(frame, function) -> callable``
  wraps what a live call named in ``live=`` runs, so it can carry the replay's context across.
- *Where kept steps go*: a :class:`Sink` passed to the replay's builder
  (``_replayer.build_replay(..., sink=...)``).

Everything else has one home here. The input is snapshotted when the call starts and the output
when it returns, before the agent can mutate either. A served value is decoded with the
boundary's codec or return annotation; a served stream yields its recorded chunks, then raises
its recorded error, and it honours ``throw()`` and ``close()`` like a live one (``send()``
values have nowhere to go and are dropped). A served ``CancelledError`` is not raised: the
driver waits for the agent's code to cancel the call again, as it did when it was recorded (an
``asyncio.wait_for`` turns only the cancellation it made into ``TimeoutError``).

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
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, Protocol

from replayable import canonical
from replayable._errors_codec import decode_error
from replayable._warn import warn
from replayable.context import FRAME, Frame, Session, Tokens, enter, leave
from replayable.errors import Divergence, ReplayableError, Unserializable

if TYPE_CHECKING:
    from replayable._follow import Follow
    from replayable.boundary import Boundary
    from replayable.trace import Event, Run

__all__ = [
    "Ending",
    "Engine",
    "Keeper",
    "Match",
    "Matcher",
    "Policy",
    "Serve",
    "Server",
    "Sink",
    "snapshot",
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


@dataclass(slots=True)
class Match:
    """A matcher's answer for one call: the recorded ``event`` taken for it (``None``: the
    recording has none), the ``divergence`` that says what differs (``None``: it matches),
    ``same``: the live input is byte for byte the recorded one, and ``value``: the live input
    parsed, when the matcher parsed it (``None``: parse ``frame.data``)."""

    event: Event | None
    divergence: Divergence | None = None
    same: bool = False
    value: Any = None


class Policy(Protocol):
    """What a mode decides (see the module docstring)."""

    serves_recordings: bool

    def at_start(self, frame: Frame) -> Serve | None: ...

    def at_end(self, frame: Frame, outcome: Ending) -> None: ...

    def function(self, frame: Frame) -> Callable[..., Any]: ...


class Replaying(Protocol):
    """What a replay tells the rest of the package through its session."""

    @property
    def source(self) -> Run:
        """The recorded run."""
        ...

    @property
    def source_events(self) -> Mapping[int, Event]:
        """Its events by seq."""
        ...

    @property
    def follow(self) -> Follow | None:
        """The follow part: remote calls named live ask their callee to replay (``None``:
        they do not)."""
        ...

    def add_divergence(self, div: Divergence) -> None: ...


class Matcher(Protocol):
    """Which recorded step answers a call, and how it compares (see the module docstring)."""

    def match(self, frame: Frame) -> Match: ...


class Server(Protocol):
    """How a recorded value is served."""

    def serve(self, frame: Frame, event: Event) -> Serve: ...


class Keeper(Protocol):
    """What is kept of a call at its end."""

    def keep(self, frame: Frame, outcome: Ending) -> None: ...


class Sink(Protocol):
    """Where a run's kept steps go: the store's writer, a buffer, nothing."""

    error: BaseException | None
    """A store error to raise from a strict recording (``None``: none)."""

    @property
    def failing(self) -> bool:
        """The store is refusing writes now (a run's end then waits less for it)."""
        ...

    def begin_run(self, run: Run) -> None:
        """The run starts (created in the store)."""

    def submit(self, item: Any) -> None:
        """A kept step (a ``replayable._writer.Pending``)."""

    def end_run(self, run: Run) -> None:
        """The run ended (status, end time, head hash)."""

    def flush(self, timeout: float | None = 30.0, *, stall_limit: float | None = None) -> bool:
        """Everything handed over so far is stored (False: ``timeout`` passed first)."""
        ...


def snapshot(frame: Frame, value: Any, what: str, *, strict: bool) -> bytes:
    """JSON bytes of ``value`` now, in its own order. A value with no JSON form fails the call
    with ``Unserializable`` when ``strict``; otherwise it is kept with a marker where it could
    not be serialized (and ``frame.meta["unserializable_<what>"]`` says where), with a warning
    once per boundary."""
    try:
        return canonical.snapshot(value)
    except Unserializable as exc:
        if strict:
            raise
        b = frame.b
        name = b.name if b is not None else "?"
        if (name, what) not in _UNSERIALIZABLE_WARNED:
            _UNSERIALIZABLE_WARNED.add((name, what))
            warn(
                f"{name}: {what} not recorded faithfully: {exc}",
            )
        frame.meta[f"unserializable_{what}"] = exc.path
        # Keep every field that serializes; only the bad parts become markers.
        return canonical.snapshot(canonical.sanitize(value)[0])


class Engine(Session):
    """The session every mode runs through: the four shape drivers around one ``policy``.

    ``unserializable``: ``"mark"`` keeps a value with no JSON form with markers (and a
    warning), ``"raise"`` fails the call with ``Unserializable``.
    """

    def __init__(
        self,
        policy: Policy,
        *,
        unserializable: Literal["mark", "raise"] = "mark",
        run: Run | None = None,
        replaying: Replaying | None = None,
    ) -> None:
        self.policy = policy
        self.serves_recordings = policy.serves_recordings
        self.run = run
        self.replaying = replaying
        if replaying is not None:
            self.source = replaying.source
            self.source_events = replaying.source_events
            self.follow = replaying.follow
        self.strict = unserializable == "raise"
        self.root = Frame(seq=-1, address="")
        self._seq = itertools.count()
        # Streams created but not iterated yet: ended as never started when the session closes.
        self._unstarted: dict[int, Frame] = {}
        self.orphans_warned: set[str] = set()
        self._tokens: Tokens | None = None

    def add_divergence(self, div: Divergence) -> None:
        """Keep a divergence found elsewhere in the replay (ignored when this is none)."""
        if self.replaying is not None:
            self.replaying.add_divergence(div)

    # -- the session's life -------------------------------------------------------------------

    def enter(self) -> None:
        """Become the active session in this context (refused while another one is)."""
        self._tokens = enter(self, self.root)

    def leave(self) -> None:
        """Stop being the active session, and end the streams never iterated."""
        tokens, self._tokens = self._tokens, None
        try:
            if tokens is not None:
                leave(self, tokens)
        finally:
            self.end_unstarted()

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
            frame.data = snapshot(frame, value, "input", strict=self.strict)
        frame.started_at = time.time()
        frame.t0 = time.perf_counter_ns()
        return frame

    def _open(self, b: Boundary, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Frame:
        frame = self.begin(b, args, kwargs)
        try:
            frame.serve = self.policy.at_start(frame)
        except BaseException as exc:
            self.policy.at_end(frame, Ending(error=exc, refused=True))
            raise
        return frame

    def _returned(self, frame: Frame, result: Any) -> Any:
        b = frame.b
        assert b is not None
        out = snapshot(frame, b.encode_output(result), "output", strict=self.strict)
        self.policy.at_end(frame, Ending(out))
        return result

    def _served(self, frame: Frame, serve: Serve) -> Any:
        b = frame.b
        assert b is not None
        if serve.error is not None or serve.exc is not None:
            exc = serve.exception()
            assert exc is not None
            self.policy.at_end(frame, Ending(error=exc, served=serve))
            raise exc
        self.policy.at_end(frame, Ending(None, None, serve))  # positional, on every call
        return b.decode_output(serve.output)

    def end_unstarted(self) -> None:
        """End the streams created but never iterated (a session calls this as it closes)."""
        for frame in list(self._unstarted.values()):
            frame.meta.update(stream=True, never_started=True)
            serve = frame.serve
            out = None if serve is not None else b"[]"
            self.policy.at_end(frame, Ending(output=out, served=serve))
        self._unstarted.clear()

    # -- the four call shapes ----------------------------------------------------------------

    def call(self, b: Boundary, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        frame = self.begin(b, args, kwargs)
        policy = self.policy
        try:
            serve = frame.serve = policy.at_start(frame)
        except BaseException as exc:
            policy.at_end(frame, Ending(error=exc, refused=True))
            raise
        if serve is not None:
            if serve.error is None and serve.exc is None:  # the usual served call, inline
                policy.at_end(frame, Ending(None, None, serve))
                return b.decode_output(serve.output)
            return self._served(frame, serve)
        token = FRAME.set(frame)
        try:
            result = self.policy.function(frame)(*args, **kwargs)
        except BaseException as exc:
            FRAME.reset(token)
            self.policy.at_end(frame, Ending(error=exc))
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
                    self.policy.at_end(frame, Ending(error=exc, served=serve))
                    raise
            return self._served(frame, serve)
        token = FRAME.set(frame)
        try:
            result = await self.policy.function(frame)(*args, **kwargs)
        except BaseException as exc:
            FRAME.reset(token)
            self.policy.at_end(frame, Ending(error=exc))
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
            self.policy.function(frame)(*args, **kwargs) if serve is None else _chunks(b, serve)
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
        source: Any = (
            self.policy.function(frame)(*args, **kwargs) if serve is None else _achunks(b, serve)
        )
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
        out = None if serve is not None else snapshot(frame, chunks, "output", strict=self.strict)
        self.policy.at_end(frame, Ending(output=out, error=exc, served=serve))


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
