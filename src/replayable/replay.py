"""``rp.replay``: run the agent's own code against a recording.

Boundaries of kind ``agent`` and those named in ``live`` execute; every other boundary is served
from the recording and its function is never called. A call is matched to an unconsumed recorded
call under the same parent with the same name and canonical key (so concurrent calls match in any
start order); failing that, the recorded call at the same address tells *what changed*.
"""

from __future__ import annotations

import contextvars
import operator
import os
import sys
import threading
import time
import warnings
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Literal

import orjson

from replayable import _network, canonical
from replayable._diff import diff_values
from replayable._engine import Ending, Serve, activate, deactivate, resolve_live
from replayable._pii import PII, Pseudonymizer, for_replay
from replayable._remote import followable, register_recorded
from replayable._threads import EXECUTOR
from replayable._version import __version__
from replayable._writer import Pending
from replayable.boundary import registry
from replayable.cassette import Cassette
from replayable.context import FRAME, SESSION, AsyncToo, Frame
from replayable.errors import (
    Divergence,
    ReplayableError,
    ReplayableWarning,
    SideEffectRefused,
    TraceCorrupt,
    UnknownBoundary,
    Unserializable,
)
from replayable.record import (
    OBSERVERS,
    Recorder,
    environment,
    new_run_id,
    reset_context,
)
from replayable.store import Store, load_run, open_store
from replayable.trace import Event, Run, StoredEvent, check_recording

if TYPE_CHECKING:
    from replayable.boundary import Boundary

__all__ = ["Replay", "replay"]

UNMATCHED = -1
_MISS: Any = object()
"""What the fast lane returns for a call it leaves to the driver."""
_SEQ = operator.attrgetter("seq")

Match = Literal["address", "key"]
"""How a replay matches calls: by place in the call tree and key, or by key alone."""


@dataclass(slots=True)
class _Plan:
    """A replay's decision for one call: run ``live``, else serve ``event``."""

    live: bool
    event: Event | None
    key: str


def _check_version(run: Run) -> None:
    recorded = str(run.environment.get("replayable") or "")
    if recorded and recorded.split(".", maxsplit=1)[0] != __version__.split(".")[0]:
        raise TraceCorrupt(
            f"run {run.id} was recorded by replayable {recorded}; this is {__version__} "
            "(major versions differ): replay it with the version that recorded it"
        )


class Replayer(Recorder):
    """The session behind :func:`replay`. It is a :class:`Recorder` too: the replay is recorded."""

    def __init__(
        self,
        store: Store,
        run: Run,
        source: Run,
        events: list[Event],
        *,
        live: Iterable[str],
        allow_side_effects: bool,
        strict: bool,
        match: Match | str,
        fallback: Cassette | None = None,
        sandbox: AbstractContextManager[Any] | None = None,
        follow: bool = False,
        pii: Pseudonymizer | None = None,
    ) -> None:
        super().__init__(store, run, pii=pii)
        self.follow = follow
        """Remote calls named in ``live`` ask their callee to replay its own linked run."""
        if fallback is not None and pii is not None:
            fallback.pii = pii  # what a fallback cassette keeps is pseudonymized the same way
        if source.store is store:  # served steps refer to the source instead of copying it
            self.refer_to = source.id
        if match not in ("address", "key"):
            raise ValueError(f"match must be 'address' or 'key', not {match!r}")
        self.source = source
        self.replay_strict = strict
        self.match = match
        self.events = {ev.seq: ev for ev in events}
        self.children: dict[int | None, list[int]] = defaultdict(list)
        self.groups: dict[tuple[int | None, str], list[Event]] = defaultdict(list)
        self.by_key: dict[tuple[str, str], list[Event]] = defaultdict(list)
        self.nth: dict[int, int] = {}
        counts: dict[str, int] = defaultdict(int)
        children, groups, by_key, nth = self.children, self.groups, self.by_key, self.nth
        by_address = match == "address"
        for ev in sorted(events, key=_SEQ):
            seq, parent, name = ev.seq, ev.parent_seq, ev.boundary
            children[parent].append(seq)
            groups[(parent, name)].append(ev)
            if not by_address:
                by_key[(name, ev.key)].append(ev)
            counts[name] += 1
            nth[seq] = counts[name]
        self._counts = counts
        self.consumed: set[int] = set()
        self._first: dict[tuple[int | None, str], int] = {}
        self.divergences: list[Divergence] = []
        self.stopped_by: Divergence | None = None
        self._lock = threading.Lock()
        self.live_names: set[str] = set()
        self.live_calls: set[tuple[str, int]] = set()
        self.fallback = fallback
        self.fallback_calls: list[Divergence] = []
        self.sandbox = sandbox
        self._resolve_live(live, allow_side_effects or sandbox is not None)
        self._direct = (
            match == "address" and not self.live_calls and type(self)._plan is Replayer._plan
        )
        """Calls may take the fast path of :meth:`at_start`: matched by address, no single
        call named live, the plain replay's plan (a what-if plans its own way)."""

    def add_divergence(self, div: Divergence) -> None:
        """Keep a divergence found elsewhere (in a followed callee's replay)."""
        with self._lock:
            self.divergences.append(div)

    def _resolve_live(self, live: Iterable[str], allow_side_effects: bool) -> None:
        registered = registry()
        counts = self._counts  # recorded calls per boundary
        self.live_names, self.live_calls = resolve_live(live, set(counts))
        for full in self.live_names | {name for name, _ in self.live_calls}:
            b = registered.get(full)
            if b is None:
                raise UnknownBoundary(
                    f"live boundary {full!r} is in the recording but not registered: "
                    "import the module that defines it before replaying"
                )
            # A followed remote call is replayed by its callee, which refuses side effects.
            if b.side_effects and not allow_side_effects and not (self.follow and followable(b)):
                raise SideEffectRefused(
                    f"{full} has side effects; running it live would fire them again. Give it "
                    "a world of its own (sandbox=a scratch database or fake client) or pass "
                    "allow_side_effects=True (CLI: --allow-side-effects) if you mean it"
                )
        for full, n in sorted(self.live_calls):
            if n > counts.get(full, 0):
                raise UnknownBoundary(
                    f"'{full}#{n}': {full} has {counts.get(full, 0)} recorded call(s) in run "
                    f"{self.source.id}"
                )

    # -- the fast lane -----------------------------------------------------------------------

    def call(self, b: Boundary, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The sync driver, with the fast lane (:meth:`_lane`) in front of it."""
        served = self._lane(b, args, kwargs)
        if served is _MISS:
            return Recorder.call(self, b, args, kwargs)
        return served

    async def call_async(self, b: Boundary, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The async driver, with the fast lane in front of it (a served value awaits
        nothing)."""
        served = self._lane(b, args, kwargs)
        if served is _MISS:
            return await Recorder.call_async(self, b, args, kwargs)
        return served

    def _lane(self, b: Boundary, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        """The usual replayed call, served in one pass; :data:`_MISS` for the driver.

        A plain or async call whose input is byte for byte the next recorded call's under the
        same parent, recorded returning a value, is served here: what ``begin``, ``at_start``
        and ``at_end`` do for it (seq, address, claim, the step kept as a reference to its
        source), without the frame, serve and ending objects a call through the engine's
        driver builds. Anything else (an agent, a live or what-if call, a recorded error, a
        miss, an observer, a source in another store) is left to the driver, which decides it
        as usual; ``tests/test_replay_fast_lane.py`` checks the two keep the same steps.
        """
        refer_to = self.refer_to
        if (
            not self._direct
            or refer_to is None
            or b.kind == "agent"
            or b.name in self.live_names
            or OBSERVERS
            or self.closed
        ):
            return _MISS
        parent = FRAME.get() or self.root
        try:
            data = canonical.snapshot(b.bind(args, kwargs))
        except Unserializable:
            return _MISS  # the driver marks what has no JSON form
        started_at, t0 = time.time(), time.perf_counter_ns()
        with self._lock:
            same = self._next_if_same((parent.rec_seq, b.name), data)
            if same is None:  # the driver matches it again, and says why it cannot serve it
                return _MISS
            hit, recorded = same
            if type(hit) is not StoredEvent:
                return _MISS
            try:  # reading the error and meta decodes them too
                if hit.error is not None or hit.has_meta("unserializable_output"):
                    return _MISS
                output = hit.decoded("output")
            except ValueError:  # a stored field that is not JSON: the driver refuses it
                return _MISS
            seq = hit.seq
            self.consumed.add(seq)
            step = next(self._seq)
            address = parent.next_child(b.name)
        self._consume_subtree(seq)
        self.writer.submit(
            Pending(
                self.run.id,
                step,
                address,
                parent.seq if parent.seq >= 0 else None,
                b,
                recorded,  # the same bytes as the snapshot: keep these, free the copy
                b"null",
                None,
                {"served": True, "source_seq": seq},
                started_at,
                time.perf_counter_ns() - t0,
                hit.key,
                True,
                hit,
                refer_to,
                True,
            )
        )
        if self.strict and self.writer.error is not None:
            raise self.writer.error
        return b.decode_output(output)

    # -- the policy --------------------------------------------------------------------------

    serves_recordings = True

    def at_start(self, frame: Frame) -> Serve | None:
        """Match the call to the recording: serve it, run it live (agents, ``live=``), or raise
        the divergence that says what changed."""
        if OBSERVERS:
            self.observe_begin(frame)
        b = frame.b
        assert b is not None
        if self._direct and b.kind != "agent" and b.name not in self.live_names:
            # The usual served call: the next recorded call here, with the same input bytes.
            ev = self._same_as_recorded(b, frame)
            if ev is not None:
                frame.key = ev.key
                self._claim(b, frame, ev)
                return self._serve(b, ev)
        plan = self._plan(b, frame)
        if self.fallback is not None and frame.meta.get("fallback"):
            return self.fallback.at_start(frame)
        ev = plan.event
        if plan.live or ev is None:
            return None
        return self._serve(b, ev)

    def _serve(self, b: Boundary, ev: Event) -> Serve:
        """Serve the recorded call ``ev``."""
        if self.events.get(ev.seq) is not ev or not isinstance(ev, StoredEvent):
            # A what-if's stand-in for the recorded call, or an event from a trace file.
            return Serve.recorded(ev.output, ev.error, ev.meta)
        # The recorded call as it is, from a store: the agent gets a decode of its output of its
        # own, and the replay's record refers to the stored event (whose bytes nothing changes).
        if (b.is_gen or b.is_agen) and ev.has_meta("stream"):  # a plain call has no use for it
            serve = Serve.recorded(ev.decoded("output"), ev.error, ev.meta)
            serve.source = ev
            return serve
        # Positional (output, error, exc, handled, partial, source): this runs on every call.
        return Serve(ev.decoded("output"), ev.error, None, (), False, ev)

    def at_end(self, frame: Frame, outcome: Ending) -> None:
        """Keep the call in the replay's run; a call the fallback took ran live on a miss, and
        the cassette keeps it too."""
        Recorder.at_end(self, frame, outcome)  # not super(): it costs an object on every call
        if self.fallback is not None and frame.meta.get("fallback"):
            self.fallback.at_end(frame, outcome)

    def _falls_back(self, b: Boundary) -> bool:
        """Whether the fallback cassette may take a call the recording cannot serve: never a
        side effect (a miss would fire it), never an agent (agents always run)."""
        return self.fallback is not None and not b.side_effects and b.kind != "agent"

    def _plan(self, b: Boundary, frame: Frame) -> _Plan:
        """The decision for one call (what-if replays decide differently): the recorded event
        it matched, and whether it runs live; raising refuses it."""
        ev = self._same_as_recorded(b, frame)
        div = None
        if ev is not None:  # byte for byte the recorded (redacted) input: nothing to redact
            frame.key = ev.key
        else:
            # pseudonymized as the recording was, so unchanged code keys the same
            data, value = canonical.clean_input(b, frame.data, self.pii)
            frame.sorted_data = (
                orjson.dumps(value, option=orjson.OPT_SORT_KEYS)
                if value is not None
                else canonical.sorted_json(data)
            )
            frame.data = data  # the replay records the redacted input it keyed
            key = frame.key = canonical.input_key(b, data, value, sorted_data=frame.sorted_data)
            ev, div = self._match(b, frame, key, data, value)
        live = b.kind == "agent" or b.name in self.live_names
        if self.live_calls and ev is not None and (b.name, self.nth[ev.seq]) in self.live_calls:
            live = True
        if div is not None and not live and self._falls_back(b):
            # The recording cannot serve this call (a fix changed its input): the cassette can.
            with self._lock:
                self.fallback_calls.append(div)
            if ev is not None:
                self._consume_subtree(ev.seq)
            frame.rec_seq = UNMATCHED
            frame.meta["fallback"] = True
            return _Plan(True, ev, key)
        return self._settle(b, frame, ev, div, frame.key or "", live=live)

    def _settle(
        self,
        b: Boundary,
        frame: Frame,
        ev: Event | None,
        div: Divergence | None,
        key: str,
        *,
        live: bool,
    ) -> _Plan:
        """What a plain replay does with a call once matched: keep its divergence (raised
        unless the call runs live and the replay is not strict), refuse to serve an output that
        was not recorded, consume the recorded subtree it serves."""
        if div is not None:
            with self._lock:
                self.divergences.append(div)
            if self.replay_strict or not live:
                raise div
        frame.rec_seq = ev.seq if ev is not None else UNMATCHED
        if ev is not None and not live:
            self._claim(b, frame, ev)
        elif ev is not None:
            frame.meta["source_seq"] = ev.seq
        return _Plan(live, ev, key)

    def _claim(self, b: Boundary, frame: Frame, ev: Event) -> None:
        """Take the recorded call ``ev`` to serve it: refuse one whose output was not
        recorded, consume the recorded subtree it stands for, mark the step served."""
        seq = frame.rec_seq = ev.seq
        if ev.has_meta("unserializable_output"):
            raise ReplayableError(
                f"cannot serve {b.name} at {ev.address}: its output was not recorded "
                f"(unserializable at {ev.meta['unserializable_output']!r}); give the boundary "
                "a codec, or name it in live=[...]"
            )
        self._consume_subtree(seq)
        meta = frame.meta
        meta["served"], meta["source_seq"] = True, seq

    def _same_as_recorded(self, b: Boundary, frame: Frame) -> Event | None:
        """The fast path: the next recorded call of ``b`` under this parent, when the call's
        input snapshot is byte for byte its recorded input (claimed if so)."""
        if self.match != "address":
            return None
        parent = frame.parent
        prec = parent.rec_seq if parent is not None else None
        if prec == UNMATCHED:
            return None
        with self._lock:
            same = self._next_if_same((prec, b.name), frame.data)
            if same is None:
                return None
            ev, recorded = same
            self.consumed.add(ev.seq)
        # The recorded bytes stand for the snapshot from here on: the snapshot is freed now,
        # not held until the writer takes the step (a long replay's memory stays flat).
        frame.data = recorded
        return ev

    def _next_if_same(
        self, gkey: tuple[int | None, str], data: bytes
    ) -> tuple[Event, bytes] | None:
        """The next unconsumed recorded call in ``groups[gkey]`` and its stored input, when
        that is ``data`` byte for byte (not claimed: the caller claims it). The caller holds
        the lock."""
        group = self.groups.get(gkey)
        if not group:
            return None
        start = self._first_unconsumed(gkey, group)
        if start == len(group):
            return None
        ev = group[start]
        recorded = ev.stored("input")
        return (ev, recorded) if recorded == data else None

    def _first_unconsumed(self, gkey: tuple[int | None, str], group: list[Event]) -> int:
        """The index of the first recorded call in ``group`` (``groups[gkey]``) not consumed
        yet; calls are mostly consumed in order, so the ones before it are skipped for good.
        The caller holds the lock."""
        start, end, consumed = self._first.get(gkey, 0), len(group), self.consumed
        while start < end and group[start].seq in consumed:
            start += 1
        self._first[gkey] = start
        return start

    def _match(
        self, b: Boundary, frame: Frame, key: str, data: bytes, value: Any
    ) -> tuple[Event | None, Divergence | None]:
        parent = frame.parent
        prec = parent.rec_seq if parent is not None else None
        with self._lock:
            if self.match == "key":
                cands = [
                    e for e in self.by_key.get((b.name, key), ()) if e.seq not in self.consumed
                ]
                if cands:
                    self.consumed.add(cands[0].seq)
                    return self._checked(b, cands[0], data, value), None
                near = [e for e in self.events.values() if e.boundary == b.name]
                nearest = next((e for e in near if e.seq not in self.consumed), None)
                if nearest is not None:  # reported as changed here, so not as skipped later
                    self.consumed.add(nearest.seq)
                return None, self._divergence(b, frame, nearest, data, value)
            if prec == UNMATCHED:
                return None, self._divergence(b, frame, None, data, value)
            gkey = (prec, b.name)
            group = self.groups.get(gkey, [])
            start = self._first_unconsumed(gkey, group)
            for i in range(start, len(group)):
                e = group[i]
                if e.key == key and e.seq not in self.consumed:
                    self.consumed.add(e.seq)
                    return self._checked(b, e, data, value), None
            cands = [e for e in group[start:] if e.seq not in self.consumed]
            tail = frame.address.rsplit(" > ", 1)[-1]
            base = self.events[prec].address + " > " if prec is not None else ""
            expected = base + tail
            at = next((e for e in cands if e.address == expected), cands[0] if cands else None)
            if at is not None:
                self.consumed.add(at.seq)
            return at, self._divergence(b, frame, at, data, value)

    def _checked(self, b: Boundary, ev: Event, data: bytes, value: Any) -> Event:
        """Warn when a field left out of the key changed: the key matched, the input did not."""
        # Only fields the user left out of the key (key=, ignore=) are worth a warning:
        # transient ones (request ids, timestamps) are expected to change on every call.
        if b.key_fields is not None or b.ignore:
            actual = value if value is not None else orjson.loads(data)
            if actual != ev.input:
                changes = diff_values(ev.input, actual)
                if changes:
                    fields = ", ".join(c.path for c in changes[:5])
                    warnings.warn(
                        f"{b.name} at {ev.address}: matched by key, but fields outside the key "
                        f"changed: {fields}",
                        ReplayableWarning,
                        stacklevel=5,
                    )
        return ev

    def _divergence(
        self, b: Boundary, frame: Frame, ev: Event | None, data: bytes, value: Any
    ) -> Divergence:
        actual = value if value is not None else orjson.loads(data)
        if ev is None:
            return Divergence(
                reason="unexpected",
                address=frame.address,
                boundary=b.name,
                actual_input=actual,
                run_id=self.source.id,
            )
        return Divergence(
            reason="changed",
            address=ev.address,
            boundary=b.name,
            recorded_input=ev.input,
            actual_input=actual,
            changes=diff_values(ev.input, actual),
            run_id=self.source.id,
        )

    def _consume_subtree(self, seq: int) -> None:
        if seq not in self.children:
            return
        stack = list(self.children[seq])
        with self._lock:
            while stack:
                s = stack.pop()
                self.consumed.add(s)
                stack.extend(self.children.get(s, ()))

    # -- the end -----------------------------------------------------------------------------

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


class Replay(AsyncToo["Replay"]):
    """A replay in progress or done: ``divergences``, ``report()``, the replay ``run``, ``source``.

    Use it as a context manager (``with`` or ``async with``); see :func:`replay`.

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

    def __init__(self, session: Replayer, *, allow_network: bool | Iterable[str] = False) -> None:
        self.session = session
        self.allow_network = (
            allow_network if isinstance(allow_network, bool) else (tuple(allow_network))
        )
        self._tokens: list[contextvars.Token[Any]] = []

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
        return [self.session.events[seq] for seq in sorted(self.session.events)]

    @property
    def divergences(self) -> list[Divergence]:
        """Every divergence found so far, in the order found (skipped calls last)."""
        return list(self.session.divergences)

    @property
    def changes(self) -> list[Any]:
        """What-if replays: every step the override or fork changed (``Change`` objects, in
        order); empty for a plain replay."""
        return list(getattr(self.session, "changes", ()))

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
        served = sum(1 for e in s.events if e in s.consumed)
        head = (
            f"replay of run {s.source.id}: {len(s.events)} recorded calls, {served} matched, "
            f"{len(s.divergences)} divergence(s)"
        )
        whatif = s.whatif_lines() if hasattr(s, "whatif_lines") else []
        if whatif and whatif[0].startswith("fork of run"):
            head = whatif.pop(0)  # names the source and the fork point; "matched" would mislead
        if not s.divergences:
            tail = "no divergence" + ("" if whatif else ": the code took the recorded path")
            return "\n".join([head, *whatif, tail])
        lines = [head, *whatif, *(f"{i}. {d.describe()}" for i, d in enumerate(s.divergences, 1))]
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

    def __enter__(self) -> Replay:
        if SESSION.get() is not None:
            raise ReplayableError("a record or replay is already active in this context")
        session = self.session
        if session.sandbox is not None:
            session.sandbox.__enter__()  # the world the live side effects act on
        try:
            if session.fallback is not None:
                session.fallback.open()
            session.start()
        except BaseException:
            self._leave(*sys.exc_info())
            raise
        self._tokens = [SESSION.set(session), FRAME.set(session.root)]
        activate(session)
        recorded = session.source.metadata.get(_network.ENDPOINTS_KEY)
        EXECUTOR.acquire()
        _network.enter(
            session,
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
        deactivate(s)
        refused = _network.leave(s)
        EXECUTOR.release()
        try:
            reset_context(self._tokens)
        finally:
            if isinstance(exc, Divergence):
                s.stopped_by = exc
            s.divergences.extend(s.skipped())
            s.run.metadata["divergences"] = [d.to_dict() for d in s.divergences]
            if s.fallback_calls:
                s.run.metadata["fallback"] = [d.to_dict() for d in s.fallback_calls]
            try:
                s.close(exc, status="diverged" if s.divergences and exc is None else None)
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


def replay(
    source: str | os.PathLike[str] | Run,
    *,
    store: Store | str | os.PathLike[str] | None = None,
    live: Iterable[str] = (),
    allow_side_effects: bool = False,
    strict: bool = True,
    match: Match | str = "address",
    override: Mapping[str, Any] | None = None,
    live_from: str | None = None,
    live_kinds: Iterable[str] = (),
    fakes: Mapping[str, Callable[..., Any]] | None = None,
    fallback: Cassette | None = None,
    sandbox: AbstractContextManager[Any] | None = None,
    trust: bool = False,
    follow: bool = False,
    allow_network: bool | Iterable[str] = False,
    pii: PII | bool | None = None,
) -> Replay:
    """Replay a recorded run: a run id (or unique prefix), a :class:`Run`, or a trace file path.

    Boundaries of kind ``agent`` and those named in ``live`` (``"module:qualname"``, a bare
    function name, or ``"name#N"`` for the N-th recorded call only) run; all others are served
    from the recording. A side-effecting boundary in ``live`` is refused unless
    ``allow_side_effects=True``. With ``strict=True`` the first divergence raises
    :class:`Divergence`; with ``strict=False`` divergences collect in ``.divergences``.
    ``match="key"`` matches by canonical key alone, ignoring where the call sits.
    With ``$REPLAYABLE_SIGNING_KEY`` set, a recording that does not verify against it (edited,
    cut short, unsigned) raises :class:`TraceCorrupt` unless ``trust=True``; without a key an
    edited recording is replayed with a warning.

    What-ifs (see :mod:`replayable._fork`): ``override={"name#N": value}`` makes that recorded
    call return ``value`` (or raise it, for an exception); ``live_from="name#N"`` serves every
    call before that step and runs the ones without side effects live from it on;
    ``live_kinds=("llm",)`` runs calls of those kinds live when the recording cannot serve them
    (changed or new), instead of diverging. A side-effecting call after the fork point is served
    only when it matches the recording exactly, else it runs its fake (``fakes={"name": fn}``),
    or live with ``allow_side_effects=True``, or raises :class:`SideEffectRefused`.
    ``Replay.changes`` and ``report()`` say what the what-if changed.

    A run recorded with personal data pseudonymized (``record(pii=...)``) is replayed the
    same way: each live input is pseudonymized with the run's settings before it is keyed and
    compared, so unchanged code matches, and served values carry the pseudonyms. The key
    comes from ``pii=rp.PII(key=...)`` or the environment and must be the run's
    (:class:`PIIKeyError` otherwise). A run recorded without it replays without it.

    Testing a fix: ``fallback=rp.cassette(path)`` serves the calls the recording no longer
    matches (a fix changed the model's input) from a cassette, recorded by one live call the
    first time (``REPLAYABLE_MODE=replay`` makes a miss raise :class:`FixtureMiss`); side
    effects and agents never go to it. They are listed in ``Replay.fallback_calls``, not in
    ``divergences``. ``sandbox=`` is the world the side-effecting boundaries named in ``live``
    act on (a context manager entered for the replay: a scratch database, a fake client); with
    it they run live without ``allow_side_effects``.

    Cross-service (see :mod:`replayable.integrations.http`): a remote call (kind ``remote``) is
    served like any other step, so the other service is not contacted. ``follow=True`` with the
    remote call in ``live`` sends it to a running instance of the callee with replay context:
    the callee's middleware replays its own linked run (nothing re-fired there) and what
    diverged inside it is reported here, with the service's name and its step address.

    A replay is offline unless allowed: a connection no boundary served (a socket to anything
    but loopback, an HTTP request to a model API or to a model endpoint the recording talked
    to) raises :class:`~replayable.errors.NetworkRefused` naming the call and what is most
    likely not instrumented. ``allow_network=True`` lets everything out, a list of hosts
    (``"api.example.com"`` or ``"host:port"``) only those; boundaries that run live may always
    go out.

    >>> import replayable as rp
    >>> lookup = rp.boundary(kind="tool")(lambda name: {"name": name, "id": 7})
    >>> with rp.record() as run:
    ...     lookup("Bob")["id"]
    7
    >>> with replay(run.id) as r:
    ...     lookup("Bob")["id"]
    7
    >>> print(r.report().splitlines()[1])
    no divergence: the code took the recorded path
    """
    source_run, events = load_run(source, store)
    _check_version(source_run)
    checked = check_recording(source_run, events, trust=trust)
    if not checked.ok:
        warnings.warn(
            f"run {source_run.id} does not verify ({checked.problem}): it was edited after it "
            "was recorded; replaying it anyway (`replayable verify` says more)",
            ReplayableWarning,
            stacklevel=2,
        )
    target = open_store(store) if store is not None else (source_run.store or open_store(None))
    run = Run(
        id=new_run_id(),
        name=f"replay of {source_run.name or source_run.id}",
        tags=dict(source_run.tags),
        metadata={"replay_of": source_run.id},
        environment=environment(),
        started_at=time.time(),
        parent_run=source_run.id,
        store=target,
    )
    if fallback is not None and not isinstance(fallback, Cassette):
        raise TypeError(f"fallback must be a cassette (rp.cassette(path)), not {fallback!r}")
    if fallback is not None and (override or live_from is not None or live_kinds or fakes):
        raise TypeError(
            "fallback= does not combine with override/live_from/live_kinds/fakes: a what-if "
            "decides itself what runs live; use live_kinds=('llm',) there instead"
        )
    if sandbox is not None and not hasattr(sandbox, "__enter__"):
        raise TypeError(f"sandbox must be a context manager (the test's world), not {sandbox!r}")
    register_recorded(events)
    options: dict[str, Any] = {
        "follow": follow,
        "live": live,
        "allow_side_effects": allow_side_effects,
        "strict": strict,
        "match": match,
        "fallback": fallback,
        "sandbox": sandbox,
        "pii": for_replay(source_run.id, source_run.metadata, pii),
    }
    if override or live_from is not None or live_kinds or fakes:
        from replayable._fork import WhatIf

        return Replay(
            allow_network=allow_network,
            session=WhatIf(
                target,
                run,
                source_run,
                events,
                override=dict(override or {}),
                live_from=live_from,
                live_kinds=tuple(live_kinds),
                fakes=dict(fakes or {}),
                **options,
            ),
        )
    return Replay(Replayer(target, run, source_run, events, **options), allow_network=allow_network)
