"""Align two runs step by step and find where they part ways.

Steps are paired by address first (same place in the tree, same boundary, same ordinal); the
rest are paired by boundary and canonical key (the same call made from another place), in start
order. What is left appears on one side only. Each pair carries the field-level changes of its
input, output and error, so "yesterday's failure against today's replay" reads as a list of
paths.

>>> import replayable as rp
>>> ids = iter([7, 8])
>>> lookup = rp.boundary(kind="tool", name="demo:lookup")(lambda name: {"id": next(ids)})
>>> with rp.record() as run_a:
...     lookup("Bob")["id"]
7
>>> with rp.record() as run_b:
...     lookup("Bob")["id"]
8
>>> d = diff_runs(run_a, run_a.events(), run_b, run_b.events())
>>> d.first_divergence.address if d.first_divergence else "identical"
'demo:lookup/0'
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from replayable._diff import diff_values
from replayable._otlp._replay import compared, is_imported_step
from replayable.errors import FieldChange
from replayable.trace import Event, Run

if TYPE_CHECKING:
    from replayable.store.base import Store

__all__ = ["RunDiff", "StepPair", "diff", "diff_runs", "run_usage", "tokens_of"]

SAME = "same"
CHANGED = "changed"
ONLY_A = "only_a"
ONLY_B = "only_b"
INSIDE_SERVED = "inside_served"


@dataclass(slots=True)
class StepPair:
    """One aligned step: the event on each side (None when missing) and what changed.

    ``status`` is ``same``, ``changed``, ``only_a``, ``only_b`` or ``inside_served`` (a call
    nested in a step the other run served from its recording: a replay never re-runs it, so it
    is not a difference); ``matched_by`` is ``address`` or ``key`` for pairs found on both
    sides, or ``source`` for a replay's step paired with the recorded step it stands for (an
    imported run's steps are named by their tracer, not by the code that replays them).
    """

    a: Event | None
    b: Event | None
    status: str
    matched_by: str | None = None
    input_changes: list[FieldChange] = field(default_factory=list)
    output_changes: list[FieldChange] = field(default_factory=list)
    error_changes: list[FieldChange] = field(default_factory=list)

    @property
    def event(self) -> Event:
        """The event on side A, or side B when A has none."""
        ev = self.a or self.b
        assert ev is not None
        return ev

    @property
    def address(self) -> str:
        """The step's address (side A's when both exist)."""
        return self.event.address

    @property
    def boundary(self) -> str:
        """The step's boundary name."""
        return self.event.boundary

    @property
    def diverges(self) -> bool:
        """True when the two sides differ in presence, input, output or error."""
        return self.status not in (SAME, INSIDE_SERVED)

    @property
    def changes(self) -> dict[str, list[FieldChange]]:
        """The non-empty change lists by field name (``input``, ``output``, ``error``)."""
        out = {
            "input": self.input_changes,
            "output": self.output_changes,
            "error": self.error_changes,
        }
        return {k: v for k, v in out.items() if v}

    def to_dict(self) -> dict[str, Any]:
        """JSON types: both sides' seq and address, the status and each field change."""
        return {
            "status": self.status,
            "matched_by": self.matched_by,
            "boundary": self.boundary,
            "kind": self.event.kind,
            "a": None if self.a is None else {"seq": self.a.seq, "address": self.a.address},
            "b": None if self.b is None else {"seq": self.b.seq, "address": self.b.address},
            "changes": {
                name: [_change_dict(c) for c in changes] for name, changes in self.changes.items()
            },
        }


def _change_dict(c: FieldChange) -> dict[str, Any]:
    return {"path": c.path, "change": c.change, "a": c.recorded, "b": c.actual}


@dataclass(slots=True)
class RunDiff:
    """Two runs aligned: ``pairs`` in tree order, ``first_divergence``, counts by status."""

    a: Run
    b: Run
    pairs: list[StepPair]

    @property
    def first_divergence(self) -> StepPair | None:
        """Where the runs first part ways; None when identical.

        The earliest differing pair in start order, except a parent whose input matches and
        whose children differ: its output changed *because* of them, so the search goes on.
        """
        differing = [p for p in self.pairs if p.diverges]
        for p in differing:
            if p.status == CHANGED and not p.input_changes:
                prefix = p.address + " > "
                if any(q.address.startswith(prefix) for q in differing):
                    continue
            return p
        return None

    @property
    def identical(self) -> bool:
        """True when every step pairs up with the same input, output and error."""
        return self.first_divergence is None

    def counts(self) -> dict[str, int]:
        """How many pairs have each status."""
        out = {SAME: 0, CHANGED: 0, ONLY_A: 0, ONLY_B: 0, INSIDE_SERVED: 0}
        for p in self.pairs:
            out[p.status] += 1
        return out

    def to_dict(self) -> dict[str, Any]:
        """JSON types: both run ids, counts, the first divergence's index and every pair."""
        first = self.first_divergence
        return {
            "a": self.a.id,
            "b": self.b.id,
            "identical": first is None,
            "counts": self.counts(),
            "first_divergence": None if first is None else self.pairs.index(first),
            "pairs": [p.to_dict() for p in self.pairs],
        }

    def _repr_html_(self) -> str | None:
        """HTML for notebooks (the viewer's fragments, every recorded value escaped); None
        without jinja2, so the notebook shows the plain repr."""
        try:
            from replayable.viewer._notebook import diff_html
        except ImportError:
            return None
        return diff_html(self)

    def __rich__(self) -> Any:
        """For a rich console (terminals, ``rich.print``): recorded markup and terminal
        escapes print as text."""
        from replayable._inert import Inert
        from replayable.cli._render import diff_view

        return Inert(diff_view(self))


def _compare(a: Event, b: Event, matched_by: str, limit: int) -> StepPair:
    if matched_by == "source" and is_imported_step(a):
        # A step that stands for an imported one: its input compared as the replay compared it
        # (what the trace carries); a model answer is the SDK's own shape, not the trace's, so
        # only a tool's (or other step's) output is compared, when the trace carried one.
        recorded, actual = compared(a, b.boundary, b.input)
        inp = diff_values(recorded, actual, limit=limit)
        plain = a.kind != "llm" and a.error is None and a.output is not None
        out = diff_values(a.output, b.output, limit=limit) if plain else []
        err = diff_values(a.error, b.error, limit=limit)
        status = CHANGED if inp or out or err else SAME
        return StepPair(a, b, status, matched_by, inp, out, err)
    inp = diff_values(a.input, b.input, limit=limit)
    out = diff_values(a.output, b.output, limit=limit) if a.error is None else []
    err = diff_values(a.error, b.error, limit=limit)
    status = CHANGED if inp or out or err else SAME
    return StepPair(a, b, status, matched_by, inp, out, err)


def diff(
    a: str | os.PathLike[str] | Run,
    b: str | os.PathLike[str] | Run,
    *,
    store: Store | str | os.PathLike[str] | None = None,
) -> RunDiff:
    """Align two runs step by step, as ``replayable diff A B`` does: each a run id (or unique
    prefix) in ``store``, a :class:`Run`, or a trace file. In a notebook the result shows as
    the viewer's diff.

    >>> import replayable as rp
    >>> n = iter([1, 2])
    >>> count = rp.boundary(kind="tool", name="demo:count")(lambda: next(n))
    >>> with rp.record() as first:
    ...     count()
    1
    >>> with rp.record() as second:
    ...     count()
    2
    >>> d = rp.diff(first, second)
    >>> d.identical, d.first_divergence.boundary if d.first_divergence else None
    (False, 'demo:count')
    """
    from replayable.store import load_run

    run_a, events_a = load_run(a, store)
    run_b, events_b = load_run(b, store)
    return diff_runs(run_a, events_a, run_b, events_b)


def _partners(
    run_a: Run, evs_a: list[Event], run_b: Run, evs_b: list[Event]
) -> tuple[dict[int, tuple[Event, str]], set[int]]:
    """Each A step's partner in B and how it was matched (same address and boundary; the
    step a replay served it from; same boundary and key), and the B steps taken."""
    by_address = {e.address: e for e in evs_b}
    partner: dict[int, tuple[Event, str]] = {}  # a.seq -> (b event, matched_by)
    used_b: set[int] = set()
    for ev in evs_a:
        other = by_address.get(ev.address)
        if other is not None and other.boundary == ev.boundary and other.seq not in used_b:
            partner[ev.seq] = (other, "address")
            used_b.add(other.seq)
    if run_b.parent_run == run_a.id:  # B replays A: a step pairs with the one it stands for
        seqs_a = {e.seq for e in evs_a}
        for other in evs_b:
            src = other.meta.get("source_seq")
            if other.seq in used_b or not isinstance(src, int) or src not in seqs_a:
                continue
            if src not in partner:
                partner[src] = (other, "source")
                used_b.add(other.seq)
    by_key: dict[tuple[str, str], list[Event]] = defaultdict(list)
    for ev in evs_b:
        if ev.seq not in used_b:
            by_key[(ev.boundary, ev.key)].append(ev)
    for ev in evs_a:
        if ev.seq in partner:
            continue
        candidates = by_key.get((ev.boundary, ev.key))
        if candidates:
            other = candidates.pop(0)
            partner[ev.seq] = (other, "key")
            used_b.add(other.seq)

    return partner, used_b


def diff_runs(
    run_a: Run,
    events_a: Iterable[Event],
    run_b: Run,
    events_b: Iterable[Event],
    *,
    limit: int = 50,
) -> RunDiff:
    """Align two runs' steps (by address, then by boundary + key) and diff each pair.

    ``limit`` caps the field changes kept per value.
    """
    evs_a = sorted(events_a, key=lambda e: e.seq)
    evs_b = sorted(events_b, key=lambda e: e.seq)
    partner, used_b = _partners(run_a, evs_a, run_b, evs_b)

    # Order: side A's start order; a step only in B goes after the A step that its nearest
    # earlier matched B step pairs with, so it shows up where B took its own path.
    b_to_a = {other.seq: a_seq for a_seq, (other, _) in partner.items()}
    ordered: list[tuple[tuple[int, int, int], StepPair]] = []
    for ev in evs_a:
        if ev.seq in partner:
            other, how = partner[ev.seq]
            ordered.append(((ev.seq, 0, 0), _compare(ev, other, how, limit)))
        else:
            ordered.append(((ev.seq, 0, 0), StepPair(ev, None, ONLY_A)))
    anchor = -1
    for ev in evs_b:
        if ev.seq in b_to_a:
            anchor = b_to_a[ev.seq]
        elif ev.seq not in used_b:
            ordered.append(((anchor, 1, ev.seq), StepPair(None, ev, ONLY_B)))
    ordered.sort(key=lambda item: item[0])
    pairs = [pair for _, pair in ordered]
    _mark_inside_served(pairs)
    return RunDiff(run_a, run_b, pairs)


def _mark_inside_served(pairs: list[StepPair]) -> None:
    """A one-sided call under a step the other side served was consumed with it, not skipped."""
    served_a = {p.a.seq for p in pairs if p.a is not None and p.a.meta.get("served")}
    served_b = {p.b.seq for p in pairs if p.b is not None and p.b.meta.get("served")}
    # A's seq -> B's partner's seq (and back), to walk one side's ancestors on the other side.
    a_to_b = {p.a.seq: p.b.seq for p in pairs if p.a is not None and p.b is not None}
    b_to_a = {v: k for k, v in a_to_b.items()}
    parent_a = {p.a.seq: p.a.parent_seq for p in pairs if p.a is not None}
    parent_b = {p.b.seq: p.b.parent_seq for p in pairs if p.b is not None}

    def under_served(
        seq: int | None, parents: dict[int, int | None], partner: dict[int, int], served: set[int]
    ) -> bool:
        while seq is not None:
            other = partner.get(seq)
            if other is not None and other in served:
                return True
            seq = parents.get(seq)
        return False

    for p in pairs:
        if p.status == ONLY_A and p.a is not None:
            inside = under_served(p.a.parent_seq, parent_a, a_to_b, served_b)
        elif p.status == ONLY_B and p.b is not None:
            inside = under_served(p.b.parent_seq, parent_b, b_to_a, served_a)
        else:
            continue
        if inside:
            p.status = INSIDE_SERVED


def tokens_of(usage: Any) -> tuple[int, int]:
    """(input, output) tokens from a usage dict in OpenAI or Anthropic shape; (0, 0) otherwise.

    >>> tokens_of({"prompt_tokens": 12, "completion_tokens": 3})
    (12, 3)
    """
    if not isinstance(usage, dict):
        return 0, 0

    def num(*names: str) -> int:
        for n in names:
            v = usage.get(n)
            if isinstance(v, int) and not isinstance(v, bool):
                return v
        return 0

    return num("input_tokens", "prompt_tokens"), num("output_tokens", "completion_tokens")


def run_usage(events: Iterable[Event]) -> dict[str, dict[str, int]]:
    """Calls and tokens by model over some events: ``{model: {calls, input, output}}``.

    An event counts when its metadata names a ``model`` (or ``response_model``) or carries
    ``usage``; a call with usage but no model counts under ``"(unknown)"``.
    """
    out: dict[str, dict[str, int]] = {}
    for ev in events:
        model = ev.meta.get("model") or ev.meta.get("response_model")
        usage = ev.meta.get("usage")
        if model is None and usage is None:
            continue
        row = out.setdefault(str(model or "(unknown)"), {"calls": 0, "input": 0, "output": 0})
        i, o = tokens_of(usage)
        row["calls"] += 1
        row["input"] += i
        row["output"] += o
    return out
