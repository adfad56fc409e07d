"""Aligning two runs: pairing by address then by key, the first divergence, token totals."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from replayable._rundiff import diff_runs, run_usage, tokens_of
from replayable.trace import Event, Run


def ev(seq: int, address: str, key: str = "k", parent: int | None = None, **kw: Any) -> Event:
    boundary = address.rsplit(" > ", 1)[-1].rsplit("/", 1)[0]
    fields: dict[str, Any] = {"input": {"x": seq}, "output": "ok", "kind": "tool"}
    fields.update(kw)
    return Event(
        run_id="r",
        seq=seq,
        address=address,
        parent_seq=parent,
        boundary=boundary,
        key=key,
        **fields,
    )


A, B = Run(id="a"), Run(id="b")


class TestAlignment:
    def test_pairs_by_address_first(self) -> None:
        """Same address, same boundary: one pair, compared field by field."""
        d = diff_runs(A, [ev(0, "m:f/0", input={"x": 1})], B, [ev(0, "m:f/0", input={"x": 2})])
        (pair,) = d.pairs
        assert pair.status == "changed"
        assert pair.matched_by == "address"
        assert [str(c) for c in pair.input_changes] == ["~ x: 1 -> 2"]

    def test_falls_back_to_boundary_and_key(self) -> None:
        """A call made from another place pairs by boundary + key and is the same."""
        a = [ev(0, "m:g/0", key="r"), ev(1, "m:g/0 > m:f/0", key="k1", parent=0)]
        b = [ev(0, "m:h/0", key="r"), ev(1, "m:h/0 > m:f/0", key="k1", parent=0)]
        b[1].input = a[1].input
        d = diff_runs(A, a, B, b)
        f_pair = next(p for p in d.pairs if p.boundary == "m:f")
        assert f_pair.matched_by == "key"
        assert f_pair.status == "same"

    def test_one_sided_calls_sit_where_they_happened(self) -> None:
        """A call only in B appears after the step B made just before it."""
        a = [ev(0, "m:f/0"), ev(1, "m:g/0")]
        b = [ev(0, "m:f/0"), ev(1, "m:new/0", key="n"), ev(2, "m:g/0")]
        b[2].input = a[1].input
        d = diff_runs(A, a, B, b)
        assert [(p.boundary, p.status) for p in d.pairs] == [
            ("m:f", "same"),
            ("m:new", "only_b"),
            ("m:g", "same"),
        ]
        assert d.first_divergence is d.pairs[1]

    def test_a_parent_changed_by_its_children_is_not_the_first_divergence(self) -> None:
        """When a child diverges, the parent whose output changed with it is not the cause."""
        a = [ev(0, "m:agent/0", output="deleted"), ev(1, "m:agent/0 > m:rm/0", parent=0)]
        b = [ev(0, "m:agent/0", output="refused")]
        b[0].input = a[0].input
        d = diff_runs(A, a, B, b)
        assert d.first_divergence is not None
        assert d.first_divergence.boundary == "m:rm"

    def test_calls_inside_a_served_step_are_not_differences(self) -> None:
        """A replay serves a call with its subtree: the nested calls it never re-ran are fine."""
        a = [ev(0, "m:llm/0"), ev(1, "m:llm/0 > m:clock/0", parent=0)]
        b = [ev(0, "m:llm/0", meta={"served": True})]
        d = diff_runs(A, a, B, b)
        assert [p.status for p in d.pairs] == ["same", "inside_served"]
        assert d.identical

    @given(st.lists(st.tuples(st.integers(0, 3), st.integers(0, 5)), max_size=30))
    def test_a_run_against_itself_is_identical_and_covers_every_step(
        self, calls: list[tuple[int, int]]
    ) -> None:
        """Every event pairs with itself exactly once."""
        counts: dict[str, int] = {}
        events = []
        for seq, (name, value) in enumerate(calls):
            n = counts.get(f"f{name}", 0)
            counts[f"f{name}"] = n + 1
            events.append(ev(seq, f"m:f{name}/{n}", key=str(value), input={"v": value}))
        d = diff_runs(A, events, B, list(events))
        assert d.identical
        assert len(d.pairs) == len(events)
        assert sorted(p.a.seq for p in d.pairs if p.a) == list(range(len(events)))


class TestTokens:
    def test_both_usage_shapes(self) -> None:
        """OpenAI (prompt/completion) and Anthropic (input/output) usage both count."""
        assert tokens_of({"prompt_tokens": 12, "completion_tokens": 3}) == (12, 3)
        assert tokens_of({"input_tokens": 5, "output_tokens": 1}) == (5, 1)
        assert tokens_of(None) == (0, 0)

    def test_usage_by_model(self) -> None:
        """Calls and tokens add up per model."""
        events = [
            ev(0, "m:a/0", meta={"model": "x", "usage": {"input_tokens": 2, "output_tokens": 1}}),
            ev(1, "m:a/1", meta={"model": "x", "usage": {"input_tokens": 3, "output_tokens": 1}}),
            ev(2, "m:b/0", meta={"usage": {"prompt_tokens": 7}}),
            ev(3, "m:c/0"),
        ]
        assert run_usage(events) == {
            "x": {"calls": 2, "input": 5, "output": 2},
            "(unknown)": {"calls": 1, "input": 7, "output": 0},
        }
