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
from typing import TYPE_CHECKING, Any

import orjson

from replayable import canonical
from replayable._diff import diff_values
from replayable._engine import Ending
from replayable._errors_codec import encode_error
from replayable.boundary import registry, resolve_name
from replayable.canonical import clean_input, input_key
from replayable.errors import (
    Divergence,
    FieldChange,
    ReplayableError,
    SideEffectRefused,
    UnknownBoundary,
)
from replayable.replay import UNMATCHED, Replayer, _Plan

if TYPE_CHECKING:
    from replayable.boundary import Boundary
    from replayable.context import Frame
    from replayable.store import Store
    from replayable.trace import Event, Run

__all__ = ["Change", "WhatIf"]


@dataclass(frozen=True, slots=True)
class Change:
    """One step a what-if replay changed. ``how`` is one of ``overridden``, ``live`` (ran live,
    its output compared with the recording), ``faked``, ``refused`` (a side effect that no
    longer matched), or ``not reached`` (recorded after the fork point, no longer called)."""

    how: str
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


def _bare(name: str) -> str:
    return name.rsplit(":", 1)[-1].rsplit(".", 1)[-1]


def _bad_name(option: str, given: str, detail: str) -> UnknownBoundary:
    """An unknown or ambiguous step or boundary name, named the way it was written in the
    ``rp.replay(...)`` call (``override={'plan#2': ...}``, ``live_from='plan'``)."""
    written = f"{option}={given!r}" if option == "live_from" else f"{option}={{{given!r}: ...}}"
    return UnknownBoundary(f"{written}: {detail}", option=option, given=given, detail=detail)


class WhatIf(Replayer):
    """The session behind a what-if replay (see the module docstring)."""

    def __init__(
        self,
        store: Store,
        run: Run,
        source: Run,
        events: list[Event],
        *,
        override: Mapping[str, Any],
        live_from: str | None,
        live_kinds: Iterable[str],
        fakes: Mapping[str, Callable[..., Any]],
        **kw: Any,
    ) -> None:
        super().__init__(store, run, source, events, **kw)
        self.allow_side_effects = bool(kw.get("allow_side_effects"))
        seen: dict[str, set[str]] = {}
        for e in self.events.values():
            seen.setdefault(_bare(e.boundary), set()).add(e.boundary)
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
        name = ev.boundary if _bare(ev.boundary) in self._clash else _bare(ev.boundary)
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
                f"(it calls: {', '.join(sorted(_bare(n) for n in recorded))})",
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

    def _plan(self, b: Boundary, frame: Frame) -> _Plan:
        data, value = clean_input(b, frame.data, self.pii)
        frame.data = data
        key = frame.key = input_key(b, data, value)
        ev, div = self._match(b, frame, key, data, value)
        if ev is not None and ev.seq == self.live_from:
            self.forked = True
        if ev is not None and ev.seq in self.overrides and b.kind != "agent":
            return self._override(b, frame, ev, div, key)
        after = self.forked
        named = b.name in self.live_names or (
            ev is not None and (b.name, self.nth[ev.seq]) in self.live_calls
        )
        if (named or b.kind == "agent") and not after:
            return self._base(b, frame, ev, div, key, live=True)
        if named:
            return self._live(b, frame, ev, div, key, data, value, how="live")
        if div is None and ev is not None and not after:
            return self._base(b, frame, ev, None, key, live=False)
        # After the fork point, or a call the recording cannot serve.
        chosen = after or b.kind in self.live_kinds or b.name in self.fakes
        if b.side_effects and b.kind != "agent":
            if div is None and ev is not None and self._exact(ev, data, value):
                return self._base(b, frame, ev, None, key, live=False)
            if chosen:
                return self._side_effect(b, frame, ev, div, key, data, value)
        elif b.name in self.fakes:
            return self._live(b, frame, ev, div, key, data, value, how="faked")
        elif chosen or b.kind == "agent":
            return self._live(b, frame, ev, div, key, data, value, how="live")
        return self._base(b, frame, ev, div, key, live=False)

    def _base(
        self,
        b: Boundary,
        frame: Frame,
        ev: Event | None,
        div: Divergence | None,
        key: str,
        *,
        live: bool,
    ) -> _Plan:
        """What a plain replay does with this call."""
        plan = self._settle(b, frame, ev, div, key, live=live)
        if live and self.fork_seq is not None:
            frame.meta["whatif"] = "live"  # compared with the recording when it finishes
        return plan

    def _override(
        self, b: Boundary, frame: Frame, ev: Event, div: Divergence | None, key: str
    ) -> _Plan:
        value = self.overrides[ev.seq]
        moved = [dataclasses.replace(c, path=f"input.{c.path}") for c in div.changes] if div else []
        self._consume_subtree(ev.seq)
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
        return _Plan(False, served, key)

    def _exact(self, ev: Event, data: bytes, value: Any) -> bool:
        actual = value if value is not None else orjson.loads(data)
        return bool(actual == ev.input)

    def _side_effect(
        self,
        b: Boundary,
        frame: Frame,
        ev: Event | None,
        div: Divergence | None,
        key: str,
        data: bytes,
        value: Any,
    ) -> _Plan:
        if b.name in self.fakes:
            return self._live(b, frame, ev, div, key, data, value, how="faked")
        if self.allow_side_effects:
            return self._live(b, frame, ev, div, key, data, value, how="live")
        actual = value if value is not None else orjson.loads(data)
        changes = diff_values(ev.input, actual, "input") if ev is not None else []
        what = "changed" if ev is not None else "new"
        step = self.step_name(ev) if ev is not None else _bare(b.name)
        self._note("refused", frame.address, b.name, step, changes, f"a {what} side effect")
        exc = SideEffectRefused(
            f"{b.name} at {frame.address} has side effects and no longer matches the recording "
            f"({'; '.join(str(c) for c in changes[:3]) or 'a call the recording does not have'}"
            f"); give a fake (fakes={{{_bare(b.name)!r}: fn}}; CLI: --fake "
            f"{_bare(b.name)}=module:fn) or allow_side_effects=True (CLI: --allow-side-effects)"
        )
        frame.rec_seq = ev.seq if ev is not None else UNMATCHED
        raise exc

    def _live(
        self,
        b: Boundary,
        frame: Frame,
        ev: Event | None,
        div: Divergence | None,
        key: str,
        data: bytes,
        value: Any,
        *,
        how: str,
    ) -> _Plan:
        frame.rec_seq = ev.seq if ev is not None else UNMATCHED
        if ev is not None:
            frame.meta["source_seq"] = ev.seq
        frame.meta["whatif"] = how
        if div is not None and ev is not None:
            actual = value if value is not None else orjson.loads(data)
            frame.meta["whatif_input"] = [
                (c.path, c.change, c.recorded, c.actual)
                for c in diff_values(ev.input, actual, "input")
            ]
        elif ev is None:
            frame.meta["whatif_input"] = "new"
        return _Plan(True, ev, key)

    def _note(
        self,
        how: str,
        address: str,
        boundary: str,
        step: str,
        changes: Iterable[FieldChange],
        detail: str = "",
    ) -> None:
        with self._lock:
            self.changes.append(Change(how, address, boundary, step, tuple(changes), detail))

    # -- running fakes, and noting what live steps did ---------------------------------------

    def function(self, frame: Frame) -> Callable[..., Any]:
        """A faked step runs its fake (async-wrapped for an async boundary)."""
        b = frame.b
        assert b is not None
        if frame.meta.get("whatif") != "faked":
            return b.fn
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
        how = frame.meta.get("whatif")
        error = outcome.error
        if how is not None and not isinstance(error, ReplayableError):
            output = None if outcome.output is None else orjson.loads(outcome.output)
            self._note_live(b, frame, str(how), output, error, True)
        if frame.meta.get("overridden") and outcome.served is not None:
            # The user's value: redact it like any live output.
            served = outcome.served
            out = None if error is not None else self.snapshot(frame, served.output, "output")
            outcome = Ending(output=out, error=error)
        super().at_end(frame, outcome)

    def _note_live(
        self,
        b: Boundary,
        frame: Frame,
        how: str,
        output: Any,
        error: BaseException | None,
        encoded: bool,
    ) -> None:
        ev = self.events.get(frame.meta.get("source_seq", UNMATCHED))
        changes: list[FieldChange] = []
        inp = frame.meta.get("whatif_input")
        if isinstance(inp, list):
            changes += [FieldChange(*c) for c in inp]
        if ev is None:
            step, detail = _bare(b.name), "a new call"
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
            elif now is not None:
                changes += diff_values(was, now, "output")
        if how == "live" and ((not changes and ev is not None) or b.kind == "clock"):
            return  # ran live and did the same thing (or sampled again): nothing to say
        self._note(how, frame.address, b.name, step, changes, detail)

    # -- the end -----------------------------------------------------------------------------

    def close(self, exc: BaseException | None, *, status: str | None = None) -> None:
        """Keep what the what-if changed in the fork's run (its page lists it), then close."""
        fork = self.run.metadata.get("fork")
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
        super().close(exc, status=status)

    def skipped(self) -> list[Divergence]:
        """Calls never reached: after the fork point they are changes, before it divergences."""
        out = []
        for div in super().skipped():
            ev = next(
                (e for e in self.events.values() if e.address == div.address),
                None,
            )
            if ev is not None and self.fork_seq is not None and ev.seq > self.fork_seq:
                self._note("not reached", ev.address, ev.boundary, self.step_name(ev), ())
            else:
                out.append(div)
        return out

    def whatif_lines(self) -> list[str]:
        """The report's what-if section: the fork point, then every change in order."""
        fork = self.run.metadata.get("fork") or {}
        lines = []
        if fork.get("step"):
            lines.append(f"fork of run {self.source.id} at {fork['step']} ({fork['address']})")
        if not self.changes:
            lines.append("nothing changed after the fork point")
        lines.extend(c.describe() for c in self.changes)
        return lines
