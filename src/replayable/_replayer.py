"""The replay policy and its parts: a recorded run's index, the matcher, the server, and the
:class:`Replay` a replay is driven by (``rp.replay``, what-if replays, ``rp.check``).

The parts are those of :mod:`replayable._engine`: :class:`RecordingMatcher` answers "which
recorded step is this call" from a :class:`RecordedRun`, :class:`RecordedServer` serves a stored
event as it is, :class:`replayable.record.Recorder` keeps the replay's own run, its sink is the
store's writer or a buffer. :class:`ReplayPolicy` holds them and applies the replay's rules
(agents and ``live=`` run, everything else is served, a divergence is kept or raised, a
``fallback=`` cassette takes what the recording cannot serve). A what-if
(:mod:`replayable._fork`) holds a :class:`ReplayPolicy` and decides differently around it.

``rp.check`` builds the same replay with a :class:`~replayable._writer.Buffer` as its sink, so
nothing is written unless the check keeps it:

>>> import replayable as rp
>>> from replayable._writer import Buffer
>>> double = rp.boundary(kind="tool", name="demo:double")(lambda x: 2 * x)
>>> with rp.record() as run:
...     double(21)
42
>>> buffer = Buffer()
>>> with build_replay(run, list(run.events()), target=None, sink=buffer) as r:
...     double(21)
42
>>> r.ok, [p.address for p in buffer.pending]
(True, ['demo:double/0'])
"""

from __future__ import annotations

import operator
import sys
import threading
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal, Protocol

import orjson

from replayable import _cut, _network, canonical
from replayable._diff import diff_values
from replayable._engine import Ending, Engine, Match, Matcher, Serve, Server, Sink
from replayable._follow import Follow
from replayable._otlp._replay import ImportedMatcher, ImportedServer, is_imported
from replayable._remote import followable
from replayable._threads import EXECUTOR
from replayable._version import __version__
from replayable._warn import warn
from replayable.boundary import registry, resolve_live
from replayable.cassette import Cassette
from replayable.context import AsyncToo, Frame, refuse_nested
from replayable.errors import (
    Divergence,
    ReplayableError,
    SideEffectRefused,
    TraceCorrupt,
    UnknownBoundary,
)
from replayable.record import OBSERVERS, Recorder, environment, new_run_id
from replayable.store import Store
from replayable.trace import Event, Run, StoredEvent

if TYPE_CHECKING:
    from replayable._pii import Pseudonymizer
    from replayable.boundary import Boundary

__all__ = [
    "UNMATCHED",
    "MatchMode",
    "RecordedRun",
    "RecordedServer",
    "RecordingMatcher",
    "Replay",
    "ReplayPolicy",
    "WhatIfHooks",
    "build_replay",
    "check_version",
]

UNMATCHED = -1
"""``Frame.rec_seq`` of a step with no recorded counterpart."""
_SEQ = operator.attrgetter("seq")

MatchMode = Literal["address", "key"]
"""How a replay matches calls: by place in the call tree and key, or by key alone."""

Prepare = Callable[["Boundary", bytes], bytes]
"""Transforms a live input snapshot before it is compared, keyed and kept."""
Runner = Callable[[Frame, Callable[..., Any]], Callable[..., Any]]
"""Wraps what a live call runs (given the frame and the function it would run)."""


def check_version(run: Run) -> None:
    """Refuse a run recorded by another major version of replayable."""
    recorded = str(run.environment.get("replayable") or "")
    if recorded and recorded.split(".", maxsplit=1)[0] != __version__.split(".")[0]:
        raise TraceCorrupt(
            f"run {run.id} was recorded by replayable {recorded}; this is {__version__} "
            "(major versions differ): replay it with the version that recorded it"
        )


class RecordedRun:
    """A recorded run's events indexed for matching, and which of them are consumed (each
    recorded step answers one call). Thread-safe through :attr:`lock`."""

    def __init__(self, source: Run, events: Iterable[Event], *, index_keys: bool) -> None:
        self.source = source
        self.events: dict[int, Event] = {}
        self.children: dict[int | None, list[int]] = defaultdict(list)
        self.groups: dict[tuple[int | None, str], list[Event]] = defaultdict(list)
        """Recorded calls by (parent's recorded seq, boundary), in start order."""
        self.by_key: dict[tuple[str, str], list[Event]] = defaultdict(list)
        self.nth: dict[int, int] = {}
        """A recorded call's number among its boundary's calls (1-based, start order)."""
        self.counts: dict[str, int] = defaultdict(int)
        children, groups, by_key, nth, counts = (
            self.children,
            self.groups,
            self.by_key,
            self.nth,
            self.counts,
        )
        for ev in sorted(events, key=_SEQ):
            seq, parent, name = ev.seq, ev.parent_seq, ev.boundary
            self.events[seq] = ev
            children[parent].append(seq)
            groups[(parent, name)].append(ev)
            if index_keys:
                by_key[(name, ev.key)].append(ev)
            counts[name] += 1
            nth[seq] = counts[name]
        self.consumed: set[int] = set()
        self._first: dict[tuple[int | None, str], int] = {}
        self.lock = threading.Lock()

    def first_unconsumed(self, gkey: tuple[int | None, str], group: list[Event]) -> int:
        """The index of the first recorded call in ``group`` (``groups[gkey]``) not consumed
        yet; calls are mostly consumed in order, so the ones before it are skipped for good.
        The caller holds the lock."""
        start, end, consumed = self._first.get(gkey, 0), len(group), self.consumed
        while start < end and group[start].seq in consumed:
            start += 1
        self._first[gkey] = start
        return start

    def next_if_same(self, gkey: tuple[int | None, str], data: bytes) -> tuple[Event, bytes] | None:
        """The next unconsumed recorded call in ``groups[gkey]`` and its stored input, when
        that is ``data`` byte for byte (not taken: the caller takes it). The caller holds the
        lock."""
        group = self.groups.get(gkey)
        if not group:
            return None
        start = self.first_unconsumed(gkey, group)
        if start == len(group):
            return None
        ev = group[start]
        recorded = ev.stored("input")
        return (ev, recorded) if recorded == data else None

    def take(self, ev: Event) -> Event:
        """Consume ``ev``: it answers no other call. The caller holds the lock."""
        self.consumed.add(ev.seq)
        return ev

    def consume_subtree(self, seq: int) -> None:
        """Consume every recorded call made inside ``seq`` (served whole, they never run)."""
        if seq not in self.children:
            return
        stack = list(self.children[seq])
        with self.lock:
            while stack:
                s = stack.pop()
                self.consumed.add(s)
                stack.extend(self.children.get(s, ()))

    def skipped(self) -> list[Divergence]:
        """Recorded calls never reached: the top of each unreached subtree, in start order."""
        out: list[Divergence] = []
        if len(self.consumed) == len(self.events):
            return out  # every recorded call was reached
        for seq in sorted(self.events):
            if seq in self.consumed:
                continue
            ev = self.events[seq]
            parent = ev.parent_seq
            # Report the top of each unreached subtree. A parent that is not in the recording
            # (it never completed: the process died) does not hide its completed children.
            if parent is not None and parent in self.events and parent not in self.consumed:
                continue
            out.append(
                Divergence(
                    reason="skipped",
                    address=ev.address,
                    boundary=ev.boundary,
                    recorded_input=ev.input,
                    run_id=self.source.id,
                )
            )
        return out


def actual_input(match: Match, frame: Frame) -> Any:
    """The call's input as a value (redacted as the recording is)."""
    return match.value if match.value is not None else orjson.loads(frame.data)


class RecordingMatcher:
    """The replay's matcher: a call matches an unconsumed recorded call under the same parent
    with the same name and key (so concurrent calls match in any start order); with
    ``match="key"``, any unconsumed recorded call of that name and key. Failing that, the
    recorded call at the same address (or the next of that name) tells what changed.

    ``prepare(boundary, data) -> data`` transforms the live input snapshot before anything
    else (see the seams in :mod:`replayable._engine`); ``pii`` (the recorded run's
    pseudonymizer) cleans a live input the way the recording cleaned it, after the redaction
    (:func:`replayable.canonical.keyed_input`), so unchanged code keys the same."""

    def __init__(
        self,
        recording: RecordedRun,
        *,
        match: MatchMode | str,
        prepare: Prepare | None = None,
        pii: Pseudonymizer | None = None,
    ) -> None:
        if match not in ("address", "key"):
            raise ValueError(f"match must be 'address' or 'key', not {match!r}")
        self.recording = recording
        self.by_address = match == "address"
        self.prepare = prepare
        self.pii = pii

    def match(self, frame: Frame) -> Match:
        """Take the recorded call that answers ``frame``; key it (``frame.key``, with
        ``frame.data`` redacted as recorded)."""
        b = frame.b
        assert b is not None
        if self.prepare is not None:
            frame.data = self.prepare(b, frame.data)
        if self.by_address:
            ev = self._same(b, frame)
            if ev is not None:  # byte for byte the recorded (cleaned) input: nothing to clean
                frame.key = ev.key
                frame.same_input = True
                return Match(ev, None, True)
        data, value, key = canonical.keyed_input(b, frame.data, self.pii)
        frame.data = data  # the replay records the redacted input it keyed
        frame.key = key
        ev, div = self._match(b, frame, key, data, value)
        return Match(ev, div, False, value)

    def _same(self, b: Boundary, frame: Frame) -> Event | None:
        """The next recorded call of ``b`` under this parent, when the call's input snapshot is
        byte for byte its recorded input (taken if so)."""
        parent = frame.parent
        prec = parent.rec_seq if parent is not None else None
        if prec == UNMATCHED:
            return None
        rec = self.recording
        with rec.lock:
            same = rec.next_if_same((prec, b.name), frame.data)
            if same is None:
                return None
            ev, recorded = same
            rec.consumed.add(ev.seq)
        # The recorded bytes stand for the snapshot from here on: the snapshot is freed now,
        # not held until the writer takes the step (a long replay's memory stays flat).
        frame.data = recorded
        return ev

    def _match(
        self, b: Boundary, frame: Frame, key: str, data: bytes, value: Any
    ) -> tuple[Event | None, Divergence | None]:
        parent = frame.parent
        prec = parent.rec_seq if parent is not None else None
        rec = self.recording
        with rec.lock:
            if not self.by_address:
                cands = [e for e in rec.by_key.get((b.name, key), ()) if e.seq not in rec.consumed]
                if cands:
                    return self._checked(b, rec.take(cands[0]), data, value), None
                near = [e for e in rec.events.values() if e.boundary == b.name]
                nearest = next((e for e in near if e.seq not in rec.consumed), None)
                if nearest is not None:  # reported as changed here, so not as skipped later
                    rec.take(nearest)
                return None, self._divergence(b, frame, nearest, data, value)
            if prec == UNMATCHED:
                return None, self._divergence(b, frame, None, data, value)
            gkey = (prec, b.name)
            group = rec.groups.get(gkey, [])
            start = rec.first_unconsumed(gkey, group)
            for i in range(start, len(group)):
                e = group[i]
                if e.key == key and e.seq not in rec.consumed:
                    return self._checked(b, rec.take(e), data, value), None
            cands = [e for e in group[start:] if e.seq not in rec.consumed]
            tail = frame.address.rsplit(" > ", 1)[-1]
            base = rec.events[prec].address + " > " if prec is not None else ""
            expected = base + tail
            at = next((e for e in cands if e.address == expected), cands[0] if cands else None)
            if at is not None:
                rec.take(at)
            return at, self._divergence(b, frame, at, data, value)

    def _checked(self, b: Boundary, ev: Event, data: bytes, value: Any) -> Event:
        """Warn when a field left out of the key changed: the key matched, the input did not."""
        # Only fields the user left out of the key (key=, ignore=) are worth a warning:
        # transient ones (request ids, timestamps) are expected to change on every call.
        if (b.key_fields is not None or b.ignore) and not _cut.was_cut(ev, "input"):
            actual = value if value is not None else orjson.loads(data)
            if actual != ev.input:
                changes = diff_values(ev.input, actual)
                if changes:
                    fields = ", ".join(c.path for c in changes[:5])
                    warn(
                        f"{b.name} at {ev.address}: matched by key, but fields outside the key "
                        f"changed: {fields}",
                    )
        return ev

    def _divergence(
        self, b: Boundary, frame: Frame, ev: Event | None, data: bytes, value: Any
    ) -> Divergence:
        actual = value if value is not None else orjson.loads(data)
        run_id = self.recording.source.id
        if ev is None:
            return Divergence(
                reason="unexpected",
                address=frame.address,
                boundary=b.name,
                actual_input=actual,
                run_id=run_id,
            )
        return Divergence(
            reason="changed",
            address=ev.address,
            boundary=b.name,
            recorded_input=ev.input,
            actual_input=actual,
            changes=diff_values(ev.input, actual),
            run_id=run_id,
        )


class RecordedServer:
    """Serves a recorded event as it is; a stored one is also the replay step's ``source`` (the
    step is kept as a reference to it, not a copy)."""

    def __init__(self, recording: RecordedRun) -> None:
        self.events = recording.events
        self.run_id = recording.source.id

    def serve(self, frame: Frame, ev: Event) -> Serve:
        """Serve the recorded call ``ev``, a dict whose keys collide as strings rebuilt whole
        (:func:`replayable.canonical.untag`); refuse one whose output was stored cut (over the
        recording's size cap: :class:`~replayable.errors.CutValue`) unless its boundary says
        ``serve_cut=True``."""
        b = frame.b
        assert b is not None
        cut = _cut.cut_output(ev)
        if cut is not None:
            if not b.serve_cut:
                raise _cut.refusal(ev, b.name, self.run_id, cut)
            # The marker is served: the replay's step says so too (a replay of it refuses).
            frame.meta[_cut.META] = ["output"]
        if type(ev) is not StoredEvent or self.events.get(ev.seq) is not ev:
            # A what-if's stand-in for the recorded call, or an event from a trace file.
            output = ev.output
            if ev.has_meta(canonical.TAGGED_META):
                output = canonical.untag(output)
            return Serve.recorded(output, ev.error, ev.meta)
        # The recorded call as it is, from a store: the agent gets a decode of its output of its
        # own, and the replay's record refers to the stored event (whose bytes nothing changes).
        output = ev.decoded("output")
        if ev.has_meta(canonical.TAGGED_META):  # a dict whose keys collide: rebuilt whole
            output = canonical.untag(output)
        if (b.is_gen or b.is_agen) and ev.has_meta("stream"):  # a plain call has no use for it
            serve = Serve.recorded(output, ev.error, ev.meta)
            serve.source = ev
            return serve
        # Positional (output, error, exc, handled, partial, source): this runs on every call.
        return Serve(output, ev.error, None, (), False, ev)


def _own_function(frame: Frame, fn: Callable[..., Any]) -> Callable[..., Any]:
    return fn


class ReplayPolicy:
    """The replay's rules over its parts: agents and ``live=`` boundaries run, every other call
    is served from the recording by ``server`` once ``matcher`` matched it; a divergence is
    kept (and raised unless the call runs live and the replay is not ``strict``); a call the
    recording cannot serve goes to the ``fallback`` cassette when it may; ``keeper`` keeps each
    call in the replay's own run."""

    serves_recordings = True

    def __init__(
        self,
        recording: RecordedRun,
        keeper: Recorder,
        *,
        live: Iterable[str],
        allow_side_effects: bool,
        strict: bool,
        matcher: Matcher,
        server: Server,
        fallback: Cassette | None = None,
        sandbox: AbstractContextManager[Any] | None = None,
        runner: Runner | None = None,
        follow: bool = False,
    ) -> None:
        self.recording = recording
        self.source_events: Mapping[int, Event] = recording.events
        self.keeper = keeper
        self.matcher = matcher
        self.server = server
        self.runner = runner or _own_function
        self.replay_strict = strict
        self.divergences: list[Divergence] = []
        self.stopped_by: Divergence | None = None
        self.fallback = fallback
        self.fallback_calls: list[Divergence] = []
        self.sandbox = sandbox
        allowed = allow_side_effects or sandbox is not None
        self.follow: Follow | None = (
            Follow(recording.events, allow_side_effects=allowed) if follow else None
        )
        """The follow part (``follow=True``): remote calls named in ``live`` ask their callee to
        replay its linked run, a side effect only as :mod:`replayable._follow`'s rule allows."""
        if isinstance(matcher, ImportedMatcher):  # its steps are named by the tracer, not us
            self.live_names = matcher.resolve_live(live, allowed)
            self.live_calls: set[tuple[str, int]] = set()
        else:
            self.live_names, self.live_calls = self._resolve_live(live, allowed)

    @property
    def run(self) -> Run:
        """The replay's own run."""
        return self.keeper.run

    @property
    def source(self) -> Run:
        """The recorded run."""
        return self.recording.source

    def _resolve_live(
        self, live: Iterable[str], allow_side_effects: bool
    ) -> tuple[set[str], set[tuple[str, int]]]:
        registered = registry()
        counts = self.recording.counts  # recorded calls per boundary
        names, calls = resolve_live(live, set(counts))
        for full in names | {name for name, _ in calls}:
            b = registered.get(full)
            if b is None:
                raise UnknownBoundary(
                    f"live boundary {full!r} is in the recording but not registered: "
                    "import the module that defines it before replaying"
                )
            if (
                b.side_effects
                and not allow_side_effects
                and self.follow is not None
                and followable(b)
            ):
                # Followed: safe only where the callee recorded a linked run to replay.
                self.follow.check_live(full, self._live_events(full, names, calls))
            elif b.side_effects and not allow_side_effects:
                raise SideEffectRefused(
                    f"{full} has side effects; running it live would fire them again. Give it "
                    "a world of its own (sandbox=a scratch database or fake client) or pass "
                    "allow_side_effects=True (CLI: --allow-side-effects) if you mean it"
                )
        for full, n in sorted(calls):
            if n > counts.get(full, 0):
                raise UnknownBoundary(
                    f"'{full}#{n}': {full} has {counts.get(full, 0)} recorded call(s) in run "
                    f"{self.recording.source.id}"
                )
        return names, calls

    def _live_events(self, name: str, names: set[str], calls: set[tuple[str, int]]) -> list[Event]:
        """The recorded calls of boundary ``name`` that ``live=`` makes run live."""
        rec = self.recording
        every = name in names
        return [
            ev
            for seq, ev in sorted(rec.events.items())
            if ev.boundary == name and (every or (name, rec.nth[seq]) in calls)
        ]

    def add_divergence(self, div: Divergence) -> None:
        """Keep a divergence found elsewhere (in a followed callee's replay)."""
        with self.recording.lock:
            self.divergences.append(div)

    def named_live(self, b: Boundary, ev: Event | None) -> bool:
        """Whether ``live=`` names this call (its boundary, or its recorded call number)."""
        if b.name in self.live_names:
            return True
        return (
            bool(self.live_calls)
            and ev is not None
            and (b.name, self.recording.nth[ev.seq]) in self.live_calls
        )

    # -- the policy --------------------------------------------------------------------------

    def at_start(self, frame: Frame) -> Serve | None:
        """Match the call to the recording: serve it, run it live (agents, ``live=``), hand it
        to the fallback, or raise the divergence that says what changed."""
        if OBSERVERS:
            self.keeper.observe_begin(frame)
        b = frame.b
        assert b is not None
        m = self.matcher.match(frame)
        ev, div = m.event, m.divergence
        live = b.kind == "agent" or b.name in self.live_names
        if not live and self.live_calls and ev is not None:
            live = (b.name, self.recording.nth[ev.seq]) in self.live_calls
        if div is None and ev is not None and not live:  # the usual call: served as recorded
            self.claim(frame, ev)
            return self.server.serve(frame, ev)
        if div is not None and not live and self.falls_back(b):
            # The recording cannot serve this call (a fix changed its input): the cassette can.
            assert self.fallback is not None
            with self.recording.lock:
                self.fallback_calls.append(div)
            if ev is not None:
                self.recording.consume_subtree(ev.seq)
            frame.rec_seq = UNMATCHED
            frame.how = "fallback"
            return self.fallback.at_start(frame)
        self.settle(frame, ev, div, live=live)
        if live or ev is None:
            return None
        return self.server.serve(frame, ev)

    def at_end(self, frame: Frame, outcome: Ending) -> None:
        """Keep the call in the replay's run; a call the fallback took ran live on a miss, and
        the cassette keeps it too."""
        self.keeper.keep(frame, outcome)
        if frame.how == "fallback" and self.fallback is not None:
            self.fallback.at_end(frame, outcome)

    def function(self, frame: Frame) -> Callable[..., Any]:
        """What a live call runs: the boundary's own function, through the ``runner``."""
        b = frame.b
        assert b is not None
        return self.runner(frame, b.fn)

    def falls_back(self, b: Boundary) -> bool:
        """Whether the fallback cassette may take a call the recording cannot serve: never a
        side effect (a miss would fire it), never an agent (agents always run)."""
        return self.fallback is not None and not b.side_effects and b.kind != "agent"

    def settle(self, frame: Frame, ev: Event | None, div: Divergence | None, *, live: bool) -> None:
        """What a plain replay does with a call once matched: keep its divergence (raised
        unless the call runs live and the replay is not strict), take the recorded call it
        serves (:meth:`claim`), or note the recorded call a live one stands for."""
        if div is not None:
            with self.recording.lock:
                self.divergences.append(div)
            if self.replay_strict or not live:
                raise div
        frame.rec_seq = ev.seq if ev is not None else UNMATCHED
        if ev is not None and not live:
            self.claim(frame, ev)
        elif ev is not None:
            frame.meta["source_seq"] = ev.seq

    def claim(self, frame: Frame, ev: Event) -> None:
        """Take the recorded call ``ev`` to serve it: refuse one whose output was not
        recorded, consume the recorded subtree it stands for, mark the step served."""
        seq = frame.rec_seq = ev.seq
        if ev.has_meta("unserializable_output"):
            b = frame.b
            raise ReplayableError(
                f"cannot serve {b.name if b is not None else ev.boundary} at {ev.address}: its "
                f"output was not recorded (unserializable at "
                f"{ev.meta['unserializable_output']!r}); give the boundary a codec, or name it "
                "in live=[...]"
            )
        self.recording.consume_subtree(seq)
        meta = frame.meta
        meta["served"], meta["source_seq"] = True, seq

    def skipped(self) -> list[Divergence]:
        """Recorded calls never reached (see :meth:`RecordedRun.skipped`)."""
        return self.recording.skipped()


class WhatIfHooks(Protocol):
    """What a what-if adds to a :class:`Replay` around its :class:`ReplayPolicy`."""

    changes: list[Any]

    def split_skipped(self, skipped: list[Divergence], *, note: bool = True) -> list[Divergence]:
        """The skipped calls that are divergences; the rest are changes (noted if ``note``)."""
        ...

    def before_close(self) -> None:
        """Keep what the what-if changed in the run's metadata."""

    def report_lines(self) -> list[str]:
        """The report's what-if section."""
        ...


class Replay(AsyncToo["Replay"]):
    """A replay in progress or done: ``divergences``, ``report()``, the replay ``run``, ``source``.

    Use it as a context manager (``with`` or ``async with``); see :func:`replayable.replay`.

    >>> import replayable as rp
    >>> pick = rp.boundary(kind="llm", name="demo:pick")(lambda options: options[0])
    >>> with rp.record() as run:
    ...     pick(["a", "b"])
    'a'
    >>> with rp.replay(run.id, live=["demo:pick"], strict=False) as r:
    ...     pick(["a", "b", "c"])         # changed input: runs live, the divergence is kept
    'a'
    >>> [d.reason for d in r.divergences], r.run.parent_run == run.id
    (['changed'], True)
    """

    def __init__(
        self,
        session: ReplayPolicy,
        whatif: WhatIfHooks | None = None,
        *,
        allow_network: bool | Iterable[str] = False,
    ) -> None:
        self.session = session
        self.allow_network = (
            allow_network if isinstance(allow_network, bool) else (tuple(allow_network))
        )
        """The replay policy (its recording, divergences, keeper)."""
        self.whatif = whatif
        policy: Any = whatif if whatif is not None else session
        keeper = session.keeper
        self.engine = Engine(
            policy,
            unserializable="raise" if keeper.strict else "mark",
            run=keeper.run,
            replaying=session,
        )

    @property
    def run(self) -> Run:
        """The replay's own run (recorded, linked to the source by ``parent_run``)."""
        return self.session.run

    @property
    def source(self) -> Run:
        """The recorded run being replayed."""
        return self.session.source

    @property
    def recorded_events(self) -> list[Event]:
        """The source run's recorded events, in start order."""
        events = self.session.recording.events
        return [events[seq] for seq in sorted(events)]

    @property
    def divergences(self) -> list[Divergence]:
        """Every divergence found so far, in the order found (skipped calls last)."""
        return list(self.session.divergences)

    @property
    def changes(self) -> list[Any]:
        """What-if replays: every step the override or fork changed (``Change`` objects, in
        order); empty for a plain replay."""
        return list(self.whatif.changes) if self.whatif is not None else []

    @property
    def fallback_calls(self) -> list[Divergence]:
        """The calls the recording could not serve that the ``fallback=`` cassette took."""
        return list(self.session.fallback_calls)

    @property
    def ok(self) -> bool:
        """True when the replay found no divergence."""
        return not self.session.divergences

    def report(self) -> str:
        """A human-readable summary: the source, then each divergence with its field diff."""
        s = self.session
        rec = s.recording
        served = sum(1 for e in rec.events if e in rec.consumed)
        head = (
            f"replay of run {s.source.id}: {len(rec.events)} recorded calls, {served} matched, "
            f"{len(s.divergences)} divergence(s)"
        )
        whatif = self.whatif.report_lines() if self.whatif is not None else []
        if whatif and whatif[0].startswith("fork of run"):
            head = whatif.pop(0)  # names the source and the fork point; "matched" would mislead
        # An imported run's steps are compared on what its trace carries: said once per kind.
        notes = s.matcher.report_lines() if isinstance(s.matcher, ImportedMatcher) else []
        if not s.divergences:
            tail = "no divergence" + ("" if whatif else ": the code took the recorded path")
            return "\n".join([head, *notes, *whatif, tail])
        lines = [head, *notes, *whatif]
        lines += [f"{i}. {d.describe()}" for i, d in enumerate(s.divergences, 1)]
        if s.stopped_by is not None and s.stopped_by in s.divergences:
            at = s.divergences.index(s.stopped_by) + 1
            lines.append(
                f"the replay stopped at divergence {at}; the calls reported after it were never "
                "reached because of it"
            )
        return "\n".join(lines)

    def _repr_html_(self) -> str | None:
        """HTML for notebooks (the viewer's fragments, every recorded value escaped); None
        without jinja2, so the notebook shows the plain repr."""
        try:
            from replayable.viewer._notebook import replay_html
        except ImportError:
            return None
        return replay_html(self)

    def __rich__(self) -> Any:
        """For a rich console (terminals, ``rich.print``): recorded markup and terminal
        escapes print as text."""
        from replayable._inert import Inert
        from replayable.cli._render import replay_view

        return Inert(replay_view(self))

    def skipped(self) -> list[Divergence]:
        """The recorded calls not reached so far, as divergences (what the replay adds to
        :attr:`divergences` when it ends; a what-if leaves out those after its fork point)."""
        skipped = self.session.skipped()
        if self.whatif is not None:
            skipped = self.whatif.split_skipped(skipped, note=False)
        return skipped

    def __enter__(self) -> Replay:
        refuse_nested()
        s = self.session
        if s.sandbox is not None:
            s.sandbox.__enter__()  # the world the live side effects act on
        try:
            if s.fallback is not None:
                s.fallback.open()
            s.keeper.start()
            self.engine.enter()
        except BaseException:
            self._leave(*sys.exc_info())
            raise
        recorded = s.source.metadata.get(_network.ENDPOINTS_KEY)
        EXECUTOR.acquire()
        _network.enter(
            self.engine,
            replay=True,
            allow=self.allow_network,
            endpoints=[str(e) for e in recorded] if isinstance(recorded, list) else (),
        )
        return self

    def _leave(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        s = self.session
        try:
            if s.fallback is not None:
                s.fallback.close()
        finally:
            if s.sandbox is not None:
                s.sandbox.__exit__(exc_type, exc, tb)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        s = self.session
        refused = _network.leave(self.engine)
        EXECUTOR.release()
        try:
            self.engine.leave()
        finally:
            if isinstance(exc, Divergence):
                s.stopped_by = exc
            skipped = s.skipped()
            if self.whatif is not None:
                skipped = self.whatif.split_skipped(skipped)
            s.divergences.extend(skipped)
            s.run.metadata["divergences"] = [d.to_dict() for d in s.divergences]
            if s.fallback_calls:
                s.run.metadata["fallback"] = [d.to_dict() for d in s.fallback_calls]
            if self.whatif is not None:
                self.whatif.before_close()
            try:
                s.keeper.close(exc, status="diverged" if s.divergences and exc is None else None)
            finally:
                self._leave(exc_type, exc, tb)
        if refused is not None and exc is not refused:
            # The code swallowed the refusal (an SDK turned it into its own connection error):
            # it is still the cause.
            raise refused
        if not (s.replay_strict and s.divergences):
            return
        first = s.divergences[0]
        # The first divergence is the cause, even when the agent's code caught it (turned it
        # into a tool message, say) and something else went wrong later. Skipped calls are only
        # news when nothing else is propagating.
        if exc is None or (exc is not first and first.reason != "skipped"):
            raise first


@dataclass(slots=True)
class ReplayParts:
    """What a replay is built from, before a policy decides with them."""

    recording: RecordedRun
    keeper: Recorder
    matcher: Matcher
    server: Server


def replay_parts(
    source: Run,
    events: Iterable[Event],
    *,
    target: Store | None,
    match: MatchMode | str = "address",
    strict: bool = False,
    sink: Sink | None = None,
    metadata: Mapping[str, Any] | None = None,
    env: Mapping[str, Any] | None = None,
    prepare: Prepare | None = None,
    pii: Pseudonymizer | None = None,
    kept_with_source: bool = False,
) -> ReplayParts:
    """The recording's index, the keeper of the replay's own run (into ``sink``, by default
    ``target``'s writer), the matcher and the server. ``pii``: the recorded run's
    pseudonymizer, applied to live inputs (the matcher) and to what the replay keeps (the
    keeper). Served steps are kept as references to the source (range rows) when the replay
    is kept in the store the source lives in: ``target`` is the source's store, or the caller
    says ``sink`` ends there (``kept_with_source``; a reference never points across stores)."""
    if match not in ("address", "key"):
        raise ValueError(f"match must be 'address' or 'key', not {match!r}")
    run = Run(
        id=new_run_id(),
        name=f"replay of {source.name or source.id}",
        tags=dict(source.tags),
        metadata={"replay_of": source.id, **(metadata or {})},
        environment=dict(env) if env is not None else environment(),
        started_at=time.time(),
        parent_run=source.id,
        store=target,
    )
    if target is None and sink is None:
        raise ValueError("a replay needs a store to keep its run in, or a sink")
    keeper = Recorder(target, run, sink=sink, pii=pii)  # type: ignore[arg-type]
    if kept_with_source or (target is not None and source.store is target):
        keeper.refer_to = source.id  # served steps refer to the source instead of copying it
    recording = RecordedRun(source, events, index_keys=match == "key")
    if is_imported(source):  # traced by another tool: matched on what the trace carries
        matched = ImportedMatcher(recording, pii=pii)
        return ReplayParts(recording, keeper, matched, ImportedServer(recording))
    matcher = RecordingMatcher(recording, match=match, prepare=prepare, pii=pii)
    return ReplayParts(recording, keeper, matcher, RecordedServer(recording))


def build_replay(
    source: Run,
    events: Iterable[Event],
    *,
    target: Store | None,
    live: Iterable[str] = (),
    allow_side_effects: bool = False,
    strict: bool = True,
    match: MatchMode | str = "address",
    fallback: Cassette | None = None,
    sandbox: AbstractContextManager[Any] | None = None,
    sink: Sink | None = None,
    metadata: Mapping[str, Any] | None = None,
    env: Mapping[str, Any] | None = None,
    follow: bool = False,
    allow_network: bool | Iterable[str] = False,
    pii: Pseudonymizer | None = None,
    kept_with_source: bool = False,
) -> Replay:
    """A plain replay of ``source`` (``rp.replay`` and ``rp.check`` both build theirs here;
    ``kept_with_source``: see :func:`replay_parts`)."""
    parts = replay_parts(
        source,
        events,
        target=target,
        match=match,
        sink=sink,
        metadata=metadata,
        env=env,
        pii=pii,
        kept_with_source=kept_with_source,
    )
    if fallback is not None and pii is not None:
        fallback.pii = pii  # what a fallback cassette keeps is pseudonymized the same way
    policy = ReplayPolicy(
        parts.recording,
        parts.keeper,
        live=live,
        allow_side_effects=allow_side_effects,
        strict=strict,
        matcher=parts.matcher,
        server=parts.server,
        fallback=fallback,
        sandbox=sandbox,
        follow=follow,
    )
    return Replay(policy, allow_network=allow_network)
