"""Stored and served values keep the order they were recorded in, in every store and file.

Sorting is for keys, hashes and diffs only: an agent that serializes a served value (say,
``json.dumps(tool_result)`` into its next prompt) must see exactly what it saw when recorded.
"""

from __future__ import annotations

import json
import secrets
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import replayable as rp
from replayable.store.base import Store
from replayable.store.files import TraceDirStore
from replayable.trace import verify_run, write_trace

# Keys and strings from letters that cannot spell a secret's name or a token's prefix, so
# redaction (which is right to change a value) never applies here.
_WORDS = st.text("abcxyz019 ", max_size=6)
JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**53), 2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | _WORDS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(_WORDS, inner, max_size=5),
    max_leaves=20,
)
"""JSON values whose dicts come in whatever key order Hypothesis draws."""

RETURNED: dict[str, Any] = {}


@rp.boundary(kind="tool")
def fetch(query: Any) -> Any:
    """A tool returning whatever the test put in RETURNED."""
    return RETURNED["value"]


@rp.boundary(kind="tool")
def search(query: str) -> dict[str, Any]:
    """A tool whose result has its keys out of alphabetical order."""
    return {"title": "Refund policy", "score": 0.9, "id": 7, "body": {"z": 1, "a": 2}}


PROMPTS: list[str] = []


@rp.boundary(kind="llm")
def compose(prompt: str) -> str:
    """A model that answers differently every time it is really called."""
    PROMPTS.append(prompt)
    return f"answer {secrets.token_hex(4)}"


def agent(question: str) -> str:
    """Puts the tool's result, serialized, into the next prompt: what many agents do."""
    hits = search(question)
    return compose(f"Answer {question} using: {json.dumps(hits)}")


def dumped(value: Any) -> str:
    return json.dumps(value)


def record_and_serve(store: Store | str, value: Any, query: Any) -> Any:
    """Record one call returning ``value``, replay it, return what the replay served."""
    RETURNED["value"] = value
    with rp.record(store) as run:
        fetch(query)
    RETURNED["value"] = "the live tool must not run"
    with rp.replay(run.id, store=store) as r:
        served = fetch(query)
    assert r.ok
    events = list(r.source.store.iter_events(run.id)) if r.source.store else []
    assert verify_run(r.source, events).ok
    return served


SETTINGS = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)


@pytest.fixture(params=["sqlite", "postgres"])
def writable(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    """Each writable backend, opened through its URL."""
    url = (
        f"sqlite:///{tmp_path / 'order.db'}"
        if request.param == "sqlite"
        else request.getfixturevalue("pg_url")
    )
    return rp.open_store(url)


class TestServedOrder:
    @SETTINGS
    @given(value=JSON_VALUES, query=JSON_VALUES)
    def test_replay_serves_what_the_boundary_returned_in_its_order(
        self, writable: Store, value: Any, query: Any
    ) -> None:
        """SQLite and PostgreSQL: the served value dumps to the same JSON text, order included."""
        assert dumped(record_and_serve(writable, value, query)) == dumped(value)

    @SETTINGS
    @given(value=JSON_VALUES)
    def test_trace_files_and_trace_directories_keep_order(
        self, tmp_path_factory: pytest.TempPathFactory, value: Any
    ) -> None:
        """A trace file, and a directory of them, serve values in their recorded order."""
        folder = tmp_path_factory.mktemp("traces")
        RETURNED["value"] = value
        with rp.record(folder / "rec.db") as run:
            fetch(1)
        path = write_trace(run, run.events(), folder / "dir" / "run.jsonl")
        RETURNED["value"] = None
        for source, store in ((str(path), None), (run.id, TraceDirStore(folder / "dir"))):
            with rp.replay(source, store=store if store else folder / "replays.db") as r:
                served = fetch(1)
            assert r.ok
            assert dumped(served) == dumped(value)

    @SETTINGS
    @given(value=JSON_VALUES, query=JSON_VALUES)
    def test_cassettes_serve_in_recorded_order(
        self, tmp_path_factory: pytest.TempPathFactory, value: Any, query: Any
    ) -> None:
        """A cassette serves what was recorded, order included."""
        path = tmp_path_factory.mktemp("tapes") / "tape.jsonl"
        RETURNED["value"] = value
        with rp.cassette(path, mode="record"):
            fetch(query)
        RETURNED["value"] = None
        with rp.cassette(path, mode="replay") as tape:
            served = fetch(query)
        assert tape.hits == 1
        assert dumped(served) == dumped(value)

    def test_recorded_input_keeps_its_order_and_its_key_does_not_depend_on_it(
        self, tmp_path: Path
    ) -> None:
        """The stored input is the call's own order; the key is the same for any order."""
        RETURNED["value"] = 1
        with rp.record(tmp_path / "a.db") as run:
            fetch({"b": 1, "a": 2})
            fetch({"a": 2, "b": 1})
        first, second = run.events()
        assert list(first.input["query"]) == ["b", "a"]
        assert list(second.input["query"]) == ["a", "b"]
        assert first.key == second.key == rp.key({"query": {"a": 2, "b": 1}})


def test_agent_that_serializes_a_tool_result_replays_without_divergence(tmp_path: Path) -> None:
    """json.dumps of a served tool result equals the recorded one, so the next llm call matches."""
    store = tmp_path / "t.db"
    with rp.record(store) as run:
        recorded = agent("refunds?")
    PROMPTS.clear()
    with rp.replay(run.id, store=store) as r:
        replayed = agent("refunds?")
    assert r.ok, r.report()
    assert replayed == recorded
    assert PROMPTS == []


@pytest.mark.parametrize("mode", ["record", "auto"])
def test_cassette_agent_that_serializes_a_tool_result_matches(tmp_path: Path, mode: str) -> None:
    """The same agent against a cassette: the second pass is served entirely."""
    path = tmp_path / "agent.jsonl"
    with rp.cassette(path, mode=mode):
        first = agent("refunds?")
    with rp.cassette(path, mode="replay") as tape:
        second = agent("refunds?")
    assert (tape.hits, tape.misses) == (2, 0)
    assert first == second
