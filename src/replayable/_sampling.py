"""Sampling: keep a share of ordinary runs, and every run a tail rule names.

**Head.** ``rp.record(sample=0.05)`` keeps a run when its W3C trace id falls in the rate: the
id's low 64 bits against ``rate * 2**64``, as OpenTelemetry's ``TraceIdRatioBased`` sampler
decides. The trace id travels with every request the run makes (``traceparent``), and a run
that a request starts takes the caller's, so every service of a distributed run decides alike;
a service sampling at a higher rate keeps a superset of what a lower rate keeps.

**Tail.** A run the head does not keep is held in memory (its steps as the agent's thread
snapshotted them: nothing keyed, redacted or written) until a rule of :class:`Keep` keeps it or
it ends: a step that raised or a run that failed (``errors``), a call to a side-effect boundary
(``side_effects``), :func:`flag` called inside the run (``flags``), a run slower than
``slower_than`` seconds, or ``when(run)`` true of the finished run. Kept, its held steps go to
the writer and the rest stream there as usual; dropped at its end, it costs no writing at all.

**Bound.** Held steps count against one process-wide bound, :attr:`Keep.hold_bytes` of
snapshots (default 64 MiB). A step that would pass it keeps its run instead (``kept_by:
"hold_bound"``, one warning a process): a run a rule would have kept is never lost to the
bound, and memory stays bounded at the price of storing more runs than the rate while runs
pile up undecided.

A kept run says why in ``metadata["sampling"]`` (``{"rate": 0.05, "kept_by": "rate"}``);
each store counts kept runs by reason and dropped runs (``replayable stats``, the viewer).
"""

from __future__ import annotations

import logging
import os
import re
import threading
import time
import weakref
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from replayable import _propagation as prop
from replayable.context import SESSION

if TYPE_CHECKING:
    from replayable._writer import Pending, Writer
    from replayable.trace import Run

__all__ = [
    "COUNTER_DROPPED",
    "COUNTER_KEPT",
    "HOLD_BYTES",
    "SAMPLE_ENV",
    "Keep",
    "SampledSink",
    "Sampling",
    "describe",
    "flag",
    "for_record",
    "head_keeps",
    "held_bytes",
    "set_store_default",
    "summary",
]

log = logging.getLogger("replayable")

SAMPLE_ENV = "REPLAYABLE_SAMPLE"
"""The default head-sampling rate of every run (``0.05``), when neither ``record(sample=)`` nor
the store (``open_store(url, sample=...)``) says."""
HOLD_BYTES = 64 << 20
"""Default bound on the snapshots held for undecided runs, process-wide."""
COUNTER_KEPT = "sampling.kept."
"""Prefix of the store counters of kept runs, one per reason (``sampling.kept.error``)."""
COUNTER_DROPPED = "sampling.dropped"
"""The store counter of dropped runs."""
FLAGS = "flags"
"""The run metadata key :func:`flag` appends to."""
SAMPLING = "sampling"
"""The run metadata key that says a run was sampled, at what rate and why it was kept."""

_TRACE_ID = re.compile(r"[0-9a-f]{32}")
_LIMIT = 1 << 64


def head_keeps(trace_id: str, rate: float) -> bool:
    """True when a trace id falls in the head sample at ``rate`` (its low 64 bits below
    ``rate * 2**64``): the decision OpenTelemetry's ``TraceIdRatioBased`` sampler makes."""
    return int(trace_id[16:], 16) < round(rate * _LIMIT)


@dataclass(frozen=True, slots=True)
class Keep:
    """The tail rules of a sampled recording: a run any rule names is kept whatever the rate.

    ``errors``: a step raised, or the run failed. ``side_effects``: the run called a boundary
    with ``side_effects=True``. ``flags``: :func:`flag` was called inside the run.
    ``slower_than``: the run took longer than this many seconds. ``when``: a predicate given
    the finished :class:`~replayable.Run` (status, error, tags, metadata with its flags,
    duration; its steps are not stored yet). ``hold_bytes``: the process-wide bound on the
    snapshots held for runs not yet decided (see the module docstring for what happens there).

    >>> import replayable as rp
    >>> keep = rp.Keep(slower_than=2.0, when=lambda run: run.tags.get("tier") == "gold")
    >>> dropped = {"trace_id": "0" * 16 + "f" * 16}  # a trace id the 5% rate does not keep
    >>> with rp.record(sample=0.05, keep=keep, tags={"tier": "gold"}, metadata=dropped) as run:
    ...     pass
    >>> run.metadata["sampling"]["kept_by"]
    'predicate'
    """

    errors: bool = True
    side_effects: bool = True
    flags: bool = True
    slower_than: float | None = None
    when: Callable[[Run], bool] | None = None
    hold_bytes: int = HOLD_BYTES

    @classmethod
    def nothing(cls) -> Keep:
        """No tail rule: the head decides alone."""
        return cls(errors=False, side_effects=False, flags=False)


@dataclass(frozen=True, slots=True)
class Sampling:
    """A head rate and its tail rules: what a sampled run records under."""

    rate: float
    keep: Keep

    def decide(self, run: Run) -> bool:
        """The head decision for ``run``, from its trace id (given one if it has none: the
        current OpenTelemetry span's, else a new one, which its requests then carry)."""
        trace_id = run.metadata.get("trace_id")
        if not (isinstance(trace_id, str) and _TRACE_ID.fullmatch(trace_id)):
            trace_id = run.metadata["trace_id"] = prop.start_trace_id()
        return head_keeps(trace_id, self.rate)


def _rate(value: Any, where: str) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise TypeError(f"{where} takes a rate between 0 and 1, not {value!r}")
    rate = float(value)
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"{where}={value!r}: a sampling rate is between 0 and 1 (0.05 keeps 5%)")
    return rate


def _keep(value: Keep | Callable[[Run], bool] | None) -> Keep:
    if value is None:
        return Keep()
    if isinstance(value, Keep):
        return value
    if callable(value):
        return Keep(when=value)
    raise TypeError(f"keep= takes rp.Keep(...) or a predicate over the finished run, not {value!r}")


_STORE_DEFAULTS: weakref.WeakKeyDictionary[Any, Sampling] = weakref.WeakKeyDictionary()


def set_store_default(store: Any, sample: float | None, keep: Any = None) -> None:
    """Make ``sample`` (with ``keep``) the default of every run recorded into ``store``
    (``None`` clears it)."""
    if sample is None:
        _STORE_DEFAULTS.pop(store, None)
    else:
        _STORE_DEFAULTS[store] = Sampling(_rate(sample, "sample"), _keep(keep))


def for_record(sample: float | None, keep: Any, store: Any) -> Sampling | None:
    """What a new run records under: ``sample=`` as given, else the store's default, else
    ``$REPLAYABLE_SAMPLE``; ``None`` (record every run) when none is set or the rate is 1."""
    if sample is None:
        default = _STORE_DEFAULTS.get(store)
        if default is not None:
            if keep is None:
                return default if default.rate < 1.0 else None
            sample = default.rate
    if sample is None:
        text = os.environ.get(SAMPLE_ENV, "").strip()
        if not text:
            return None
        try:
            sample = float(text)
        except ValueError:
            raise ValueError(
                f"${SAMPLE_ENV}={text!r}: set a rate between 0 and 1 (0.05 keeps 5%), or unset it"
            ) from None
    rate = _rate(sample, "sample")
    return Sampling(rate, _keep(keep)) if rate < 1.0 else None


class _Held:
    """The snapshot bytes held for undecided runs, process-wide."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.total = 0
        self.warned = False

    def add(self, n: int, limit: int) -> bool:
        """Hold ``n`` more bytes; False (nothing added) when that would pass ``limit``."""
        with self.lock:
            if self.total + n > limit:
                return False
            self.total += n
            return True

    def release(self, n: int) -> None:
        with self.lock:
            self.total -= n


_HELD = _Held()


def held_bytes() -> int:
    """Snapshot bytes held right now for runs not yet decided (tests, diagnostics)."""
    return _HELD.total


class SampledSink:
    """The sink of one sampled run, in front of its store's writer.

    A run the head keeps goes straight through. Otherwise its start and steps are held until
    a tail rule keeps it (all of it is handed to the writer, then the rest streams) or it ends
    undecided (dropped: counted in the store, nothing else written).
    """

    def __init__(self, writer: Writer, sampling: Sampling, run: Run) -> None:
        self.writer = writer
        self.rate = sampling.rate
        self.keep = sampling.keep
        self.run = run
        self.kept_by: str | None = "rate" if sampling.decide(run) else None
        self._held: list[Pending] | None = None if self.kept_by else []
        self._size = 0
        self._began = False
        self._lock = threading.Lock()
        self._t0 = time.monotonic()

    # -- what the recorder asks of a sink (the writer's own) ---------------------------------

    @property
    def error(self) -> BaseException | None:
        """The writer's error (``strict``)."""
        return self.writer.error

    @error.setter
    def error(self, value: BaseException | None) -> None:
        self.writer.error = value

    @property
    def failing(self) -> bool:
        """The writer's store rejects writes."""
        return self.writer.failing

    def flush(self, timeout: float | None = 30.0, *, stall_limit: float | None = None) -> bool:
        """The writer's flush (a held run is not queued: nothing of it to wait for)."""
        return self.writer.flush(timeout, stall_limit=stall_limit)

    def begin_run(self, run: Run) -> None:
        """Start the run in the store now when the head kept it; hold its start otherwise."""
        with self._lock:
            if self._held is None:
                self._began = True
                self.writer.begin_run(run)

    def submit(self, item: Pending) -> None:
        """Hand a step to the writer, or hold it while the run is undecided."""
        if self._held is None:
            self.writer.submit(item)
            return
        with self._lock:
            held = self._held
            if held is None:  # kept by another thread meanwhile
                self.writer.submit(item)
                return
            held.append(item)
            reason = self._step_rule(item)
            if reason is None:
                n = len(item.input) + len(item.output)
                if _HELD.add(n, self.keep.hold_bytes):
                    self._size += n
                    return
                reason = "hold_bound"
                self._warn_bound()
            self._release(reason)

    def end_run(self, run: Run) -> None:
        """Keep the run (a tail rule, or the head) or drop it; count either in the store."""
        with self._lock:
            if self._held is not None:
                reason = self._end_rule(run)
                if reason is None:
                    self._drop()
                    return
                self._release(reason)
            assert self.kept_by is not None
            run.metadata[SAMPLING] = {"rate": self.rate, "kept_by": self.kept_by}
            self.writer.count(COUNTER_KEPT + self.kept_by)
            self.writer.end_run(run)

    # -- deciding ----------------------------------------------------------------------------

    def _step_rule(self, item: Pending) -> str | None:
        keep = self.keep
        if keep.errors and item.error is not None:
            return "error"
        if keep.side_effects and item.boundary.side_effects:
            return "side_effect"
        if keep.flags and self.run.metadata.get(FLAGS):
            return "flag"
        slower = keep.slower_than
        if slower is not None and time.monotonic() - self._t0 > slower:
            return "slow"
        return None

    def _end_rule(self, run: Run) -> str | None:
        keep = self.keep
        if keep.errors and run.status == "error":
            return "error"
        if keep.flags and run.metadata.get(FLAGS):
            return "flag"
        if keep.slower_than is not None and time.monotonic() - self._t0 > keep.slower_than:
            return "slow"
        if keep.when is not None:
            try:
                if keep.when(run):
                    return "predicate"
            except Exception as exc:  # a broken predicate keeps the run rather than lose it
                log.warning(
                    "replayable: the keep predicate raised on run %s (%s: %s); the run is kept",
                    run.id,
                    type(exc).__name__,
                    exc,
                )
                return "predicate_failed"
        return None

    def _release(self, reason: str) -> None:
        """Keep the run: its start and held steps go to the writer (holding ``_lock``)."""
        held = self._held or []
        self._held = None
        self.kept_by = reason
        _HELD.release(self._size)
        self._size = 0
        if not self._began:
            self._began = True
            self.writer.begin_run(self.run)
        for item in held:
            self.writer.submit(item)

    def _drop(self) -> None:
        self._held = []
        self.run.metadata[SAMPLING] = {"rate": self.rate, "kept_by": None}
        _HELD.release(self._size)
        self._size = 0
        self.writer.count(COUNTER_DROPPED)

    def _warn_bound(self) -> None:
        if not _HELD.warned:
            _HELD.warned = True
            log.warning(
                "replayable: runs not yet sampled hold %d bytes (Keep.hold_bytes); run %s is "
                "kept instead of held further (counted as kept_by hold_bound in the store)",
                self.keep.hold_bytes,
                self.run.id,
            )


def flag(reason: str) -> None:
    """Flag the run recording now: ``reason`` is kept in its metadata (``flags``), and a
    sampled recording keeps a flagged run whatever its rate. A no-op outside a run.

    >>> import replayable as rp
    >>> with rp.record(sample=0.0) as run:   # the head keeps nothing...
    ...     rp.flag("refund over limit")     # ...but a flagged run is kept
    >>> run.metadata["flags"], run.metadata["sampling"]["kept_by"]
    (['refund over limit'], 'flag')
    """
    if not isinstance(reason, str):
        raise TypeError(f"rp.flag takes a reason as a string, not {reason!r}")
    run = getattr(SESSION.get(), "run", None)
    if run is None:
        return
    flags = run.metadata.get(FLAGS)
    if not isinstance(flags, list):
        flags = run.metadata[FLAGS] = []
    flags.append(reason[:1000])


def summary(store: Any) -> dict[str, Any]:
    """What sampling kept and dropped in ``store``, from its counters: ``{"kept": n,
    "dropped": n, "kept_by": {reason: n}}``; empty when nothing was sampled into it (or the
    store keeps no counters)."""
    from replayable.store.base import Counters

    if not isinstance(store, Counters):
        return {}
    counts = store.counts()
    kept_by = {
        name[len(COUNTER_KEPT) :]: n for name, n in counts.items() if name.startswith(COUNTER_KEPT)
    }
    dropped = counts.get(COUNTER_DROPPED, 0)
    if not kept_by and not dropped:
        return {}
    return {
        "kept": sum(kept_by.values()),
        "dropped": dropped,
        "kept_by": dict(sorted(kept_by.items())),
    }


def describe(sampled: dict[str, Any]) -> str:
    """One line for people: ``512 runs kept (rate 500, error 12), 9,488 dropped``."""
    if not sampled:
        return ""
    reasons = ", ".join(f"{k} {n:,}" for k, n in sampled["kept_by"].items())
    return f"sampling: {sampled['kept']:,} runs kept ({reasons}), {sampled['dropped']:,} dropped"
