"""Range rows: a replay's run of served steps stored as one row referring to the source's steps.

A replay that takes the recorded path serves step after step exactly as recorded. Each such
step is what its source event says, plus the replay's own position, parent and timing; so the
writer keeps a run of them (consecutive in the replay and in the source, same parent, same
source run) as one *range row*: storage and write cost follow the divergences and live steps,
not the run's length. Reading expands the row back into the events it stands for, so every
reader (``iter_events``, show, diff, export, the viewer, verify) sees per-step events.

A range row is an ``events`` row at the range's first step (its ``seq``, ``chain_seq``,
``parent_seq``; ``address``, ``boundary``, ``kind`` and ``key`` are the first step's), with

- ``input``/``output`` ``null``, no error;
- ``meta`` ``{"$range": [source run, source's first seq, steps, source's hash at the last step,
  the replay's chain hash before the range]}``;
- ``started_at`` the first step's start, ``duration_ns`` the range's span (first start to last
  end); each step reads back with the span shared evenly (:func:`step_time`);
- ``hash`` the replay's chain hash after its last step.

The hash chain is the same per-step chain as ever: each expanded step hashes as the event it
reads back as (:func:`step_hash`), so an exported replay is self-contained and verifies, and a
signature over the head holds for the expanded form. Reading computes each step's hash from
the row's "before" hash; the last step carries the row's stored hash, so verification, which
recomputes the chain, fails at the range's end when anything it stands for changed: the
source's input or output, the range row's fields, the "before" hash. The source's own hash at
the last step is checked too: a source edited and re-chained since (or another run put in its
place) reads back marked (``meta["source_changed"]``), and fails. A source that is gone
leaves the row unexpanded, marked ``meta["unresolved_ref"]``: it fails verification; the SQL
stores keep every run a kept run refers to when pruning (``run_refs``).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import orjson

from replayable import _cut, canonical
from replayable._model import Event, StoredEvent
from replayable.store._rows import EventRow
from replayable.trace import event_payload, link_hash

__all__ = [
    "RANGE",
    "Ranges",
    "ServedStep",
    "expand_range",
    "served_meta",
    "source_of_row",
    "step_hash",
    "step_time",
]

RANGE = "$range"
"""The meta key of a range row."""
REF = "$ref"
"""The meta key of a served step stored as a reference to one source event (not a range)."""


def served_meta(source_seq: int) -> bytes:
    """The stored metadata of a served step in a range: what the writer stores for any served
    step (``served``, ``source_seq``), in its sorted-key JSON."""
    return b'{"served":true,"source_seq":%d}' % source_seq


def step_time(t0: float, span_ns: int, n: int, k: int) -> tuple[float, int]:
    """Start (epoch s) and duration (ns) of step ``k`` of a range of ``n`` steps starting at
    ``t0`` and spanning ``span_ns``: the span shared evenly, the steps tiling it exactly (so
    the first step's start and the last one's end are the range's: no edit of either goes
    unseen)."""
    lo = k * span_ns // n
    return t0 + lo / 1e9, (k + 1) * span_ns // n - lo


def step_hash(
    prev: str,
    run_id: str,
    seq: int,
    chain_seq: int,
    parent_seq: int | None,
    src: Event,
    started_at: float,
    duration_ns: int,
    payload: str,
) -> str:
    """The chain hash, after ``prev``, of a range's step serving ``src`` (``payload``: the
    digest of its input and output): the hash of the event it reads back as. The one
    definition the writer and the reader share."""
    return link_hash(
        prev,
        run_id,
        seq,
        chain_seq,
        src.address,
        parent_seq,
        src.boundary,
        src.kind,
        src.key,
        started_at,
        duration_ns,
        payload,
        None,
        served_meta(src.seq),
    )


def source_of_row(meta: str) -> str | None:
    """The run a stored row refers to (a range or a single served reference), from its meta
    text; None for any other row (cheap: a prefix test first)."""
    if not meta.startswith('{"$r'):
        return None
    try:
        ref = orjson.loads(meta)
    except orjson.JSONDecodeError:
        return None
    for name in (RANGE, REF):
        found = ref.get(name) if isinstance(ref, dict) else None
        if isinstance(found, list) and found and isinstance(found[0], str):
            return found[0]
    return None


# -- writing ---------------------------------------------------------------------------------


class ServedStep(Protocol):
    """What the writer's pending step (:class:`replayable._writer.Pending`) tells a range."""

    run_id: str
    seq: int
    address: str
    parent_seq: int | None
    input: bytes
    error: dict[str, Any] | None
    meta: dict[str, Any]
    started_at: float
    duration_ns: int
    key: str | None
    source: Event | None
    source_run: str
    same_input: bool
    boundary: Any
    max_value_bytes: int


@dataclass(slots=True)
class _Open:
    """A range being gathered: its first step's place and start, the source events served."""

    source_run: str
    seq0: int
    parent_seq: int | None
    t0: float
    end: float
    sources: list[Event] = field(default_factory=list)


def _fits(p: ServedStep, src: Event) -> bool:
    """``p`` is the source event ``src`` served exactly: it reads back as derived from it."""
    meta = p.meta
    if len(meta) != 2 or meta.get("served") is not True or meta.get("source_seq") != src.seq:
        return False  # anything else in its metadata (a stream, a cut marker) is its own row
    b = p.boundary
    if (
        type(src) is not StoredEvent
        or p.error is not None
        or p.key != src.key
        or p.address != src.address
        or b.name != src.boundary
        or b.kind != src.kind
    ):
        return False
    inp, out, error, _ = src.stored_fields()
    return (
        error is None
        and (p.same_input or inp == p.input)
        and len(p.input) <= (p.max_value_bytes or _cut.DEFAULT_MAX_VALUE_BYTES)
        and not canonical.has_tagged(out)
    )


class Ranges:
    """The writer's part that coalesces served steps into range rows.

    ``chains`` is the writer's map of run id to (events chained so far, head hash); a range
    takes its chain positions when it is closed, so a run's other rows must close its range
    first (:meth:`add` does; :meth:`close` at a run's end, :meth:`close_all` at a batch's).
    """

    def __init__(self, chains: dict[str, tuple[int, str]]) -> None:
        self.chains = chains
        self.open: dict[str, _Open] = {}

    def add(self, p: ServedStep, rows: list[EventRow]) -> bool:
        """Take ``p`` into its run's range (True), or close that range into ``rows`` and
        leave ``p`` to be written as a row of its own (False)."""
        src = p.source
        run_id = p.run_id
        if src is None or not p.source_run or not _fits(p, src):
            if run_id in self.open:
                self.close(run_id, rows)
            return False
        o = self.open.get(run_id)
        if o is not None:
            n = len(o.sources)
            if (
                p.seq == o.seq0 + n
                and src.seq == o.sources[-1].seq + 1
                and p.parent_seq == o.parent_seq
                and p.source_run == o.source_run
            ):
                o.sources.append(src)
                o.end = max(o.end, p.started_at + p.duration_ns / 1e9)
                return True
            self.close(run_id, rows)
        start = p.started_at
        self.open[run_id] = _Open(
            p.source_run, p.seq, p.parent_seq, start, start + p.duration_ns / 1e9, [src]
        )
        return True

    def close(self, run_id: str, rows: list[EventRow]) -> bool:
        """Chain the run's open range and add its row to ``rows``; False if none was open."""
        o = self.open.pop(run_id, None)
        if o is None:
            return False
        rows.append(self._row(run_id, o))
        return True

    def close_all(self, rows: list[EventRow]) -> list[str]:
        """Close every open range into ``rows``; the runs whose range was closed."""
        closed = list(self.open)
        for run_id in closed:
            self.close(run_id, rows)
        return closed

    def _row(self, run_id: str, o: _Open) -> EventRow:
        count, before = self.chains.get(run_id, (0, ""))
        sources = o.sources
        n = len(sources)
        span = max(0, round((o.end - o.t0) * 1e9))
        prev = before
        t0, seq0, parent, lo = o.t0, o.seq0, o.parent_seq, 0
        for k, src in enumerate(sources):  # step_time, inline: this runs for every step
            hi = (k + 1) * span // n
            at, ns = t0 + lo / 1e9, hi - lo
            prev = step_hash(
                prev, run_id, seq0 + k, count + k, parent, src, at, ns, event_payload(src)
            )
            lo = hi
        self.chains[run_id] = (count + n, prev)
        first, last = sources[0], sources[-1]
        meta = orjson.dumps({RANGE: [o.source_run, first.seq, n, last.hash, before]})
        return EventRow(
            run_id,
            o.seq0,
            count,
            first.address,
            o.parent_seq,
            first.boundary,
            first.kind,
            first.key,
            "null",
            "null",
            None,
            meta.decode(),
            o.t0,
            span,
            prev,
        )


# -- reading ---------------------------------------------------------------------------------


def _descriptor(ev: Event) -> tuple[str, int, int, str, str] | None:
    """The range's (source run, first source seq, steps, source hash, before hash), or None
    when the row's ``$range`` is not that shape (edited)."""
    d = ev.meta.get(RANGE)
    if not (isinstance(d, list) and len(d) == 5):
        return None
    run, first, n, last_hash, before = d
    if not (
        isinstance(run, str)
        and type(first) is int
        and type(n) is int
        and n >= 1
        and isinstance(last_hash, str)
        and isinstance(before, str)
    ):
        return None
    return run, first, n, last_hash, before


def _row_matches(ev: Event, raw_meta: bytes, first: Event) -> bool:
    """The range row's own columns are what its first step says, and its meta the bytes the
    writer stores for its reference (none of this is read back from the row: an edit to it,
    even one that leaves the reference meaning the same, would otherwise go unseen)."""
    inp, out, error, _ = ev.stored_fields()
    return (
        raw_meta == orjson.dumps({RANGE: ev.meta.get(RANGE)})
        and inp == b"null"
        and out == b"null"
        and error is None
        and ev.address == first.address
        and ev.boundary == first.boundary
        and ev.kind == first.kind
        and ev.key == first.key
    )


def expand_range(ev: Event, raw_meta: bytes, sources: Mapping[int, Event]) -> list[Event]:
    """The events range row ``ev`` (its meta stored as ``raw_meta``) stands for, from its
    source run's events by seq (``sources``); ``[ev]`` marked ``meta["unresolved_ref"]`` when
    it cannot be expanded (the source or a step of it gone, the descriptor edited)."""
    d = _descriptor(ev)
    steps = None if d is None else [sources.get(d[1] + k) for k in range(d[2])]
    if d is None or steps is None or any(s is None for s in steps):
        ev.meta["unresolved_ref"] = ev.meta.pop(RANGE, None)
        return [ev]
    run_src, _, n, last_hash, before = d
    out: list[Event] = []
    prev = before
    errored: Event | None = None
    for k, src in enumerate(steps):
        assert src is not None
        at, ns = step_time(ev.started_at, ev.duration_ns, n, k)
        inp, outp, error, _ = src.stored_fields()
        if error is not None:  # a range serves no error: the source's step changed since
            errored = errored or src
        payload = event_payload(src, inp, outp)
        meta = served_meta(src.seq)
        seq, chain_seq = ev.seq + k, ev.chain_seq + k
        h = ev.hash  # the last step: the row's stored hash, which verification checks
        if k < n - 1:
            h = step_hash(prev, ev.run_id, seq, chain_seq, ev.parent_seq, src, at, ns, payload)
        step = StoredEvent.from_stored(
            ev.run_id,
            seq,
            chain_seq,
            src.address,
            ev.parent_seq,
            src.boundary,
            src.kind,
            src.key,
            inp,
            outp,
            None,
            meta,
            at,
            ns,
            h,
        )
        step.note_payload(inp, outp, payload)
        out.append(step)
        prev = h
    first = steps[0]
    assert first is not None
    if not _row_matches(ev, raw_meta, first):
        out[0].meta["range_edited"] = True
    last = steps[-1]
    assert last is not None
    if last.hash != last_hash or errored is not None:
        changed = last if errored is None else errored
        out[-1].meta["source_changed"] = [run_src, changed.seq]
    return out
