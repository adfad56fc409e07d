"""Binding a call's arguments to parameter names: every fast path agrees with ``inspect``."""

from __future__ import annotations

import inspect
from typing import Any

from hypothesis import assume, given
from hypothesis import strategies as st

import replayable as rp
from replayable.boundary import get_boundary


@rp.boundary(kind="tool", name="tests.boundary:plain")
def plain(a: int, b: int = 2, c: int = 3) -> None:
    """Three plain parameters, two with defaults."""


def _reference(args: tuple[Any, ...], kwargs: dict[str, Any]) -> list[tuple[str, Any]] | None:
    try:
        ba = inspect.signature(plain.__wrapped__).bind(*args, **kwargs)  # type: ignore[attr-defined]
    except TypeError:
        return None
    ba.apply_defaults()
    return list(ba.arguments.items())


@st.composite
def calls(draw: st.DrawFn) -> tuple[tuple[Any, ...], dict[str, Any]]:
    positional = draw(st.integers(0, 3))
    names = draw(st.permutations(["a", "b", "c"]))
    keywords = draw(st.lists(st.sampled_from(names), unique=True, max_size=3))
    order = [n for n in names if n in keywords]
    return tuple(range(positional)), {n: 10 + i for i, n in enumerate(order)}


class TestBind:
    @given(calls())
    def test_bound_input_is_what_inspect_binds_in_parameter_order(
        self, call: tuple[tuple[Any, ...], dict[str, Any]]
    ) -> None:
        """However a call passes its arguments (by position, by keyword in any order, defaults
        left out), the recorded input names them in parameter order with defaults filled, as
        ``inspect.Signature.bind`` does."""
        args, kwargs = call
        expected = _reference(args, kwargs)
        assume(expected is not None)  # a call that does not bind fails live, as it would bare
        assert list(get_boundary(plain).bind(args, kwargs).items()) == expected

    def test_keywords_in_parameter_order_are_recorded_in_that_order(self) -> None:
        """Every argument by keyword, in order, is recorded as given (the common call)."""
        with rp.record() as run:
            plain(a=1, b=2, c=3)
            plain(c=3, b=2, a=1)
        first, second = (list(ev.input) for ev in run.events())
        assert first == second == ["a", "b", "c"]
