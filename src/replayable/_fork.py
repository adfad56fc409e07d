"""What-if replays: ``rp.replay(run, override=..., live_from=..., live_kinds=..., fakes=...)``.

A what-if replay is a replay with a fork point: the first overridden step, or the ``live_from``
step. Before it, everything is served as in any replay. At it and after it:

- ``override={"name#N": value}``: that recorded call returns ``value`` (or raises it, when it
  is an exception) instead of its recorded output, wherever its input now stands;
- ``live_from="name#N"``: from that step on, every boundary without side effects runs live (the
  model samples again, read tools read the world);
- ``live_kinds=("llm", ...)``: a call of one of these kinds the recording cannot serve (its input
  changed, or it is new) runs live instead of diverging; calls that still match are served;
- a side-effecting call is served only when it matches the recording exactly; otherwise it runs
  its fake (``fakes={"delete_record": fn}``), or live with ``allow_side_effects=True``, or it
  is refused with :class:`~replayable.errors.SideEffectRefused` — a what-if never changes the
  world by accident.

What changed because of the fork is kept in ``Replay.changes`` (and in ``report()``): the
overridden step, each step that ran live or faked with its input or output changes, refused
side effects, and recorded calls no longer reached.
"""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import orjson

from replayable import canonical
from replayable._diff import diff_values
from replayable._engine import Ending, Match, Serve, snapshot
from replayable._errors_codec import encode_error
from replayable._otlp._replay import compared, is_imported_step
from replayable._replayer import (
    UNMATCHED,
    MatchMode,
    Replay,
    ReplayPolicy,
    actual_input,
    replay_parts,
)
from replayable.boundary import bare_name, registry, resolve_name
from replayable.errors import (
    Divergence,
    FieldChange,
    ReplayableError,
    SideEffectRefused,
    UnknownBoundary,
)
from replayable.record import OBSERVERS

if TYPE_CHECKING:
    from contextlib import AbstractContextManager

    from replayable._pii import Pseudonymizer
    from replayable.boundary import Boundary
    from replayable.cassette import Cassette
    from replayable.context import Frame
    from replayable.store import Store
    from replayable.trace import Event, Run

__all__ = ["Change", "ChangeHow", "WhatIf", "build_whatif"]

ChangeHow = Literal["overridden", "live", "faked", "refused", "not reached"]
"""How a what-if changed a step."""


@dataclass(slots=True)
class _Plan:
    """A what-if's decision for one call: run it ``live``, else serve ``event``."""

    live: bool
    event: Event | None


@dataclass(frozen=True, slots=True)
class Change:
    """One step a what-if replay changed. ``how`` is one of ``overridden``, ``live`` (ran live,
    its output compared with the recording), ``faked``, ``refused`` (a side effect that no
    longer matched), or ``not reached`` (recorded after the fork point, no longer called)."""

    how: ChangeHow
    address: str
    boundary: str
    step: str
    changes: tuple[FieldChange, ...] = ()
    detail: str = ""

    def describe(self) -> str:
        """One line, then the field-level changes indented."""
        head = f"{self.how}: {self.step}"
        if self.detail:
            head += f" ({self.detail})"
        return "\n".join([head, *(f"    {c}" for c in self.changes[:8])])

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form."""
        return {
            "how": self.how,
            "address": self.address,
            "boundary": self.boundary,
            "step": self.step,
            "detail": self.detail,
            "changes": [
                {"path": c.path, "change": c.change, "recorded": c.recorded, "actual": c.actual}
                for c in self.changes
            ],
        }


def _bad_name(option: str, given: str, detail: str) -> UnknownBoundary:
    """An unknown or ambiguous step or boundary name, named the way it was written in the
    ``rp.replay(...)`` call (``override={'plan#2': ...}``, ``live_from='plan'``)."""
    written = f"{option}={given!r}" if option == "live_from" else f"{option}={{{given!r}: ...}}"
    return UnknownBoundary(f"{written}: {detail}", option=option, given=given, detail=detail)


class WhatIf:
    """The policy of a what-if replay (see the module docstring): it holds the plain replay's
    policy ``base`` (its recording, matcher, server and keeper) and decides each call around
    the fork point, handing the calls a plain replay would make to ``base``."""

    serves_recordings = True

    def __init__(
        self,
        base: ReplayPolicy,
        *,
        override: Mapping[str, Any],
        live_from: str | None,
        live_kinds: Iterable[str],
        fakes: Mapping[str, Callable[..., Any]],
        allow_side_effects: bool,
    ) -> None:
        self.base = base
        self.source_events = base.source_events
        self.recording = base.recording
        self.events = base.recording.events
        self.nth = base.recording.nth
        self.source = base.source
        self.live_names, self.live_calls = base.live_names, base.live_calls
        run = base.run
        source = base.source
        self.allow_side_effects = allow_side_effects
        seen: dict[str, set[str]] = {}
        for e in self.events.values():
            seen.setdefault(bare_name(e.boundary), set()).add(e.boundary)
        self._clash = {b for b, names in seen.items() if len(names) > 1}
        """Bare names two boundaries of the run share: their steps are named in full."""
        self.overrides: dict[int, Any] = {}
        for spec, value in override.items():
            for seq in self._steps(spec, spec, "override"):
                self.overrides[seq] = value
        self.live_from: int | None = None
        if live_from is not None:
            spec = live_from if "#" in live_from else live_from + "#1"
            self.live_from = self._steps(spec, live_from, "live_from")[0]
        self.live_kinds = frozenset(live_kinds)
        self.fakes: dict[str, Callable[..., Any]] = {}
        recorded = {ev.boundary for ev in self.events.values()}
        registered = registry()
        for name, fn in fakes.items():
            if not callable(fn):
                raise TypeError(
                    f"fakes={{{name!r}: ...}}: {type(fn).__name__} is not callable; give the "
                    "function to run instead of the boundary"
                )
            try:
                full = resolve_name(name, recorded, missing_ok=True) or resolve_name(
                    name, set(registered) | recorded
                )
            except UnknownBoundary as exc:
                raise _bad_name("fakes", name, str(exc)) from None
            self.fakes[full] = fn
        starts = [*self.overrides, *([self.live_from] if self.live_from is not None else [])]
        self.fork_seq: int | None = min(starts) if starts else None
        self.forked = False
        self.changes: list[Change] = []
        fork: dict[str, Any] = {}
        if self.fork_seq is not None:
            ev = self.events[self.fork_seq]
            fork = {"seq": ev.seq, "address": ev.address, "step": self.step_name(ev)}
        fork.update(
            overrides=[self.step_name(self.events[s]) for s in sorted(self.overrides)],
            live_from=self.step_name(self.events[self.live_from])
            if self.live_from is not None
            else None,
            live_kinds=sorted(self.live_kinds),
            fakes=sorted(self.fakes),
        )
        run.metadata["fork"] = fork
        if fork.get("step"):
            run.name = f"fork of {source.name or source.id} at {fork['step']}"

    def step_name(self, ev: Event) -> str:
        """``name#N``: the boundary's bare name (its full name when another boundary of the
        run has the same bare name) and its recorded call number."""
        name = ev.boundary if bare_name(ev.boundary) in self._clash else bare_name(ev.boundary)
        return f"{name}#{self.nth[ev.seq]}"

    def _steps(self, spec: str, given: str, option: str) -> list[int]:
        """The recorded calls ``name#N`` (or every call of ``name``) designates; ``given`` is
        the name as written to ``option``, for errors."""
        name, _, nth = spec.partition("#")
        recorded = {ev.boundary for ev in self.events.values()}
        try:
            full = resolve_name(name, recorded, missing_ok=True)
        except UnknownBoundary as exc:
            raise _bad_name(option, given, str(exc)) from None
        if full is None:
            raise _bad_name(
                option,
                given,
                f"run {self.source.id} has no call to {name!r} "
                f"(it calls: {', '.join(sorted(bare_name(n) for n in recorded))})",
            )
        seqs = sorted(s for s, ev in self.events.items() if ev.boundary == full)
        if not nth:
            return seqs
        if not nth.isdigit() or not 1 <= int(nth) <= len(seqs):
            raise _bad_name(
                option,
                given,
                f"{full} has {len(seqs)} recorded call(s) in run {self.source.id}; "
                f"use name#N with 1 <= N <= {len(seqs)}",
            )
        return [seqs[int(nth) - 1]]

    # -- deciding each call ------------------------------------------------------------------

    def at_start(self, frame: Frame) -> Serve | None:
        """Decide the call around the fork point: serve it (recorded or overridden), run it
        live or faked, or refuse it."""
        base = self.base
        if OBSERVERS:
            base.keeper.observe_begin(frame)
        b = frame.b
        assert b is not None
        plan = self._plan(b, frame, base.matcher.match(frame))
        ev = plan.event
        if plan.live or ev is None:
            return None
        return base.server.serve(frame, ev)

    def _plan(self, b: Boundary, frame: Frame, m: Match) -> _Plan:
        ev, div = m.event, m.divergence
        if ev is not None and ev.seq == self.live_from:
            self.forked = True
        if ev is not None and ev.seq in self.overrides and b.kind != "agent":
            return self._override(b, frame, ev, div)
        after = self.forked
        named = self.base.named_live(b, ev)
        if (named or b.kind == "agent") and not after:
            return self._base(frame, ev, div, live=True)
        if named:
            return self._live(frame, ev, m, how="live")
        if div is None and ev is not None and not after:
            return self._base(frame, ev, None, live=False)
        # After the fork point, or a call the recording cannot serve.
        chosen = after or b.kind in self.live_kinds or b.name in self.fakes
        if b.side_effects and b.kind != "agent":
            if div is None and ev is not None and actual_input(m, frame) == ev.input:
                return self._base(frame, ev, None, live=False)
            if chosen:
                return self._side_effect(b, frame, ev, m)
        elif b.name in self.fakes:
            return self._live(frame, ev, m, how="faked")
        elif chosen or b.kind == "agent":
            return self._live(frame, ev, m, how="live")
        return self._base(frame, ev, div, live=False)

    def _base(self, frame: Frame, ev: Event | None, div: Divergence | None, *, live: bool) -> _Plan:
        """What a plain replay does with this call."""
        self.base.settle(frame, ev, div, live=live)
        if live and self.fork_seq is not None:
            frame.how = "live"  # compared with the recording when it finishes
        return _Plan(live, ev)

    def _override(self, b: Boundary, frame: Frame, ev: Event, div: Divergence | None) -> _Plan:
        value = self.overrides[ev.seq]
        moved = [dataclasses.replace(c, path=f"input.{c.path}") for c in div.changes] if div else []
        self.recording.consume_subtree(ev.seq)
        frame.rec_seq = ev.seq
        frame.meta.update(overridden=True, source_seq=ev.seq)
        if isinstance(value, BaseException):
            served = dataclasses.replace(ev, output=None, error=encode_error(value))
            detail = f"raises {type(value).__name__}: {value}"
            changes: list[FieldChange] = []
        else:
            output = canonical.canonicalize(b.encode_output(value), drop=())
            served = dataclasses.replace(ev, output=output, error=None)
            detail = "returns the given value"
            changes = diff_values(ev.output, output, "output")
        self._note("overridden", ev.address, b.name, self.step_name(ev), moved + changes, detail)
        return _Plan(False, served)

    def _side_effect(self, b: Boundary, frame: Frame, ev: Event | None, m: Match) -> _Plan:
        if b.name in self.fakes:
            return self._live(frame, ev, m, how="faked")
        if self.allow_side_effects:
            return self._live(frame, ev, m, how="live")
        actual = actual_input(m, frame)
        changes = diff_values(ev.input, actual, "input") if ev is not None else []
        what = "changed" if ev is not None else "new"
        step = self.step_name(ev) if ev is not None else bare_name(b.name)
        self._note("refused", frame.address, b.name, step, changes, f"a {what} side effect")
        exc = SideEffectRefused(
            f"{b.name} at {frame.address} has side effects and no longer matches the recording "
            f"({'; '.join(str(c) for c in changes[:3]) or 'a call the recording does not have'}"
            f"); give a fake (fakes={{{bare_name(b.name)!r}: fn}}; CLI: --fake "
            f"{bare_name(b.name)}=module:fn) or allow_side_effects=True (CLI: --allow-side-effects)"
        )
        frame.rec_seq = ev.seq if ev is not None else UNMATCHED
        raise exc

    def _live(self, frame: Frame, ev: Event | None, m: Match, *, how: ChangeHow) -> _Plan:
        frame.rec_seq = ev.seq if ev is not None else UNMATCHED
        if ev is not None:
            frame.meta["source_seq"] = ev.seq
        frame.how = how
        if m.divergence is not None and ev is not None:
            if is_imported_step(ev):  # an imported step: compared on what its trace carries
                recorded, actual = compared(ev, frame.b.name if frame.b else "", m.value)
                frame.scratch = diff_values(recorded, actual, "input")
            else:
                frame.scratch = diff_values(ev.input, actual_input(m, frame), "input")
        elif ev is None:
            frame.scratch = "new"
        return _Plan(True, ev)

    def _note(
        self,
        how: ChangeHow,
        address: str,
        boundary: str,
        step: str,
        changes: Iterable[FieldChange],
        detail: str = "",
    ) -> None:
        with self.recording.lock:
            self.changes.append(Change(how, address, boundary, step, tuple(changes), detail))

    # -- running fakes, and noting what live steps did ---------------------------------------

    def function(self, frame: Frame) -> Callable[..., Any]:
        """A faked step runs its fake (async-wrapped for an async boundary)."""
        b = frame.b
        assert b is not None
        if frame.how != "faked":
            return self.base.function(frame)
        fake = self.fakes[b.name]
        if b.is_async and not inspect.iscoroutinefunction(fake):

            async def run_fake(*args: Any, **kwargs: Any) -> Any:
                return fake(*args, **kwargs)

            return run_fake
        return fake

    def at_end(self, frame: Frame, outcome: Ending) -> None:
        """Note what a live or faked step did differently; record the step."""
        b = frame.b
        assert b is not None
        how = frame.how
        error = outcome.error
        if how is not None and not isinstance(error, ReplayableError):
            output = None if outcome.output is None else orjson.loads(outcome.output)
            self._note_live(b, frame, how, output, error, True)  # type: ignore[arg-type]
        if frame.meta.get("overridden") and outcome.served is not None:
            # The user's value: redact it like any live output.
            served = outcome.served
            out = (
                None
                if error is not None
                else snapshot(frame, served.output, "output", strict=False)
            )
            outcome = Ending(output=out, error=error)
        self.base.at_end(frame, outcome)

    def _note_live(
        self,
        b: Boundary,
        frame: Frame,
        how: ChangeHow,
        output: Any,
        error: BaseException | None,
        encoded: bool,
    ) -> None:
        ev = self.events.get(frame.meta.get("source_seq", UNMATCHED))
        changes: list[FieldChange] = []
        inp = frame.scratch
        if isinstance(inp, list):
            changes += inp
        if ev is None:
            step, detail = bare_name(b.name), "a new call"
        else:
            step, detail = self.step_name(ev), ""
            if error is not None:
                now: Any = {"error": encode_error(error)["type"]}
            else:
                try:
                    now = canonical.canonicalize(
                        output if encoded else b.encode_output(output), drop=()
                    )
                except ReplayableError:
                    now = None
            was: Any = {"error": ev.error.get("type")} if ev.error else ev.output
            if error is not None or ev.error is not None:
                if was != now:
                    changes.append(FieldChange("output", "changed", was, now))
            elif now is not None and not (is_imported_step(ev) and _not_comparable(ev)):
                changes += diff_values(was, now, "output")
        if how == "live" and ((not changes and ev is not None) or b.kind == "clock"):
            return  # ran live and did the same thing (or sampled again): nothing to say
        self._note(how, frame.address, b.name, step, changes, detail)

    # -- the end -----------------------------------------------------------------------------

    def before_close(self) -> None:
        """Keep what the what-if changed in the fork's run (its page lists it)."""
        fork = self.base.run.metadata.get("fork")
        if isinstance(fork, dict):
            fork["changes"] = [
                {
                    "how": c.how,
                    "step": c.step,
                    "address": c.address,
                    "detail": c.detail,
                    "changes": [str(f) for f in c.changes[:8]],
                }
                for c in self.changes
            ]

    def split_skipped(self, skipped: list[Divergence], *, note: bool = True) -> list[Divergence]:
        """Calls never reached: after the fork point they are changes (noted as such), before
        it divergences (returned)."""
        out = []
        for div in skipped:
            ev = next(
                (e for e in self.events.values() if e.address == div.address),
                None,
            )
            if ev is not None and self.fork_seq is not None and ev.seq > self.fork_seq:
                if note:
                    self._note("not reached", ev.address, ev.boundary, self.step_name(ev), ())
            else:
                out.append(div)
        return out

    def report_lines(self) -> list[str]:
        """The report's what-if section: the fork point, then every change in order."""
        fork = self.base.run.metadata.get("fork") or {}
        lines = []
        if fork.get("step"):
            lines.append(f"fork of run {self.source.id} at {fork['step']} ({fork['address']})")
        if not self.changes:
            lines.append("nothing changed after the fork point")
        lines.extend(c.describe() for c in self.changes)
        return lines


def build_whatif(
    source: Run,
    events: Iterable[Event],
    *,
    target: Store,
    override: Mapping[str, Any],
    live_from: str | None,
    live_kinds: Iterable[str],
    fakes: Mapping[str, Callable[..., Any]],
    live: Iterable[str] = (),
    allow_side_effects: bool = False,
    strict: bool = True,
    match: MatchMode | str = "address",
    fallback: Cassette | None = None,
    sandbox: AbstractContextManager[Any] | None = None,
    follow: bool = False,
    allow_network: bool | Iterable[str] = False,
    pii: Pseudonymizer | None = None,
) -> Replay:
    """A what-if replay of ``source``: the plain replay's parts and policy, decided around."""
    parts = replay_parts(source, events, target=target, match=match, pii=pii)
    base = ReplayPolicy(
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
    whatif = WhatIf(
        base,
        override=override,
        live_from=live_from,
        live_kinds=live_kinds,
        fakes=fakes,
        allow_side_effects=allow_side_effects,
    )
    return Replay(base, whatif, allow_network=allow_network)


def _not_comparable(ev: Event) -> bool:
    """An imported step whose output a fork does not compare: a model answer (the replay's is
    the SDK's own shape, not the trace's) or an output the trace did not carry."""
    return ev.kind == "llm" or ev.output is None
