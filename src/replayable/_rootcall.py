"""The root call of a recorded run: which boundary it was, and calling it again with the
recorded arguments (what ``replayable replay`` and ``fuzz`` re-run)."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import Iterable
from typing import Any

from replayable.boundary import Boundary, bare_name, registry
from replayable.errors import ReplayableError, UnknownBoundary
from replayable.trace import Event, Run

__all__ = ["call_recorded", "root_call", "root_event"]


def root_event(run: Run, events: Iterable[Event], *, purpose: str = "replay") -> Event:
    """The run's root call: its first top-level call of kind ``agent``, else its first
    top-level call (clock reads left out)."""
    tops = [e for e in events if e.parent_seq is None and e.kind != "clock"]
    if not tops:
        raise ReplayableError(f"run {run.id} has no top-level call to {purpose}")
    return next((e for e in tops if e.kind == "agent"), tops[0])


def root_call(run: Run, events: Iterable[Event]) -> tuple[Boundary, Event]:
    """The recorded top-level agent call and its registered boundary."""
    ev = root_event(run, events)
    b = registry().get(ev.boundary) or _imported_root(run, ev)
    if b is not None and ev.input is None and _needs_arguments(b):
        from replayable._otlp._replay import is_imported, root_not_captured

        if is_imported(run):
            raise root_not_captured(run, ev)
    if b is None:
        from replayable._otlp._replay import is_imported

        if is_imported(run):
            name = ev.boundary.split(":", 1)[-1]
            raise UnknownBoundary(
                f"run {run.id} was imported from a trace whose root step is {ev.boundary}: "
                f"decorate the agent function it stands for, named {name!r}, with "
                "@replayable.boundary(kind='agent') and import its module (CLI: --import "
                "MODULE), or replay it from Python with rp.replay(...) around your own call"
            )
        raise UnknownBoundary(
            f"the run's root boundary {ev.boundary} is not registered: import the module that "
            "defines it (CLI: --import MODULE)"
        )
    return b, ev


def _imported_root(run: Run, ev: Event) -> Boundary | None:
    """For a run imported from a trace, the registered agent boundary its root agent step
    stands for: the one agent whose function has the traced agent's name."""
    from replayable._otlp._replay import is_imported

    if not is_imported(run) or ev.kind != "agent":
        return None
    name = ev.boundary.split(":", 1)[-1]
    found = [b for b in registry().values() if b.kind == "agent" and bare_name(b.name) == name]
    return found[0] if len(found) == 1 else None


def _needs_arguments(b: Boundary) -> bool:
    """Whether calling ``b`` needs an argument (one without a default, past self/cls)."""
    if b.signature is None:
        return False
    return any(
        p.default is inspect.Parameter.empty
        and p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
        and p.name not in ("self", "cls")
        for p in b.signature.parameters.values()
    )


def call_recorded(b: Boundary, ev: Event) -> Any:
    """Call a boundary (through its wrapper) with the arguments recorded for it (an imported
    agent step's input, traced as one value, is its one argument)."""
    kwargs = dict(ev.input) if isinstance(ev.input, dict) else {}
    args: list[Any] = []
    if ev.input is not None and not isinstance(ev.input, dict):
        args.append(ev.input)
    if b.signature is not None:
        for p in b.signature.parameters.values():
            if p.kind is inspect.Parameter.VAR_POSITIONAL:
                args = list(kwargs.pop(p.name, []))
            elif p.kind is inspect.Parameter.POSITIONAL_ONLY and p.name in kwargs:
                args.append(kwargs.pop(p.name))
    if b.signature is not None and next(iter(b.signature.parameters), None) in ("self", "cls"):
        raise ReplayableError(
            f"{b.name} is a method; replay it from Python with rp.replay(...) around your own call"
        )
    result = b.wrapper(*args, **kwargs)
    if inspect.isawaitable(result):
        return asyncio.run(_await(result))
    if inspect.isgenerator(result):
        return list(result)
    if inspect.isasyncgen(result):
        return asyncio.run(_drain(result))
    return result


async def _await(aw: Any) -> Any:
    return await aw


async def _drain(agen: Any) -> list[Any]:
    return [item async for item in agen]
