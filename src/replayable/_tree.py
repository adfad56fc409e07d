"""Events as a tree of steps, for views (CLI, viewer, diff).

A call still in flight when its process died has no event of its own; its completed children
still name it by ``parent_seq`` and by their address, so it appears here as an *incomplete* step
with its children attached.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

from replayable.trace import Event

__all__ = ["Step", "build_tree", "walk"]


@dataclass(slots=True)
class Step:
    """A node of the step tree: an event, or an incomplete call reconstructed from its children."""

    seq: int
    address: str
    boundary: str
    event: Event | None
    children: list[Step] = field(default_factory=list)

    @property
    def incomplete(self) -> bool:
        """True for a call that never completed (no event was written for it)."""
        return self.event is None

    @property
    def depth(self) -> int:
        """0 for a top-level call."""
        return self.address.count(" > ")


def build_tree(events: Iterable[Event]) -> list[Step]:
    """The top-level steps, each with its children in start order.

    Calls that never completed are rebuilt from their descendants' addresses, at every level
    (an agent and the step inside it both in flight when the process died). A rebuilt step whose
    seq is unknown (only its address survives) has ``seq == -1``.
    """
    evs = sorted(events, key=lambda e: e.seq)
    by_seq: dict[int, Step] = {}
    by_address: dict[str, Step] = {}
    for ev in evs:
        step = Step(ev.seq, ev.address, ev.boundary, ev)
        by_seq[ev.seq] = step
        by_address[ev.address] = step
    roots: list[Step] = []

    def attach(step: Step, parent_seq: int | None) -> None:
        if " > " not in step.address:
            roots.append(step)
            return
        parent_address = step.address.rsplit(" > ", 1)[0]
        parent = by_seq.get(parent_seq) if parent_seq is not None else None
        if parent is None:
            parent = by_address.get(parent_address)
        if parent is None:  # never completed: rebuild it, and attach it in turn
            name = parent_address.rsplit(" > ", 1)[-1].rsplit("/", 1)[0]
            parent = Step(-1 if parent_seq is None else parent_seq, parent_address, name, None)
            by_address[parent_address] = parent
            if parent_seq is not None:
                by_seq[parent_seq] = parent
            attach(parent, None)
        parent.children.append(step)

    for ev in evs:
        attach(by_seq[ev.seq], ev.parent_seq)

    def order(step: Step) -> int:
        return step.seq if step.seq >= 0 else min((order(c) for c in step.children), default=0)

    roots.sort(key=order)
    for step in by_address.values():
        step.children.sort(key=order)
    return roots


def walk(steps: Iterable[Step]) -> Iterator[Step]:
    """Every step, depth first, in start order."""
    for step in steps:
        yield step
        yield from walk(step.children)
