"""Canonical form and keys: stable, order-free, typed, and honest about what they cannot encode."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import json
import os
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Any

import attrs
import pydantic
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import replayable as rp
from replayable import canonical
from replayable.canonical import canonical_json, key_of_json
from replayable.errors import Unserializable
from replayable.trace import verify_run

json_scalars = st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20)
json_values = st.recursive(
    json_scalars | st.floats(allow_nan=False, allow_infinity=False),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=20,
)


def _shuffled(value: Any, rnd: Any) -> Any:
    if isinstance(value, dict):
        items = list(value.items())
        rnd.shuffle(items)
        return {k: _shuffled(v, rnd) for k, v in items}
    if isinstance(value, list):
        return [_shuffled(v, rnd) for v in value]
    return value


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class User:
    name: str
    joined: dt.date


@attrs.define
class Point:
    x: int
    y: int


class Msg(pydantic.BaseModel):
    role: str
    content: str


class Opaque:
    pass


class TestKeyProperties:
    @given(json_values, st.randoms())
    def test_key_ignores_dict_order(self, value: Any, rnd: Any) -> None:
        """Two values that differ only in dict insertion order have the same key."""
        assert rp.key(value) == rp.key(_shuffled(value, rnd))

    @given(json_values)
    def test_key_of_canonical_form_is_the_key(self, value: Any) -> None:
        """Hashing the canonical form read back from a store gives the same key."""
        assert key_of_json(rp.canonicalize(value)) == rp.key(value)

    @given(json_values)
    def test_canonical_json_round_trips(self, value: Any) -> None:
        """Canonical JSON parses back to the canonical form."""
        assert json.loads(canonical_json(value)) == rp.canonicalize(value)

    def test_key_stable_across_processes_and_hash_seeds(self) -> None:
        """Keys of sets and dicts of strings do not depend on PYTHONHASHSEED."""
        code = (
            "import replayable as rp;"
            "print(rp.key({'tags': {'b', 'a', 'c', 'zz', 'q'},"
            " 'm': {'y': 1, 'x': frozenset({3, 1})}}))"
        )
        keys = set()
        for seed in ("0", "1", "12345"):
            env = {**os.environ, "PYTHONHASHSEED": seed}
            out = subprocess.run(
                [sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True
            )
            keys.add(out.stdout.strip())
        assert len(keys) == 1
        assert len(keys.pop()) == 64


class TestCanonicalForm:
    def test_types_are_handled(self) -> None:
        """Datetimes, Decimal, UUID, Enum, Path, bytes, sets, tuples and model classes encode."""
        when = dt.datetime(2026, 1, 2, 3, 4, 5, tzinfo=dt.UTC)
        value = {
            "when": when,
            "naive": dt.datetime(2026, 1, 2, 3, 4, 5),
            "price": Decimal("10.50"),
            "id": uuid.UUID(int=1),
            "color": Color.RED,
            "path": PurePosixPath("/tmp/x"),
            "blob": b"\x00\x01",
            "set": {3, 1, 2},
            "tuple": (1, "a"),
            "user": User("ann", dt.date(2020, 5, 17)),
            "point": Point(1, 2),
            "msg": Msg(role="user", content="hi"),
        }
        c = rp.canonicalize(value)
        assert c["when"] == "2026-01-02T03:04:05+00:00"
        assert c["naive"] == "2026-01-02T03:04:05+00:00"
        assert c["price"] == "10.50"
        assert c["id"] == "00000000-0000-0000-0000-000000000001"
        assert c["color"] == "red"
        assert c["path"] == "/tmp/x"
        assert c["blob"] == {"$bytes": "AAE="}
        assert c["set"] == [1, 2, 3]
        assert c["tuple"] == [1, "a"]
        assert c["user"] == {"name": "ann", "joined": "2020-05-17"}
        assert c["point"] == {"x": 1, "y": 2}
        assert c["msg"] == {"role": "user", "content": "hi"}
        assert list(json.loads(canonical_json(value))) == sorted(value)

    def test_transient_keys_dropped_at_any_depth(self) -> None:
        """run_id, request_id, timestamp... do not change a key, wherever they are."""
        a = {"q": "x", "meta": {"request_id": "r1", "timestamp": 1}, "run_id": "a"}
        b = {"q": "x", "meta": {"request_id": "r2", "timestamp": 2}, "run_id": "b"}
        assert rp.key(a) == rp.key(b)
        assert rp.canonicalize(a) == {"q": "x", "meta": {}}

    def test_bare_id_is_not_transient(self) -> None:
        """delete_record(id=2) and (id=3) are different calls."""
        assert rp.key({"id": 2}) != rp.key({"id": 3})

    def test_floats_normalised(self) -> None:
        """-0.0 folds into 0.0; NaN and infinities become null."""
        assert rp.key({"x": -0.0}) == rp.key({"x": 0.0})
        assert rp.canonicalize([float("nan"), float("inf")]) == [None, None]

    def test_custom_drop_list(self) -> None:
        """The transient list is configurable per call."""
        assert rp.key({"a": 1, "seed": 5}, drop={"seed"}) == rp.key({"a": 1}, drop=())

    def test_path_type_is_normalised(self) -> None:
        """A pathlib.Path serializes as its string."""
        assert rp.canonicalize(Path("a") / "b") == "a/b"


class TestUnserializable:
    def test_names_the_path(self) -> None:
        """An unknown object deep inside raises Unserializable naming where it sits."""
        with pytest.raises(rp.Unserializable) as info:
            rp.key({"user": {"session": Opaque()}, "n": 1})
        assert info.value.path == "user.session"
        assert "Opaque" in str(info.value)

    def test_names_list_index(self) -> None:
        """List positions appear in the path."""
        with pytest.raises(rp.Unserializable) as info:
            rp.canonicalize({"messages": [{"content": "a"}, {"content": Opaque()}]})
        assert info.value.path == "messages[1].content"

    def test_never_uses_str_or_memory_address(self) -> None:
        """An object with a __str__ is still refused, not keyed by its text or address."""

        class Sneaky:
            def __str__(self) -> str:
                return "looks fine"

        with pytest.raises(rp.Unserializable):
            rp.key(Sneaky())


@dataclasses.dataclass
class _Unsorted:
    zeta: int = 1
    alpha: str = "a"
    mid: list[int] = dataclasses.field(default_factory=lambda: [3, 1])


class TestRoundTrip:
    """Canonical forms that survive a store: dataclass fields, keys that collide as strings."""

    def test_dataclass_fields_are_sorted_like_the_dict_they_read_back_as(self) -> None:
        """A dataclass keys, canonicalizes and sorts exactly as its dict does."""
        value = _Unsorted()
        as_dict = dataclasses.asdict(value)
        assert rp.key(value) == rp.key(as_dict)
        assert list(rp.canonicalize(value)) == ["alpha", "mid", "zeta"]
        assert canonical.dumps(value) == canonical.dumps(as_dict)
        assert canonical.snapshot(value) == b'{"zeta":1,"alpha":"a","mid":[3,1]}'

    def test_a_dataclass_recorded_verifies_and_replays(self) -> None:
        """A run whose boundary takes and returns an unsorted dataclass verifies and replays."""

        @rp.boundary(kind="tool", name="dc_tool")
        def dc_tool(item: _Unsorted) -> _Unsorted:
            return dataclasses.replace(item, zeta=item.zeta + 1)

        with rp.record() as run:
            dc_tool(_Unsorted())
        stored = rp.open_store().get_run(run.id)
        assert verify_run(stored, stored.events()).ok
        with rp.replay(run.id) as r:
            dc_tool(_Unsorted())
        assert r.ok

    @pytest.mark.parametrize(
        ("value", "stored"),
        [
            ({1: "a", "1": "b"}, {"$dict": [[1, "a"], ["1", "b"]]}),
            ({True: "a", "true": "b"}, {"$dict": [[True, "a"], ["true", "b"]]}),
            ({None: 1, "null": 2}, {"$dict": [[None, 1], ["null", 2]]}),
            ({"outer": [{2.5: 1, "2.5": 2}]}, {"outer": [{"$dict": [[2.5, 1], ["2.5", 2]]}]}),
            (
                {"d": _Unsorted(mid={1: 1, "1": 2})},  # type: ignore[arg-type]
                {"d": {"zeta": 1, "alpha": "a", "mid": {"$dict": [[1, 1], ["1", 2]]}}},
            ),
        ],
        ids=["int-str", "bool-str", "none-str", "nested-float", "in-a-dataclass"],
    )
    def test_colliding_keys_are_kept_as_pairs(self, value: Any, stored: Any) -> None:
        """Keys that become the same JSON string keep both values, as the dict's pairs; the
        pairs rebuild the dict with its own keys."""
        assert canonical.loads(canonical.snapshot(value)) == stored
        rebuilt = canonical.untag(canonical.loads(canonical.snapshot(value)))
        assert rebuilt == canonical.untag(stored)
        first = value if "outer" not in value and "d" not in value else None
        if first is not None:
            assert rebuilt == first
            assert [type(k) for k in rebuilt] == [type(k) for k in first]

    def test_colliding_keys_key_alike_whatever_their_order(self) -> None:
        """The key of a colliding dict does not depend on the order it was built in, and the
        key of its snapshot is the key of the value."""
        a = {1: "a", "1": "b", 12: "c", "12": "d"}
        b = dict(reversed(list(a.items())))
        assert canonical.key(a) == canonical.key(b)
        assert canonical.sorted_json(canonical.snapshot(b)) == canonical.dumps(a)

    @pytest.mark.parametrize(
        "options",
        [{}, {"key": ["d", "password"]}, {"ignore": ["note"]}],
        ids=["plain", "key-allow-list", "ignore"],
    )
    def test_an_input_redacted_or_key_filtered_keys_alike_whatever_the_order(
        self, options: dict[str, Any]
    ) -> None:
        """An input parsed to redact it (a password beside it) or to apply key=/ignore= keys
        a colliding dict alike whatever order it was built in."""
        b = rp.boundary(kind="tool", name=f"collide_key_{len(options)}", **options)(
            lambda d, password, note="": None
        ).__replayable__
        a = {1: "a", "1": "b", 12: "c", "12": "d"}
        reordered = dict(reversed(list(a.items())))
        keys = {
            canonical.keyed_input(b, canonical.snapshot(x), None)[2]
            for x in (
                {"d": a, "password": "hunter2-hunter2", "note": "n"},
                {"d": reordered, "password": "hunter2-hunter2", "note": "n"},
            )
        }
        assert len(keys) == 1
        other = {"d": {1: "a", "1": "x"}, "password": "hunter2-hunter2", "note": "n"}
        assert canonical.keyed_input(b, canonical.snapshot(other), None)[2] not in keys

    def test_a_value_that_only_looks_tagged_stays_data(self) -> None:
        """Pairs whose keys could not be dict keys are not rebuilt (stored data, not a tag)."""
        looks = {"$dict": [[[1], "a"]]}
        assert canonical.untag(looks) == looks
        assert canonical.untag({"$dict": "x", "other": 1}) == {"$dict": "x", "other": 1}

    @pytest.mark.parametrize(
        "looks", [[None], [1, 2], [[], ["b", 1]], [{}, ["a", 1]], ["", ["a", 1]], [True]]
    )
    def test_an_input_that_only_looks_tagged_is_keyed_and_recorded(self, looks: Any) -> None:
        """An agent's own ``{"$dict": [...]}`` whose items have no first element is keyed
        (items in their order) and its call recorded: keying it raised, and the writer dropped
        the whole event."""

        @rp.boundary(kind="tool", name="looks_tagged")
        def step(data: dict[str, Any]) -> str:
            return "ok"

        b = step.__replayable__  # type: ignore[attr-defined]
        data = canonical.snapshot({"data": {"$dict": looks}})
        assert canonical.keyed_input(b, data, None)[2] == canonical.key({"data": {"$dict": looks}})
        with rp.record() as run:
            step({"$dict": looks})
        rp.flush()
        [ev] = list(rp.open_store().get_run(run.id).events())
        assert ev.input == {"data": {"$dict": looks}}

    def test_distinct_non_string_keys_still_serialize(self) -> None:
        """Int and bool keys that do not collide are kept, as strings."""
        assert canonical.loads(canonical.dumps({1: "a", 2: "b", None: "c"})) == {
            "1": "a",
            "2": "b",
            "null": "c",
        }

    def test_colliding_keys_are_recorded_whole_and_served_back_whole(self) -> None:
        """An argument and a return value whose keys collide are recorded without a warning
        or a marker, and a replay serves the dict back with both keys and their types."""

        @rp.boundary(kind="tool", name="collide")
        def collide(data: dict[Any, str], other: int) -> dict[Any, str]:
            return {**data, None: "n", "null": "s"}

        with rp.record() as run:
            assert collide({1: "a", "1": "b"}, 7) == {1: "a", "1": "b", None: "n", "null": "s"}
        [ev] = list(rp.open_store().get_run(run.id).events())
        assert ev.input == {"data": {"$dict": [[1, "a"], ["1", "b"]]}, "other": 7}
        assert "unserializable_input" not in ev.meta
        with rp.replay(run.id) as replay:
            served = collide({1: "a", "1": "b"}, 7)
        assert replay.ok
        assert served == {1: "a", "1": "b", None: "n", "null": "s"}
        assert [type(k) for k in served] == [int, str, type(None), str]
        with rp.replay(run.id, strict=False) as changed, pytest.raises(rp.Divergence):
            collide({"1": "b", 1: "x"}, 7)  # a changed call with nothing honest to serve
        assert [d.reason for d in changed.divergences] == ["changed"]

    @given(
        st.recursive(
            st.integers(-5, 5) | st.text(max_size=3) | st.booleans() | st.none(),
            lambda inner: (
                st.lists(inner, max_size=3)
                | st.dictionaries(
                    st.integers(-3, 3) | st.booleans() | st.sampled_from(["1", "true", "-1", "x"]),
                    inner,
                    max_size=4,
                )
            ),
            max_leaves=12,
        )
    )
    @settings(max_examples=200, deadline=None)
    def test_never_a_silently_dropped_value(self, value: Any) -> None:
        """Property: a value either serializes with every key kept, or raises Unserializable."""

        def count(v: Any) -> int:
            if isinstance(v, dict):
                return len(v) + sum(count(x) for x in v.values())
            if isinstance(v, list):
                return sum(count(x) for x in v)
            return 0

        try:
            data = canonical.snapshot(value)
        except Unserializable:
            return
        assert count(canonical.untag(canonical.loads(data))) == count(value)


class TestHostileObjects:
    """Snapshotting never calls user code in a way the agent would see fail."""

    def test_a_mapping_whose_getitem_raises_is_marked_and_the_call_runs(self) -> None:
        """A Mapping that raises when read: the boundary still runs, the field is marked."""

        class Broken(Mapping[str, int]):
            def __getitem__(self, key: str) -> int:
                raise RuntimeError("lazy mapping is closed")

            def __iter__(self) -> Iterator[str]:
                return iter(["a"])

            def __len__(self) -> int:
                return 1

        @rp.boundary(kind="tool", name="takes_mapping")
        def takes_mapping(m: Mapping[str, int]) -> str:
            return "ran"

        with pytest.warns(rp.ReplayableWarning), rp.record() as run:
            assert takes_mapping(Broken()) == "ran"
        [ev] = list(rp.open_store().get_run(run.id).events())
        assert ev.input["m"]["$unserializable"] == "m"

    def test_an_exception_whose_str_fails_reaches_the_agent_as_itself(self) -> None:
        """The agent gets its own exception back even when its __str__ raises."""

        class Odd(Exception):
            def __str__(self) -> str:
                raise AttributeError("no message")

        @rp.boundary(kind="tool", name="raises_odd")
        def raises_odd() -> None:
            raise Odd("x")

        with pytest.raises(Odd), rp.record() as run:
            raises_odd()
        [ev] = list(rp.open_store().get_run(run.id).events())
        assert ev.error is not None
        assert "str() raised AttributeError" in ev.error["message"]
