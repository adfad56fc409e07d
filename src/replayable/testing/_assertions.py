"""Structural assertions over what an agent called: the exact-structure layer of a test.

They read the calls of a replay (live or finished), a run, a trace file, a cassette or a fuzz
outcome, in start order, and match them against patterns: a boundary name (full or bare), and
optionally an argument pattern that is partial (only the keys you list are checked, at any depth),
with :data:`ANY`, predicates (``lambda v: v > 3``) and dirty-equals objects (``IsStr()``).
:func:`assert_output` matches what calls returned the same way.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Any
from unittest.mock import ANY

from replayable.boundary import bare_name
from replayable.cassette import Cassette
from replayable.errors import Divergence
from replayable.replay import Replay
from replayable.trace import Event, Run, read_trace

__all__ = [
    "ANY",
    "Call",
    "assert_called",
    "assert_calls",
    "assert_no_divergence",
    "assert_not_called",
    "assert_output",
    "calls",
    "divergences",
]

DEFAULT_IGNORED_KINDS = ("clock", "agent")


@dataclass(frozen=True, slots=True)
class Call:
    """One boundary call as assertions see it."""

    boundary: str
    input: Any
    output: Any = None
    error: Any = None
    kind: str = "tool"
    address: str = ""

    @property
    def name(self) -> str:
        """The bare function name of the boundary."""
        return bare_name(self.boundary)

    def __str__(self) -> str:
        text = repr(self.input)
        text = text if len(text) <= 100 else text[:97] + "..."
        return f"{self.name}({text})" + (f" at {self.address}" if self.address else "")


def _from_events(events: Iterable[Event]) -> list[Call]:
    return [
        Call(e.boundary, e.input, e.output, e.error, e.kind, e.address)
        for e in sorted(events, key=lambda e: e.seq)
    ]


def calls(source: Any, *, ignore_kinds: Sequence[str] = DEFAULT_IGNORED_KINDS) -> list[Call]:
    """The calls recorded in ``source``, in start order, less the kinds in ``ignore_kinds``.

    ``source`` is a :class:`~replayable.Replay` (active or finished: the calls the replayed code
    made), a :class:`~replayable.Run`, a trace file path, a :class:`~replayable.Cassette`, a fuzz
    outcome, or an iterable of events or calls.

    >>> import replayable as rp
    >>> search = rp.boundary(kind="tool", name="demo:search")(lambda q: [13])
    >>> delete = rp.boundary(kind="tool", name="demo:delete", side_effects=True)(lambda i: None)
    >>> with rp.record() as run:
    ...     delete(search("Dana")[0])
    >>> [c.name for c in calls(run)]
    ['search', 'delete']
    """
    found: list[Call]
    if isinstance(source, Replay):
        keeper = source.session.keeper
        keeper.writer.flush()
        found = _from_events(keeper.store.iter_events(source.run.id))
    elif isinstance(source, Run):
        found = _from_events(source.events())
    elif isinstance(source, str | os.PathLike):
        found = _from_events(read_trace(source)[1])
    elif isinstance(source, Cassette):
        found = [Call(c.boundary, c.input, c.output, c.error, c.kind) for c in source.calls]
    elif hasattr(source, "calls") and not callable(source.calls):
        return calls(source.calls, ignore_kinds=ignore_kinds)
    else:
        items = list(source)
        found = [i if isinstance(i, Call) else _from_events([i])[0] for i in items]
    return [c for c in found if c.kind not in ignore_kinds]


def _name_matches(pattern: str, boundary: str) -> bool:
    if pattern == boundary:
        return True
    bare = boundary.rsplit(":", 1)[-1]
    return pattern in (bare, bare.rsplit(".", 1)[-1])


def matches(pattern: Any, value: Any) -> bool:
    """Partial match: dict patterns check only their keys, at any depth; lists match item-wise;
    callables (not types) are predicates; anything else compares with ``==`` (so ANY and
    dirty-equals objects work)."""
    if pattern is ANY:
        return True
    if isinstance(pattern, dict):
        return isinstance(value, dict) and all(
            k in value and matches(p, value[k]) for k, p in pattern.items()
        )
    if isinstance(pattern, list | tuple) and isinstance(value, list):
        return len(pattern) == len(value) and all(map(matches, pattern, value))
    if callable(pattern) and not isinstance(pattern, type) and _is_plain_callable(pattern):
        try:
            return bool(pattern(value))
        except Exception:
            return False
    return bool(pattern == value)


def _is_plain_callable(obj: Any) -> bool:
    # dirty-equals objects compare with ==; they are not predicates even if they look callable.
    return not any(c.__name__ == "DirtyEquals" for c in type(obj).__mro__)


def _expected(item: Any) -> tuple[str, Any]:
    if isinstance(item, str):
        return item, ANY
    if isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str):
        return item[0], item[1]
    raise TypeError(f"expected a boundary name or (name, argument pattern), not {item!r}")


def _call_matches(item: Any, call: Call) -> bool:
    name, pattern = _expected(item)
    return _name_matches(name, call.boundary) and matches(pattern, call.input)


def _show(expected: Sequence[Any], actual: Sequence[Call]) -> str:
    exp = "\n".join(f"  {i}. {_label(*_expected(e))}" for i, e in enumerate(expected))
    act = "\n".join(f"  {i}. {c}" for i, c in enumerate(actual)) or "  (no calls)"
    return f"expected:\n{exp or '  (no calls)'}\nactual calls:\n{act}"


def _label(name: str, pattern: Any) -> str:
    return name if pattern is ANY else f"{name} {pattern!r}"


def assert_calls(
    source: Any,
    expected: Sequence[Any],
    *,
    exact: bool = True,
    ignore_kinds: Sequence[str] = DEFAULT_IGNORED_KINDS,
) -> None:
    """Assert the sequence of calls: each item a boundary name or ``(name, argument pattern)``.

    ``exact=True``: the calls are exactly these, in this order. ``exact=False``: these appear in
    this order, other calls may come between. Clock and agent calls are left out by default.

    For example (a sketch, not run as a doctest)::

        assert_calls(replay, [
            ("search_customers", {"query": "Dana Whitfield"}),
            ("choose_record", {"candidates": ANY}),
            ("delete_record", {"customer_id": lambda i: i == 13}),
        ])
    """
    actual = calls(source, ignore_kinds=ignore_kinds)
    if exact:
        for i, (item, call) in enumerate(zip(expected, actual, strict=False)):
            if not _call_matches(item, call):
                raise AssertionError(f"call {i} does not match\n{_show(expected, actual)}")
        if len(expected) != len(actual):
            raise AssertionError(
                f"expected {len(expected)} calls, got {len(actual)}\n{_show(expected, actual)}"
            )
        return
    pos = 0
    for item in expected:
        while pos < len(actual) and not _call_matches(item, actual[pos]):
            pos += 1
        if pos == len(actual):
            raise AssertionError(
                f"no call matching {_label(*_expected(item))} in order\n" + _show(expected, actual)
            )
        pos += 1


def assert_called(
    source: Any, name: str, pattern: Any = ANY, *, times: int | None = None
) -> list[Call]:
    """Assert ``name`` was called (with arguments matching ``pattern``); returns those calls.

    >>> import replayable as rp
    >>> choose = rp.boundary(kind="llm", name="demo:choose")(lambda options, temperature: 0)
    >>> with rp.record() as run:
    ...     choose(["a", "b"], temperature=0.8)
    0
    >>> len(assert_called(run, "demo:choose", {"temperature": 0.8}, times=1))
    1
    """
    every = calls(source, ignore_kinds=("clock",))
    hits = [c for c in every if _name_matches(name, c.boundary) and matches(pattern, c.input)]
    if (times is None and not hits) or (times is not None and len(hits) != times):
        want = "at least once" if times is None else f"{times} time(s)"
        listing = "\n".join(f"  {c}" for c in every) or "  (no calls)"
        raise AssertionError(
            f"expected {_label(name, pattern)} to be called {want}, it was called "
            f"{len(hits)} time(s); calls were:\n{listing}"
        )
    return hits


def assert_not_called(source: Any, name: str, pattern: Any = ANY, *, output: Any = ANY) -> None:
    """Assert no call to ``name`` (with arguments matching ``pattern``, and returning an output
    matching ``output``) was made. A call that raised has no output: ``output=`` never matches it.

    For example (a sketch, not run as a doctest)::

        assert_not_called(replay, "delete_record")
        assert_not_called(replay, "issue_refund", {"amount_cents": 984726100},
                          output={"status": "refunded"})   # the incident: called and done
    """
    hits = [
        c
        for c in calls(source, ignore_kinds=("clock",))
        if _name_matches(name, c.boundary)
        and matches(pattern, c.input)
        and (output is ANY or (c.error is None and matches(output, c.output)))
    ]
    if hits:
        label = _label(name, pattern) + ("" if output is ANY else f" -> {output!r}")
        listing = "\n".join(f"  {c} -> {_result(c)}" for c in hits)
        raise AssertionError(f"{label} was called {len(hits)} time(s):\n{listing}")


def _result(c: Call) -> str:
    if c.error is not None:
        err = c.error if isinstance(c.error, dict) else {}
        return f"raised {err.get('type', '?')}: {err.get('message', c.error)}"
    text = repr(c.output)
    return text if len(text) <= 160 else text[:157] + "..."


def assert_output(source: Any, name: str, pattern: Any, *, call: int | None = None) -> list[Call]:
    """Assert what ``name`` returned: every call to it (or only the ``call``-th, 1-based) has an
    output matching ``pattern``; there must be at least one. Returns the calls checked.

    Partial like argument patterns: a dict checks only its keys, at any depth; predicates and
    dirty-equals objects work. A call that raised does not match.

    For example (a sketch, not run as a doctest)::

        rt.assert_output(replay, "issue_refund", {"status": "blocked"})
        rt.assert_output(replay, "quote", {"total": lambda t: t < 100}, call=2)
    """
    every = [c for c in calls(source, ignore_kinds=("clock",)) if _name_matches(name, c.boundary)]
    if not every:
        listing = "\n".join(f"  {c}" for c in calls(source)) or "  (no calls)"
        raise AssertionError(f"{name} was never called; calls were:\n{listing}")
    if call is not None:
        if not 1 <= call <= len(every):
            raise AssertionError(f"{name} was called {len(every)} time(s), there is no call {call}")
        every = [every[call - 1]]
    bad = [c for c in every if c.error is not None or not matches(pattern, c.output)]
    if bad:
        listing = "\n".join(f"  {c} -> {_result(c)}" for c in bad)
        raise AssertionError(
            f"{len(bad)} of {len(every)} call(s) to {name} did not return {pattern!r}:\n{listing}"
        )
    return every


def divergences(replay: Replay) -> list[Divergence]:
    """A replay's divergences; while it is still active, recorded calls not yet reached count as
    skipped."""
    found = replay.divergences
    if replay.run.status == "running":
        found.extend(replay.skipped())
    return found


def assert_no_divergence(replay: Replay) -> None:
    """Assert the replayed code took exactly the recorded path; the message is the full report.

    For example (a sketch, not run as a doctest)::

        with rp.replay("tests/traces/incident.jsonl", strict=False) as r:
            support_agent(REQUEST)
        assert_no_divergence(r)
    """
    found = divergences(replay)
    if found:
        lines = [f"{len(found)} divergence(s) from run {replay.source.id}:"]
        lines.extend(f"{i}. {d.describe()}" for i, d in enumerate(found, 1))
        raise AssertionError("\n".join(lines))
