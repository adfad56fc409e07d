"""``rp.record``: record every boundary call of a run into a store.

Inputs are snapshotted when a call starts and outputs when it returns (agents mutate message
lists in place); everything else happens on the background writer (:mod:`replayable._writer`).
"""

from __future__ import annotations

import logging
import os
import platform
import random
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterable, Mapping
from functools import lru_cache
from types import TracebackType
from typing import TYPE_CHECKING, Any

from replayable import _network
from replayable._cut import max_value_bytes as max_value_bytes_for
from replayable._engine import Ending, Engine, Serve, Sink, snapshot
from replayable._errors_codec import encode_error
from replayable._pii import PII, Pseudonymizer, for_record
from replayable._sampling import Keep, SampledSink, Sampling
from replayable._sampling import for_record as sampling_for_record
from replayable._threads import EXECUTOR
from replayable._version import __version__
from replayable._writer import STALL_S, Pending, flush_all, writer_for
from replayable.context import AsyncToo, Frame, reset_context
from replayable.errors import ReplayableWarning
from replayable.redact import redact, redact_argv, redact_run
from replayable.store import Store, open_store
from replayable.trace import Run, RunStatus

if TYPE_CHECKING:
    pass

__all__ = [
    "RecordPolicy",
    "Recorder",
    "Recording",
    "ReplayableWarning",
    "environment",
    "flush",
    "new_run_id",
    "record",
    "reset_context",
]

log = logging.getLogger("replayable")


# A generator of our own: drawing ids from the global ``random`` would shift the agent's own
# random sequence (and an agent that seeds it would get repeating ids). Seeded from the OS once,
# reseeded in a forked child; no system call per id.
_IDS = random.Random()
os.register_at_fork(after_in_child=_IDS.seed)


def new_run_id() -> str:
    """A sortable run id: 12 hex digits of milliseconds, then 8 random hex digits."""
    return f"{int(time.time() * 1000):012x}{_IDS.getrandbits(32):08x}"


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
    env = _environment(os.getpid(), os.environ.get("REPLAYABLE_BUILD_ID"), tuple(sys.argv))
    return {**env, "argv": list(env["argv"])}


@lru_cache(maxsize=4)
def _environment(pid: int, build: str | None, argv: tuple[str, ...]) -> dict[str, Any]:
    """:func:`environment` of one process (keyed by pid: a forked child has its own)."""
    commit, dirty = _git_commit()
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
        "pid": pid,
        "argv": redact_argv(list(argv)),  # --api-key X, URLs with a password
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


class Recorder:
    """The record keeper: each call is kept as an event of ``run`` handed to ``sink`` (by
    default the store's background writer), and the run is started and closed in it.

    Every mode that records its run (record, replay, what-if, check) keeps its steps here.
    With ``pii`` (a run's pseudonymizer), personal data is pseudonymized in every value kept.
    """

    def __init__(
        self,
        store: Store,
        run: Run,
        *,
        strict: bool = False,
        sink: Sink | None = None,
        pii: Pseudonymizer | None = None,
        max_value_bytes: int | None = None,
    ) -> None:
        self.store = store
        self.pii = pii
        """Personal data pseudonymized in every recorded value (:mod:`replayable._pii`)."""
        self.run = run
        self.strict = strict
        self.writer: Sink = sink if sink is not None else writer_for(store)
        self.max_value_bytes = max_value_bytes_for(max_value_bytes)
        """The size cap of a stored input or output (:mod:`replayable._cut`): over it, a
        value is stored cut."""
        self.closed = False
        self.refer_to: str | None = None
        """A run in the same store whose served events this run keeps as references."""

    def observe_begin(self, frame: Frame) -> None:
        """Tell live observers (OpenTelemetry) a step began."""
        if OBSERVERS:
            for obs in OBSERVERS:
                obs.on_begin(self, frame.b, frame)

    def keep(self, frame: Frame, outcome: Ending) -> None:
        """Keep the call as an event: its input, its output (or error), its metadata."""
        b = frame.b
        assert b is not None
        duration = time.perf_counter_ns() - frame.t0
        parent = frame.parent
        error = outcome.error
        if OBSERVERS:
            for obs in OBSERVERS:
                obs.on_finish(self, b, frame, error, duration)
        if self.closed:
            _warn_late(self.run.id, b.name)
            return
        served = outcome.served
        source = None
        if served is not None:
            source = served.source if self.refer_to is not None else None
            # With a source, the writer stores a reference to it instead of the output.
            out = (
                b"null"
                if source is not None
                else snapshot(frame, served.output, "output", strict=self.strict)
            )
        elif outcome.output is not None:
            out = outcome.output  # a stream that failed keeps the chunks it yielded
        else:
            out = b"null"
        # Positional, in field order (a class called with keywords builds a dict first, and
        # this runs on every call): run_id, seq, address, parent_seq, boundary, input, output,
        # error, meta, started_at, duration_ns, key, served, source, source_run, same_input,
        # pii.
        self.writer.submit(
            Pending(
                self.run.id,
                frame.seq,
                frame.address,
                parent.seq if parent is not None and parent.seq >= 0 else None,
                b,
                frame.data,
                out,
                None if error is None else encode_error(error),
                frame.meta,
                frame.started_at,
                duration,
                frame.key,
                served is not None,
                source,
                self.refer_to or "",
                source is not None and frame.same_input,
                self.pii,
                self.max_value_bytes,
            )
        )
        if self.strict and self.writer.error is not None:
            raise self.writer.error

    # -- run lifecycle -----------------------------------------------------------------------

    def start(self) -> None:
        """Create the run in the store (through the writer, so a down store never blocks)."""
        run = self.run
        redact_run(run)  # once per run: tags, metadata, environment and argv hold secrets too
        if self.pii is not None:
            self.pii.run(run)
        if self.strict:
            self.writer.error = None
        self.writer.begin_run(run)

    def close(self, exc: BaseException | None, *, status: RunStatus | None = None) -> None:
        """Finish the run: status and end time, then hand it to the writer, which seals it
        (head hash, event count, signature) and stores it. Only ``strict`` waits for that.

        Reads in this process wait for the hand-off first (read your writes): the store's
        reads, and the run's sealed fields (:meth:`Writer.sealing`).

        ``status`` overrides the default (``error`` when ``exc`` is set, else ``ok``); a replay
        that found divergences finishes as ``diverged``.
        """
        run = self.run
        self.closed = True
        run.ended_at = time.time()
        run.status = status or ("error" if exc is not None else "ok")
        if exc is not None:
            run.error = redact(encode_error(exc))
        run.metadata = redact(run.metadata)  # a replay adds its divergences here at exit
        if self.pii is not None:
            self.pii.run(run)

        self.writer.end_run(run)
        if self.strict:
            # Written here, on the agent's thread, when the store allows (``Writer.flush``).
            self.writer.flush(timeout=1.0 if self.writer.failing else 30.0, stall_limit=STALL_S)
            if self.writer.error is not None and exc is None:
                raise self.writer.error


def flush(timeout: float | None = None) -> bool:
    """Wait until every run recorded in this process so far is in its store.

    A ``record`` block hands its run to a background writer and returns at once. Reads through
    replayable in this process wait for that by themselves (read your writes); call ``flush``
    before anything else reads the store (another process, ``sqlite3``, a second store object)
    or before exiting in a way that skips ``atexit`` (``os._exit``). Returns True when all of
    it is stored; False when ``timeout`` seconds passed first or a store is refusing writes
    (the writer keeps them and retries).

    >>> from replayable import boundary
    >>> add = boundary(kind="tool")(lambda a, b: a + b)
    >>> with record(name="flushed"):
    ...     add(2, 3)
    5
    >>> stored = flush()  # True once every run so far is in its store
    """
    return flush_all(timeout)


class RecordPolicy:
    """The record policy: every call runs live, and ``keeper`` keeps it."""

    serves_recordings = False

    def __init__(self, keeper: Recorder) -> None:
        self.keeper = keeper

    def at_start(self, frame: Frame) -> Serve | None:
        """Recording runs every call live."""
        self.keeper.observe_begin(frame)
        return None

    def at_end(self, frame: Frame, outcome: Ending) -> None:
        """Keep the call."""
        self.keeper.keep(frame, outcome)

    def function(self, frame: Frame) -> Callable[..., Any]:
        """The boundary's own function."""
        b = frame.b
        assert b is not None
        return b.fn


class Recording(AsyncToo[Run]):
    """Context manager returned by :func:`record` (use with ``with`` or ``async with``)."""

    def __init__(self, keeper_factory: Callable[[], Recorder]) -> None:
        self._factory = keeper_factory
        self._keeper: Recorder | None = None
        self._engine: Engine | None = None

    def __enter__(self) -> Run:
        keeper = self._factory()
        engine = Engine(
            RecordPolicy(keeper),
            unserializable="raise" if keeper.strict else "mark",
            run=keeper.run,
        )
        engine.enter()
        try:
            keeper.start()
        except BaseException:
            engine.leave()
            raise
        self._keeper, self._engine = keeper, engine
        EXECUTOR.acquire()
        _network.enter(engine, replay=False)
        return keeper.run

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        assert self._keeper is not None
        assert self._engine is not None
        _network.leave(self._engine)
        EXECUTOR.release()
        try:
            self._engine.leave()
        finally:
            self._keeper.close(exc)


def record(
    store: Store | str | os.PathLike[str] | None = None,
    *,
    name: str | None = None,
    tags: Mapping[str, Any] | Iterable[str] | None = None,
    metadata: Mapping[str, Any] | None = None,
    strict: bool = False,
    pii: PII | bool | None = None,
    sample: float | None = None,
    keep: Keep | Callable[[Run], bool] | None = None,
    max_value_bytes: int | None = None,
) -> Recording:
    """Record every boundary call made inside the block into ``store`` (default: SQLite).

    The run captures its environment (package and code version, Python, platform, host) and its
    outcome. Recording is fail-open: a store that is down costs the agent nothing but a logged
    warning; ``strict=True`` makes store errors and unserializable values fatal instead.

    ``pii=True`` (or ``pii=rp.PII(...)``) replaces personal data in every recorded value with
    keyed, shape-keeping pseudonyms before anything is written; the default is the store's
    (``rp.open_store(url, pii=...)``), else ``$REPLAYABLE_PII``. See ``docs/personal-data.md``.

    ``sample=0.05`` keeps 5% of runs, decided from the run's trace id (so every service of a
    distributed run decides alike), and every run a tail rule of ``keep`` names (default
    ``rp.Keep()``: a run with an error, a side effect or an ``rp.flag``); the others are held
    in memory until they end, then dropped and counted. The default is the store's
    (``rp.open_store(url, sample=...)``), else ``$REPLAYABLE_SAMPLE``. See
    ``docs/recording.md``.

    ``max_value_bytes`` caps a stored input or output (default 1 MiB, or
    ``$REPLAYABLE_MAX_VALUE_BYTES``): a value over it is stored cut, with its length and digest,
    and a replay refuses to serve it unless its boundary says ``serve_cut=True``.

    >>> from replayable import boundary
    >>> lookup = boundary(kind="tool")(lambda name: {"name": name, "id": 7})
    >>> with record(name="support", tags={"env": "prod"}) as run:
    ...     lookup("Bob")["id"]
    7
    >>> run.status, [e.output for e in run.events()]
    ('ok', [{'name': 'Bob', 'id': 7}])
    """
    opened = open_store(store)
    pseudonymizer = for_record(pii, opened)  # a missing key fails here, before the run
    sampling: Sampling | None = sampling_for_record(sample, keep, opened)
    cap = max_value_bytes_for(max_value_bytes)

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
        sink = None if sampling is None else SampledSink(writer_for(opened), sampling, run)
        return Recorder(
            opened, run, strict=strict, pii=pseudonymizer, sink=sink, max_value_bytes=cap
        )

    return Recording(make)
