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
from decimal import Decimal
from pathlib import Path, PurePosixPath
from typing import Any

import attrs
import pydantic
import pytest
from hypothesis import given
from hypothesis import strategies as st

import replayable as rp
from replayable.canonical import canonical_json, key_of_json

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
