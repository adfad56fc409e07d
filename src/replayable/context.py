"""The context that follows a call: which session is active and which step is the parent.

Two context variables carry everything. ``asyncio`` tasks and ``asyncio.to_thread`` copy them,
and so does ``loop.run_in_executor`` while a run is active (see :mod:`replayable._threads`); a
raw thread pool does not, so wrap the callable with :func:`bind` (a boundary called there while
a run is active warns, naming ``rp.bind``).
"""

from __future__ import annotations

import contextvars
import functools
import itertools
import threading
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

from replayable._warn import warn
from replayable.errors import ReplayableError, SideEffectRefused

if TYPE_CHECKING:
    from replayable._engine import Serve
    from replayable._follow import Follow
    from replayable.boundary import Boundary
    from replayable.errors import Divergence
    from replayable.trace import Event, Run

__all__ = [
    "ACTIVE",
    "AsyncToo",
    "Frame",
    "Session",
    "activate",
    "annotate",
    "bind",
    "current_frame",
    "current_session",
    "deactivate",
    "enter",
    "leave",
    "orphan_call",
    "refuse_nested",
    "reset_context",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")


@dataclass(slots=True)
class Frame:
    """One step being executed: the parent of the calls made inside it.

    ``rec_seq`` is, during a replay, the recorded event this step was matched to (``None`` at the
    root, ``-1`` when the step has no recorded counterpart). ``b`` is the boundary called,
    ``data`` its input snapshot, ``key`` its key once a mode computed it, ``serve`` what the mode
    serves instead of running it (``None``: it runs live).

    ``meta`` is the step's recorded metadata: it is stored and hashed with the event. What a
    policy notes for itself between ``at_start`` and ``at_end`` goes in ``how`` (a what-if's
    ``"live"``/``"faked"``, a replay's ``"fallback"``, a cassette's ``"miss"``) and ``scratch``
    (anything else, e.g. a what-if's input changes): never stored.
    """

    seq: int
    address: str
    rec_seq: int | None = None
    meta: dict[str, Any] = field(default_factory=dict)
    counters: dict[str, Iterator[int]] = field(default_factory=dict)
    parent: Frame | None = None
    data: bytes = b"null"
    started_at: float = 0.0
    t0: int = 0
    b: Boundary | None = None
    key: str | None = None
    serve: Serve | None = None
    same_input: bool = False
    """The input is byte for byte the recorded call's this step was matched to."""
    how: str | None = None
    scratch: Any = None

    def next_child(self, name: str) -> str:
        """The address of the next child call named ``name``: this address, then
        ``name/ordinal``, the ordinal counting this step's calls of ``name`` from 0 in start
        order."""
        try:
            counter = self.counters[name]
        except KeyError:
            counter = self.counters.setdefault(name, itertools.count())
        ordinal = next(counter)
        return f"{self.address} > {name}/{ordinal}" if self.address else f"{name}/{ordinal}"


class Session:
    """What a boundary hands its call to while a record or replay is active."""

    serves_recordings: bool = False
    """Whether calls may be served from a recording (a side effect called outside the
    session's context is then refused rather than fired for real)."""
    run: Run | None = None
    """The run this session records (a record's, a replay's own run), if any."""
    source: Run | None = None
    """The recorded run this session replays, if any."""
    source_events: Mapping[int, Event] | None = None
    """The recorded run's events by seq, when the session replays one."""
    follow: Follow | None = None
    """A replay's follow part (:class:`replayable._follow.Follow`): its remote calls named live
    ask their callee to replay its linked run (``None``: they do not)."""

    def add_divergence(self, div: Divergence) -> None:
        """Keep a divergence found elsewhere (a followed callee's replay); a session that
        replays nothing has nowhere to keep it."""

    orphans_warned: set[str]
    """Boundaries warned about being called outside this session's context."""

    def call(self, b: Boundary, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        raise NotImplementedError

    async def call_async(self, b: Boundary, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        raise NotImplementedError

    def call_gen(self, b: Boundary, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Iterator[Any]:
        raise NotImplementedError

    def call_agen(
        self, b: Boundary, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> AsyncIterator[Any]:
        raise NotImplementedError


SESSION: contextvars.ContextVar[Session | None] = contextvars.ContextVar(
    "replayable_session", default=None
)
FRAME: contextvars.ContextVar[Frame | None] = contextvars.ContextVar(
    "replayable_frame", default=None
)


ACTIVE: dict[int, Session] = {}
"""Sessions active anywhere in the process, by id (a boundary with no session in its context
checks this to tell "no run at all" from "a run this thread was not given")."""
_ACTIVE_LOCK = threading.Lock()


def activate(session: Session) -> None:
    """Note a session as active in the process."""
    with _ACTIVE_LOCK:
        ACTIVE[id(session)] = session


def deactivate(session: Session) -> None:
    """Note a session as no longer active."""
    with _ACTIVE_LOCK:
        ACTIVE.pop(id(session), None)


Tokens = tuple["contextvars.Token[Session | None]", "contextvars.Token[Frame | None]"]


def refuse_nested() -> None:
    """Raise when a session is active in this context already (they do not nest)."""
    if SESSION.get() is not None:
        raise ReplayableError(
            "a record, replay or cassette is already active in this context: finish it "
            "before starting another (nesting them is not supported)"
        )


def enter(session: Session, root: Frame) -> Tokens:
    """Make ``session`` the active one in this context, with ``root`` as the parent step of
    the calls made in it: the one way every record, replay, cassette and re-run enters."""
    refuse_nested()
    tokens = (SESSION.set(session), FRAME.set(root))
    activate(session)
    return tokens


def leave(session: Session, tokens: Tokens) -> None:
    """Undo :func:`enter`. A block left in another context (an async context manager finished
    by a different task) clears the variables instead of failing."""
    deactivate(session)
    reset_context(tokens)


def reset_context(tokens: Tokens) -> None:
    """Restore the session and frame variables; tokens from another context clear them."""
    try:
        SESSION.reset(tokens[0])
    except ValueError:
        SESSION.set(None)
    try:
        FRAME.reset(tokens[1])
    except ValueError:
        FRAME.set(None)


def orphan_call(b: Boundary) -> None:
    """A boundary was called with no session in its context while one is active elsewhere:
    most likely a thread started without the caller's context. Warn once per session and
    boundary; refuse a side effect while a replay is active (it would fire for real)."""
    sessions = list(ACTIVE.values())
    if not sessions:
        return
    if b.side_effects and any(s.serves_recordings for s in sessions):
        raise SideEffectRefused(
            f"{b.name} has side effects and was called outside the replay's context (in a "
            "thread started with loop.run_in_executor or a thread pool?): it would fire for "
            "real. Wrap the callable with rp.bind(fn) so the call is replayed"
        )
    warned = sessions[0].orphans_warned
    if b.name not in warned:
        warned.add(b.name)
        warn(
            f"{b.name} was called outside the active record/replay's context (in a thread "
            "started with loop.run_in_executor or a thread pool?), so it is neither recorded "
            "nor replayed; wrap the callable with rp.bind(fn)",
        )


def current_session() -> Session | None:
    """The active record or replay session in this context, if any."""
    return SESSION.get()


def current_frame() -> Frame | None:
    """The step currently executing in this context, if any."""
    return FRAME.get()


def annotate(**fields: Any) -> None:
    """Attach metadata (JSON-able) to the step currently executing; a no-op outside a run.

    >>> import replayable as rp
    >>> @rp.boundary(kind="llm")
    ... def complete(prompt: str) -> str:
    ...     annotate(model="gpt-4o", system_fingerprint="fp_1")
    ...     return "ok"
    >>> with rp.record() as run:
    ...     complete("hi")
    'ok'
    >>> next(run.events()).meta["model"]
    'gpt-4o'
    """
    frame = FRAME.get()
    if frame is not None and SESSION.get() is not None:
        frame.meta.update(fields)


def bind(fn: Callable[P, R]) -> Callable[P, R]:
    """Wrap ``fn`` so it runs in the current context, e.g. when submitted to a thread pool.

    >>> import replayable as rp
    >>> from concurrent.futures import ThreadPoolExecutor
    >>> fetch = rp.boundary(kind="tool")(lambda url: len(url))
    >>> with rp.record() as run, ThreadPoolExecutor(2) as pool:
    ...     pool.submit(bind(fetch), "https://example.com").result()
    19
    >>> [e.address.split(":")[-1] for e in run.events()]
    ['<lambda>/0']
    """
    ctx = contextvars.copy_context()

    @functools.wraps(fn)
    def bound(*args: P.args, **kwargs: P.kwargs) -> R:
        return ctx.copy().run(fn, *args, **kwargs)

    return bound


class AsyncToo(Generic[T]):
    """A context manager usable with ``with`` and ``async with``: entering and leaving do nothing
    worth awaiting, so the async protocol runs the sync one."""

    def __enter__(self) -> T:
        raise NotImplementedError

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        raise NotImplementedError

    async def __aenter__(self) -> T:
        return self.__enter__()

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.__exit__(exc_type, exc, tb)
