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
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, ParamSpec, TypeVar

if TYPE_CHECKING:
    from replayable._engine import Serve
    from replayable.boundary import Boundary

__all__ = [
    "AsyncToo",
    "Frame",
    "Session",
    "annotate",
    "bind",
    "current_frame",
    "current_session",
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
    sorted_data: bytes | None = None

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
