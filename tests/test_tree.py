"""The step tree: events nest by parent; calls that never completed are rebuilt."""

from __future__ import annotations

from replayable._tree import build_tree, walk
from replayable.trace import Event


def ev(seq: int, address: str, parent: int | None) -> Event:
    return Event("r", seq, address, parent, address.rsplit(" > ", 1)[-1], "tool", "k", {})


def test_children_in_start_order() -> None:
    """Children sit under their parent, in seq order."""
    (root,) = build_tree([ev(2, "a/0 > c/0", 0), ev(0, "a/0", None), ev(1, "a/0 > b/0", 0)])
    assert [c.seq for c in root.children] == [1, 2]


def test_in_flight_ancestors_are_rebuilt_at_every_level() -> None:
    """An agent and a step inside it both in flight: both appear, incomplete, in order."""
    roots = build_tree([ev(2, "agent/0 > mid/0 > leaf/0", 1), ev(3, "agent/0 > mid/0 > leaf/1", 1)])
    steps = [(s.address, s.incomplete) for s in walk(roots)]
    assert steps == [
        ("agent/0", True),
        ("agent/0 > mid/0", True),
        ("agent/0 > mid/0 > leaf/0", False),
        ("agent/0 > mid/0 > leaf/1", False),
    ]
    assert roots[0].children[0].seq == 1
