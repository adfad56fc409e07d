"""``fuzz``: test a fix on more than the one sample that broke.

Hypothesis perturbs the recorded outputs of chosen boundaries (numbers nudged or scaled, currency
and units swapped, list items dropped or reordered, strings truncated), the agent's own code is
re-run against the recording with those outputs served, and the user's invariant is checked on
what it did. The smallest failing perturbation (Hypothesis shrinks it) is written as a trace file
that replays the failure.

Calls are served by *address* (the place in the call tree), not by input: a perturbed upstream
output changes downstream inputs, and the point is to see what the agent does next. A call the
recording has no counterpart for "leaves the recording"; such examples are counted, not judged.
"""

from __future__ import annotations

import contextlib
import copy
import os
import re
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from replayable import canonical
from replayable._engine import Ending, Engine, Serve
from replayable._errors_codec import encode_error
from replayable._rootcall import call_recorded, root_call
from replayable.boundary import Boundary, bare_name, registry, resolve_name
from replayable.context import Frame
from replayable.errors import ReplayableError
from replayable.record import environment, new_run_id
from replayable.store import Store, load_run
from replayable.trace import Event, Run, chain_events, write_trace

if TYPE_CHECKING:
    from replayable._pii import PII, Pseudonymizer

__all__ = ["FuzzReport", "Mutation", "Outcome", "Site", "fuzz", "run_perturbed", "sites_of"]

Path_ = tuple[str | int, ...]
Invariant = Callable[["Outcome"], Any]

_UNITS = [
    ("USD", "EUR"),
    ("EUR", "GBP"),
    ("GBP", "USD"),
    ("$", "€"),
    ("€", "£"),
    ("kg", "lb"),
    ("km", "mi"),
    ("°C", "°F"),
    ("ml", "oz"),
    ("cm", "in"),
]
_UNIT_RE = {a: re.compile(rf"(?<![A-Za-z]){re.escape(a)}(?![A-Za-z])") for a, _ in _UNITS}
_NUMBER_RE = re.compile(r"-?\d+(?:\.\d+)?")
_SCALES = (2, 0.5, 10, 0, -1)


class _OffRecord(ReplayableError):
    """The perturbed agent made a call the recording has no counterpart for."""


@dataclass(frozen=True, slots=True)
class Mutation:
    """One perturbation of one recorded output: at ``path``, apply ``op`` with ``arg``.
    ``call`` is the event's ``name#N`` ordinal (N-th recorded call of its boundary, 1-based)."""

    seq: int
    boundary: str
    path: Path_
    op: str
    arg: Any = None
    call: int = 0

    def apply(self, output: Any) -> Any:
        """A copy of ``output`` with this mutation applied (unchanged if the path is gone)."""
        root = copy.deepcopy(output)
        if not self.path:
            return _mutate(root, self.op, self.arg)
        parent = root
        for part in self.path[:-1]:
            try:
                parent = parent[part]
            except (KeyError, IndexError, TypeError):
                return root
        last = self.path[-1]
        with contextlib.suppress(KeyError, IndexError, TypeError):
            parent[last] = _mutate(parent[last], self.op, self.arg)
        return root

    def where(self) -> str:
        """``choose_record#1.output.arguments.customer_id``-style location (``name#N`` as in
        ``live=`` and ``fork --at``; the event's seq when the ordinal is unknown)."""
        bare = bare_name(self.boundary)
        text = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.path)
        return f"{bare}#{self.call or self.seq}.output{text}"

    def __str__(self) -> str:
        arg = "" if self.arg is None else f" {self.arg!r}"
        return f"{self.where()}: {self.op}{arg}"


def _mutate(value: Any, op: str, arg: Any) -> Any:
    if op == "nudge":
        return value + arg
    if op == "scale":
        out = value * arg
        return round(out) if isinstance(value, int) else out
    if op == "flip":
        return not value
    if op == "truncate":
        return value[:arg]
    if op == "swap_unit":
        a, b = arg
        return _UNIT_RE[a].sub(b, value, count=1)
    if op == "scale_number":
        m = _NUMBER_RE.search(value)
        if m is None:
            return value
        num = float(m.group()) * arg
        text = str(round(num)) if "." not in m.group() else f"{num:g}"
        return value[: m.start()] + text + value[m.end() :]
    if op == "drop":
        return value[:arg] + value[arg + 1 :]
    if op == "reverse":
        return value[::-1]
    if op == "rotate":
        return value[1:] + value[:1]
    raise ValueError(f"unknown perturbation {op!r}")


@dataclass(frozen=True, slots=True)
class Site:
    """A place in a recorded output that can be perturbed, and the ways it can be."""

    event: Event
    path: Path_
    ops: tuple[tuple[str, tuple[Any, ...]], ...]


def _ops(value: Any) -> tuple[tuple[str, tuple[Any, ...]], ...]:
    if isinstance(value, bool):
        return (("flip", (None,)),)
    if isinstance(value, int | float):
        return (("nudge", (1, -1)), ("scale", _SCALES))
    if isinstance(value, str):
        ops: list[tuple[str, tuple[Any, ...]]] = []
        if value:
            ops.append(("truncate", tuple(sorted({len(value) // 2, max(len(value) - 1, 0), 0}))))
        units = tuple((a, b) for a, b in _UNITS if _UNIT_RE[a].search(value))
        if units:
            ops.append(("swap_unit", units))
        if _NUMBER_RE.search(value):
            ops.append(("scale_number", _SCALES))
        return tuple(ops)
    if isinstance(value, list) and value:
        ops = [("drop", tuple(range(len(value))))]
        if len(value) > 1:
            ops += [("reverse", (None,)), ("rotate", (None,))]
        return tuple(ops)
    return ()


def _walk(value: Any, path: Path_) -> Iterator[tuple[Path_, Any]]:
    yield path, value
    if isinstance(value, dict):
        for k in sorted(value):
            yield from _walk(value[k], (*path, k))
    elif isinstance(value, list):
        for i, item in enumerate(value):
            yield from _walk(item, (*path, i))


def sites_of(events: Iterable[Event]) -> list[Site]:
    """Every perturbable place in the outputs of ``events``, in start order."""
    out = []
    for ev in sorted(events, key=lambda e: e.seq):
        if ev.error is not None:
            continue
        for path, value in _walk(ev.output, ()):
            ops = _ops(value)
            if ops:
                out.append(Site(ev, path, ops))
    return out


@dataclass
class Outcome:
    """What the agent did in one perturbed re-run: what an invariant is checked on."""

    root: Event
    calls: list[Event]
    result: Any = None
    error: BaseException | None = None
    mutations: tuple[Mutation, ...] = ()
    off_record: str | None = None
    pii: Pseudonymizer | None = field(default=None, repr=False)
    """The recorded run's pseudonymizer when it was recorded with ``pii=``: the calls kept here
    carry pseudonyms, as the recording does."""

    def pseudonym(self, value: Any) -> Any:
        """``value`` as this run's recording would have written it: its personal data
        pseudonymized under the run's key (unchanged for a run recorded in clear), so an
        invariant can compare what it knows in clear (a customer's email) with the calls."""
        return value if self.pii is None else self.pii.value(value)

    @property
    def input(self) -> Any:
        """The root call's recorded arguments (e.g. ``{"request": ...}``)."""
        return self.root.input

    def calls_to(self, name: str) -> list[Event]:
        """The calls to a boundary (full or bare name), in start order."""
        bare = name.rsplit(":", 1)[-1]
        return [
            c
            for c in self.calls
            if c.boundary == name or c.boundary.rsplit(":", 1)[-1] in (bare, name)
        ]


class _FuzzSession:
    """The fuzz policy: serve recorded outputs (perturbed where asked) by address; agents and
    ``live`` run; a call the recording has no counterpart for leaves the recording. With
    ``pii`` (the recorded run's pseudonymizer), each call is kept pseudonymized."""

    serves_recordings = False

    def __init__(
        self,
        run_id: str,
        events: Sequence[Event],
        outputs: dict[int, Any],
        live: frozenset[str],
        pii: Pseudonymizer | None = None,
    ) -> None:
        self.run_id = run_id
        self.pii = pii
        self.by_address = {e.address: e for e in events}
        self.outputs = outputs
        self.live = live
        self.calls: list[Event] = []

    def at_start(self, frame: Frame) -> Serve | None:
        """Serve the call recorded at this address, or run it live."""
        b = frame.b
        assert b is not None
        ev = self.by_address.get(frame.address)
        if ev is not None and ev.boundary != b.name:
            ev = None
        live = b.kind == "agent" or b.name in self.live
        if ev is None and not live:
            raise _OffRecord(f"{b.name} at {frame.address} is not in the recording")
        if ev is None or live:
            return None
        return Serve.recorded(self.outputs.get(ev.seq, ev.output), ev.error, ev.meta)

    def function(self, frame: Frame) -> Callable[..., Any]:
        """The boundary's own function."""
        b = frame.b
        assert b is not None
        return b.fn

    def at_end(self, frame: Frame, outcome: Ending) -> None:
        """Keep the call (what the invariant is checked on)."""
        b = frame.b
        if b is None or outcome.refused:
            return
        served = outcome.served
        if served is not None:
            output, error = served.output, served.error
        else:
            output = None if outcome.output is None else orjson.loads(outcome.output)
            error = None if outcome.error is None else encode_error(outcome.error)
        data, value, key = canonical.keyed_input(b, frame.data, self.pii)
        meta = frame.meta
        if self.pii is not None:  # live values (and perturbed ones) as the recording keeps them
            output, error, meta = (
                self.pii.value(output),
                self.pii.value(error),
                self.pii.value(meta),
            )
        parent = frame.parent
        self.calls.append(
            Event(
                run_id=self.run_id,
                seq=frame.seq,
                address=frame.address,
                parent_seq=parent.seq if parent is not None and parent.seq >= 0 else None,
                boundary=b.name,
                kind=b.kind,
                key=key,
                input=value if value is not None else orjson.loads(data),
                output=output,
                error=error,
                meta=meta,
                started_at=frame.started_at,
            )
        )


def run_perturbed(
    run: Run,
    events: Sequence[Event],
    mutations: Sequence[Mutation] = (),
    *,
    live: Iterable[str] = (),
    pii: Pseudonymizer | None = None,
) -> Outcome:
    """Re-run the recorded root call with ``mutations`` applied to the served outputs.
    ``pii``: the run's pseudonymizer (a run recorded with ``pii=``), keeping the calls
    pseudonymized."""
    b, root = root_call(run, list(events))
    outputs: dict[int, Any] = {}
    by_seq = {e.seq: e for e in events}
    for m in mutations:
        outputs[m.seq] = m.apply(outputs.get(m.seq, by_seq[m.seq].output))
    session = _FuzzSession(run.id, events, outputs, frozenset(live), pii)
    outcome = Outcome(root=root, calls=session.calls, mutations=tuple(mutations), pii=pii)
    engine = Engine(session)
    engine.enter()
    try:
        outcome.result = call_recorded(b, root)
    except _OffRecord as exc:
        outcome.off_record = str(exc)
    except Exception as exc:
        outcome.error = exc
    finally:
        engine.leave()
    outcome.calls.sort(key=lambda e: e.seq)
    return outcome


def _violated(invariant: Invariant, outcome: Outcome) -> str | None:
    try:
        ok = invariant(outcome)
    except AssertionError as exc:
        return str(exc) or "invariant failed"
    if ok is False:
        return "invariant returned False"
    return None


@dataclass
class FuzzReport:
    """The result of :func:`fuzz`."""

    run: Run
    examples: int
    off_record: int = 0
    raised: int = 0
    first_failure_at: int | None = None
    smallest: tuple[Mutation, ...] | None = None
    outcome: Outcome | None = None
    message: str | None = None
    trace: Path | None = None
    events: list[Event] = field(default_factory=list, repr=False)
    baseline_failure: str | None = None
    """Set when the invariant fails on the recording itself, before any perturbation."""

    @property
    def passed(self) -> bool:
        """True when the recording and every perturbation of it kept the invariant."""
        return self.smallest is None and self.baseline_failure is None

    def describe_mutation(self, m: Mutation) -> str:
        """``where: op -> before → after`` for a mutation of this run."""
        ev = next(e for e in self.events if e.seq == m.seq)
        before = _at(ev.output, m.path)
        after = _at(m.apply(ev.output), m.path)
        return f"{m}  ({_short(before)} -> {_short(after)})"


def _at(value: Any, path: Path_) -> Any:
    for part in path:
        try:
            value = value[part]
        except (KeyError, IndexError, TypeError):
            return None
    return value


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


class _Violation(Exception):
    def __init__(self, mutations: tuple[Mutation, ...], outcome: Outcome, message: str) -> None:
        super().__init__(message)
        self.mutations = mutations
        self.outcome = outcome
        self.message = message


def _chosen(
    events: Sequence[Event],
    boundaries: Iterable[str] | None,
    names: set[str],
    registered: Mapping[str, Boundary],
) -> set[str]:
    """The boundaries whose outputs are perturbed: those named, or every one that is not an
    agent, a clock or side-effecting."""
    if boundaries is not None:
        chosen = {resolve_name(b, names) for b in boundaries}
    else:
        chosen = {
            e.boundary
            for e in events
            if e.kind not in ("agent", "clock")
            and not (e.boundary in registered and registered[e.boundary].side_effects)
        }
    return chosen


def _mutation_lists(sites: Sequence[Site], events: Sequence[Event], max_mutations: int) -> Any:
    """The Hypothesis strategy of 1 to ``max_mutations`` mutations at the recorded ``sites``
    (each naming its call as the N-th of its boundary)."""
    from hypothesis import strategies as st

    ordinal: dict[int, int] = {}
    seen: dict[str, int] = {}
    for e in sorted(events, key=lambda e: e.seq):
        seen[e.boundary] = ordinal[e.seq] = seen.get(e.boundary, 0) + 1

    def mutation_at(i: int) -> Any:
        site = sites[i]
        ev = site.event
        return st.sampled_from(site.ops).flatmap(
            lambda op: st.sampled_from(op[1]).map(
                lambda arg: Mutation(
                    ev.seq, ev.boundary, site.path, op[0], arg, call=ordinal[ev.seq]
                )
            )
        )

    return st.lists(
        st.integers(0, len(sites) - 1).flatmap(mutation_at), min_size=1, max_size=max_mutations
    )


def fuzz(
    source: str | os.PathLike[str] | Run,
    invariant: Invariant,
    *,
    n: int = 200,
    boundaries: Iterable[str] | None = None,
    live: Iterable[str] = (),
    max_mutations: int = 2,
    seed: int | None = None,
    out: str | os.PathLike[str] | None = None,
    store: Store | str | os.PathLike[str] | None = None,
    pii: PII | None = None,
) -> FuzzReport:
    """Perturb recorded outputs with Hypothesis and check ``invariant`` on each re-run.

    ``invariant(outcome)`` fails by raising ``AssertionError`` or returning ``False``. By default
    every boundary that is not an agent, a clock or side-effecting is perturbed; ``boundaries``
    narrows that. The search is deterministic unless ``seed`` is given. On a failure, the
    smallest perturbation found is replayed and written as a trace file (``out``, default
    ``fuzz-RUN.jsonl``).

    A run recorded with personal data pseudonymized (``record(pii=...)``) is fuzzed under its
    key (``pii=rp.PII(key=...)``, else the environment): the calls the invariant sees and the
    trace written carry pseudonyms (``outcome.pseudonym(value)`` turns a value the invariant
    knows in clear into the run's pseudonym of it).

    For example (a sketch, not run as a doctest)::

        report = fuzz(run, never_deletes_another_customer, n=200)
        report.passed, report.smallest
    """
    try:
        from hypothesis import HealthCheck, Verbosity, given, settings
        from hypothesis import seed as hseed
    except ImportError:  # pragma: no cover - hypothesis is in the testing extra
        raise ReplayableError('fuzz needs hypothesis: pip install "replayable[testing]"') from None

    from replayable._pii import for_replay

    run, events = load_run(source, store)
    pseudonymizer = for_replay(run.id, run.metadata, pii)  # a missing key fails here
    root_call(run, list(events))
    names = {e.boundary for e in events}
    registered = registry()
    chosen = _chosen(events, boundaries, names, registered)
    sites = sites_of(e for e in events if e.boundary in chosen)
    if not sites:
        raise ReplayableError(f"run {run.id}: no recorded output of {sorted(chosen)} to perturb")

    strategy = _mutation_lists(sites, events, max_mutations)
    report = FuzzReport(run=run, examples=0, events=list(events))
    live_names = frozenset(resolve_name(x, names | set(registered)) for x in live)
    if n < 1:
        raise ReplayableError(f"fuzz needs at least one example (n={n})")
    # A perturbation can only be blamed if the unperturbed recording keeps the invariant.
    baseline = run_perturbed(run, events, [], live=live_names, pii=pseudonymizer)
    if baseline.off_record is None:
        report.baseline_failure = _violated(invariant, baseline)
        if report.baseline_failure is not None:
            return report

    @settings(
        max_examples=n,
        derandomize=seed is None,
        database=None,
        deadline=None,
        verbosity=Verbosity.quiet,
        report_multiple_bugs=False,
        suppress_health_check=list(HealthCheck),
    )
    @given(strategy)
    def prop(mutations: list[Mutation]) -> None:
        report.examples += 1
        outcome = run_perturbed(run, events, mutations, live=live_names, pii=pseudonymizer)
        if outcome.off_record is not None:
            report.off_record += 1
            return
        if outcome.error is not None:
            report.raised += 1
        message = _violated(invariant, outcome)
        if message is not None:
            if report.first_failure_at is None:
                report.first_failure_at = report.examples
            raise _Violation(tuple(mutations), outcome, message)

    test = hseed(seed)(prop) if seed is not None else prop
    try:
        test()
    except _Violation as v:
        report.smallest = v.mutations
        report.outcome = v.outcome
        report.message = v.message
        target = Path(out) if out is not None else Path(f"fuzz-{run.id[:12]}.jsonl")
        report.trace = write_outcome(run, v.outcome, target)
    return report


def write_outcome(run: Run, outcome: Outcome, path: str | os.PathLike[str]) -> Path:
    """Write a perturbed re-run as a trace file (hash-chained; replays the failure; a run
    recorded with ``pii=`` gives a trace pseudonymized the same way, which replays under its
    key)."""
    fuzz_run = Run(
        id=new_run_id(),
        name=f"fuzz of {run.name or run.id}",
        tags=dict(run.tags),
        metadata={"fuzz_of": run.id, "mutations": [str(m) for m in outcome.mutations]},
        environment=environment(),
        started_at=time.time(),
        ended_at=time.time(),
        status="ok" if outcome.error is None else "error",
        error=None if outcome.error is None else encode_error(outcome.error),
        parent_run=run.id,
    )
    if outcome.pii is not None:
        outcome.pii.run(fuzz_run)
    events = []
    for call in sorted(outcome.calls, key=lambda e: e.seq):
        events.append(copy.copy(call))
    chain_events(fuzz_run, events)
    return write_trace(fuzz_run, events, path)
