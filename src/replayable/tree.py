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
    """The top-level steps, each with its children in start order."""
    by_seq: dict[int, Step] = {}
    evs = sorted(events, key=lambda e: e.seq)
    for ev in evs:
        by_seq[ev.seq] = Step(ev.seq, ev.address, ev.boundary, ev)
    roots: list[Step] = []
    for ev in evs:
        node = by_seq[ev.seq]
        parent_seq = ev.parent_seq
        if parent_seq is None:
            roots.append(node)
            continue
        parent = by_seq.get(parent_seq)
        if parent is None:
            parent_address = ev.address.rsplit(" > ", 1)[0]
            name = parent_address.rsplit(" > ", 1)[-1].rsplit("/", 1)[0]
            parent = Step(parent_seq, parent_address, name, None)
            by_seq[parent_seq] = parent
            roots.append(parent)
        parent.children.append(node)
    roots.sort(key=lambda s: s.seq)
    for step in by_seq.values():
        step.children.sort(key=lambda s: s.seq)
    return roots


def walk(steps: Iterable[Step]) -> Iterator[Step]:
    """Every step, depth first, in start order."""
    for step in steps:
        yield step
        yield from walk(step.children)
