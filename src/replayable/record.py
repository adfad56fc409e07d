"""``rp.record``: record every boundary call of a run into a store.

Inputs are snapshotted when a call starts and outputs when it returns (agents mutate message
lists in place); everything else happens on the background writer (:mod:`replayable._writer`).
"""

from __future__ import annotations

import contextvars
import itertools
import logging
import os
import platform
import secrets
import socket
import subprocess
import sys
import time
import warnings
from collections.abc import AsyncIterator, Iterable, Iterator, Mapping
from functools import lru_cache
from types import TracebackType
from typing import TYPE_CHECKING, Any

from replayable import canonical
from replayable._version import __version__
from replayable._writer import Pending, Writer, writer_for
from replayable.boundary import encode_error
from replayable.context import FRAME, SESSION, AsyncToo, Frame, Session
from replayable.errors import ReplayableError, ReplayableWarning, Unserializable
from replayable.redact import redact, redact_argv, redact_run
from replayable.store import Store, open_store
from replayable.trace import Run

if TYPE_CHECKING:
    from replayable.boundary import Boundary

__all__ = [
    "Recorder",
    "Recording",
    "ReplayableWarning",
    "environment",
    "new_run_id",
    "record",
    "reset_context",
]

log = logging.getLogger("replayable")


def new_run_id() -> str:
    """A sortable run id: 12 hex digits of milliseconds, then 8 random hex digits."""
    return f"{int(time.time() * 1000):012x}{secrets.token_hex(4)}"


@lru_cache(maxsize=1)
def _git_commit() -> tuple[str | None, bool | None]:
    try:
        head = subprocess.run(
            ["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=2, check=False
        )
        if head.returncode != 0:
            return None, None
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=2,
            check=False,
        )
        return head.stdout.strip(), bool(dirty.stdout.strip())
    except (OSError, subprocess.SubprocessError):
        return None, None


def environment() -> dict[str, Any]:
    """What a run records about where it ran: versions, code version, host."""
    commit, dirty = _git_commit()
    build = os.environ.get("REPLAYABLE_BUILD_ID")
    return {
        "replayable": __version__,
        "code_version": build or commit,
        "git_commit": commit,
        "git_dirty": dirty,
        "build_id": build,
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "argv": redact_argv(sys.argv),  # --api-key X, URLs with a password
    }


def _tags(tags: Mapping[str, Any] | Iterable[str] | None) -> dict[str, str]:
    if tags is None:
        return {}
    if isinstance(tags, Mapping):
        return {str(k): str(v) for k, v in tags.items()}
    out: dict[str, str] = {}
    for tag in tags:
        k, _, v = str(tag).partition("=")
        out[k] = v
    return out


_UNSERIALIZABLE_WARNED: set[tuple[str, str]] = set()
_LATE_WARNED: set[str] = set()


def _warn_late(run_id: str, boundary: str) -> None:
    """A call that finished after its run closed (a generator drained later, a bound callable
    still running): it is not recorded, since the run's hash chain is already sealed."""
    if run_id not in _LATE_WARNED:
        _LATE_WARNED.add(run_id)
        log.warning(
            "replayable: %s finished after run %s was closed; not recorded (finish iterating "
            "generators and join threads inside the record block)",
            boundary,
            run_id,
        )


# Live observers (e.g. the OpenTelemetry live exporter): told when each step begins and ends,
# on the agent's thread. Empty by default, so recording pays one truthiness check.
OBSERVERS: list[Any] = []


class Recorder(Session):
    """The session behind :func:`record`: turns boundary calls into events."""

    def __init__(self, store: Store, run: Run, *, strict: bool = False) -> None:
        self.store = store
        self.run = run
        self.strict = strict
        self.writer: Writer = writer_for(store)
        self.root = Frame(seq=-1, address="")
        self._seq = itertools.count()
        self.closed = False
        # Streams created but not iterated yet: their body (and so their event) only starts on
        # the first next(). Ones never started are recorded as empty at close.
        self._unstarted: dict[int, tuple[Boundary, Frame, dict[str, Any]]] = {}

    def stream_created(self, b: Boundary, frame: Frame, **kw: Any) -> None:
        """Note a generator boundary whose body has not run yet."""
        self._unstarted[frame.seq] = (b, frame, kw)

    def stream_started(self, frame: Frame) -> None:
        """Its body runs now: it will record itself."""
        self._unstarted.pop(frame.seq, None)

    # -- snapshots -------------------------------------------------------------------------

    def _snapshot(self, b: Boundary, value: Any, what: str) -> tuple[bytes, str | None]:
        try:
            return canonical.snapshot(value), None
        except Unserializable as exc:
            if self.strict:
                raise
            if (b.name, what) not in _UNSERIALIZABLE_WARNED:
                _UNSERIALIZABLE_WARNED.add((b.name, what))
                warnings.warn(
                    f"{b.name}: {what} not recorded faithfully: {exc}",
                    ReplayableWarning,
                    stacklevel=4,
                )
            # Keep every field that serializes; only the bad parts become markers.
            clean, _ = canonical.sanitize(value)
            return canonical.snapshot(clean), exc.path

    # -- the step lifecycle ------------------------------------------------------------------

    def begin(self, b: Boundary, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Frame:
        """Open a step: allocate its seq and address and snapshot its input."""
        parent = FRAME.get() or self.root
        ordinal = parent.next_ordinal(b.name)
        frame = Frame(
            seq=next(self._seq), address=parent.child_address(b.name, ordinal), parent=parent
        )
        frame.data, bad = self._snapshot(b, b.bind(args, kwargs), "input")
        if bad is not None:
            frame.meta["unserializable_input"] = bad
        frame.started_at = time.time()
        frame.t0 = time.perf_counter_ns()
        if OBSERVERS:
            for obs in OBSERVERS:
                obs.on_begin(self, b, frame)
        return frame

    def finish(
        self,
        b: Boundary,
        frame: Frame,
        *,
        output: Any = None,
        error: BaseException | None = None,
        key: str | None = None,
        encoded: bool = False,
        served: bool = False,
    ) -> None:
        """Close a step: snapshot its output (or error) and hand it to the writer.

        ``key`` (from a replay) means ``frame.data`` is the redacted input it was computed from;
        ``served`` means the output came from a recording.
        """
        duration = time.perf_counter_ns() - frame.t0
        parent = frame.parent
        if OBSERVERS:
            for obs in OBSERVERS:
                obs.on_finish(self, b, frame, error, duration)
        if self.closed:
            _warn_late(self.run.id, b.name)
            return
        if error is not None and not frame.meta.get("stream"):
            out = b"null"
        else:  # a stream that failed keeps the chunks it yielded before the error
            value = output if encoded else b.encode_output(output)
            out, bad = self._snapshot(b, value, "output")
            if bad is not None:
                frame.meta["unserializable_output"] = bad
        self.writer.submit(
            Pending(
                run_id=self.run.id,
                seq=frame.seq,
                address=frame.address,
                parent_seq=parent.seq if parent is not None and parent.seq >= 0 else None,
                boundary=b,
                input=frame.data,
                output=out,
                error=None if error is None else encode_error(error),
                meta=frame.meta,
                started_at=frame.started_at,
                duration_ns=duration,
                key=key,
                served=served,
            )
        )
        if self.strict and self.writer.error is not None:
            raise self.writer.error

    # -- the four call shapes ----------------------------------------------------------------

    def call(self, b: Boundary, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        frame = self.begin(b, args, kwargs)
        return self._run_sync(b, frame, args, kwargs)

    def _run_sync(
        self, b: Boundary, frame: Frame, args: tuple[Any, ...], kwargs: dict[str, Any], **kw: Any
    ) -> Any:
        token = FRAME.set(frame)
        try:
            result = b.fn(*args, **kwargs)
        except BaseException as exc:
            FRAME.reset(token)
            self.finish(b, frame, error=exc, **kw)
            raise
        FRAME.reset(token)
        self.finish(b, frame, output=result, **kw)
        return result

    async def call_async(self, b: Boundary, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        frame = self.begin(b, args, kwargs)
        return await self._run_async(b, frame, args, kwargs)

    async def _run_async(
        self, b: Boundary, frame: Frame, args: tuple[Any, ...], kwargs: dict[str, Any], **kw: Any
    ) -> Any:
        token = FRAME.set(frame)
        try:
            result = await b.fn(*args, **kwargs)
        except BaseException as exc:
            FRAME.reset(token)
            self.finish(b, frame, error=exc, **kw)
            raise
        FRAME.reset(token)
        self.finish(b, frame, output=result, **kw)
        return result

    def call_gen(self, b: Boundary, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[Any]:
        frame = self.begin(b, args, kwargs)
        self.stream_created(b, frame)
        return self._run_gen(b, frame, args, kwargs)

    def _run_gen(
        self, b: Boundary, frame: Frame, args: tuple[Any, ...], kwargs: dict[str, Any], **kw: Any
    ) -> Iterator[Any]:
        self.stream_started(frame)
        chunks: list[Any] = []
        frame.meta["stream"] = True
        gen = b.fn(*args, **kwargs)
        finished = False
        sent: Any = None
        thrown: BaseException | None = None
        try:
            while True:  # `yield from`, with the step's frame around each resumption
                token = FRAME.set(frame)
                try:
                    if thrown is not None:
                        exc, thrown = thrown, None
                        item = gen.throw(exc)
                    else:
                        item = gen.send(sent)
                except StopIteration:
                    break
                finally:
                    FRAME.reset(token)
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
            finished = True
            self.finish(b, frame, output=chunks, encoded=True, **kw)
            raise
        except BaseException as exc:
            finished = True
            self.finish(b, frame, output=chunks, error=exc, encoded=True, **kw)
            raise
        finally:
            if not finished:
                self.finish(b, frame, output=chunks, encoded=True, **kw)

    def call_agen(
        self, b: Boundary, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncIterator[Any]:
        frame = self.begin(b, args, kwargs)
        self.stream_created(b, frame)
        return self._run_agen(b, frame, args, kwargs)

    async def _run_agen(
        self, b: Boundary, frame: Frame, args: tuple[Any, ...], kwargs: dict[str, Any], **kw: Any
    ) -> AsyncIterator[Any]:
        self.stream_started(frame)
        chunks: list[Any] = []
        frame.meta["stream"] = True
        agen = b.fn(*args, **kwargs)
        finished = False
        sent: Any = None
        thrown: BaseException | None = None
        try:
            while True:  # `async for` plus asend/athrow, with the step's frame around each step
                token = FRAME.set(frame)
                try:
                    if thrown is not None:
                        exc, thrown = thrown, None
                        item = await agen.athrow(exc)
                    else:
                        item = await agen.asend(sent)
                except StopAsyncIteration:
                    break
                finally:
                    FRAME.reset(token)
                chunks.append(b.encode_output(item))
                try:
                    sent = yield item
                except GeneratorExit:
                    raise
                except BaseException as exc:  # thrown in by the consumer: hand it on
                    thrown, sent = exc, None
        except GeneratorExit:
            frame.meta["closed_early"] = True
            await agen.aclose()
            finished = True
            self.finish(b, frame, output=chunks, encoded=True, **kw)
            raise
        except BaseException as exc:
            finished = True
            self.finish(b, frame, output=chunks, error=exc, encoded=True, **kw)
            raise
        finally:
            if not finished:
                self.finish(b, frame, output=chunks, encoded=True, **kw)

    # -- run lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Create the run in the store (through the writer, so a down store never blocks)."""
        run = self.run
        redact_run(run)  # once per run: tags, metadata, environment and argv hold secrets too
        if self.strict:
            self.writer.error = None
        self.writer.run_op(lambda: self.store.create_run(run))

    def close(self, exc: BaseException | None, *, status: str | None = None) -> None:
        """Finish the run: status, end time, head hash; then flush everything to the store.

        ``status`` overrides the default (``error`` when ``exc`` is set, else ``ok``); a replay
        that found divergences finishes as ``diverged``.
        """
        run = self.run
        for b, frame, kw in list(self._unstarted.values()):
            frame.meta.update(stream=True, never_started=True)
            self.finish(b, frame, output=[], encoded=True, **kw)
        self._unstarted.clear()
        self.closed = True
        run.ended_at = time.time()
        run.status = status or ("error" if exc is not None else "ok")
        if exc is not None:
            run.error = redact(encode_error(exc))
        run.metadata = redact(run.metadata)  # a replay adds its divergences here at exit

        def finish() -> None:
            run.event_count, run.head_hash = self.writer.head(run.id)
            self.store.finish_run(run)

        self.writer.run_op(finish)
        # Fail-open: with the store already failing, do not hold the agent for long at exit.
        self.writer.flush(timeout=1.0 if self.writer.failing else 30.0)
        if self.strict and self.writer.error is not None and exc is None:
            raise self.writer.error


def reset_context(tokens: list[contextvars.Token[Any]]) -> None:
    """Restore the session and frame variables; a block exited in another context (an async
    context manager finished by a different task) clears them instead of failing."""
    for var, token in zip((SESSION, FRAME), tokens, strict=True):
        try:
            var.reset(token)  # type: ignore[attr-defined]
        except ValueError:
            var.set(None)  # type: ignore[attr-defined]


class Recording(AsyncToo[Run]):
    """Context manager returned by :func:`record` (use with ``with`` or ``async with``)."""

    def __init__(self, session_factory: Any) -> None:
        self._factory = session_factory
        self._session: Recorder | None = None
        self._tokens: list[contextvars.Token[Any]] = []

    def __enter__(self) -> Run:
        if SESSION.get() is not None:
            raise ReplayableError("a record or replay is already active in this context")
        session: Recorder = self._factory()
        self._session = session
        session.start()
        self._tokens = [SESSION.set(session), FRAME.set(session.root)]
        return session.run

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._session is not None
        try:
            reset_context(self._tokens)
        finally:
            self._session.close(exc)


def record(
    store: Store | str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    tags: Mapping[str, Any] | Iterable[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    strict: bool = False,
) -> Recording:
    """Record every boundary call made inside the block into ``store`` (default: SQLite).

    The run captures its environment (package and code version, Python, platform, host) and its
    outcome. Recording is fail-open: a store that is down costs the agent nothing but a logged
    warning; ``strict=True`` makes store errors and unserializable values fatal instead.

    >>> with record(name="support", tags={"env": "prod"}) as run:
    ...     agent("delete Bob's record")
    >>> run.id, run.status
    """
    opened = open_store(store)

    def make() -> Recorder:
        run = Run(
            id=new_run_id(),
            name=name,
            tags=_tags(tags),
            metadata=dict(metadata or {}),
            environment=environment(),
            started_at=time.time(),
            store=opened,
        )
        return Recorder(opened, run, strict=strict)

    return Recording(make)
