"""Cassettes: exact-match fixture files keyed by canonical input."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import replayable as rp
from replayable.cassette import Cassette
from replayable.redact import is_secret_key

CALLS: list[str] = []


@rp.boundary(kind="llm")
def complete(prompt: str, temperature: float = 0.0) -> str:
    """A stand-in model: answers with a counter so every real call is visible."""
    CALLS.append(prompt)
    return f"answer {len(CALLS)} to {prompt}"


@rp.boundary(kind="tool", ignore=("trace_note",))
def lookup(city: str, trace_note: str = "") -> dict[str, Any]:
    """A tool whose ``trace_note`` is left out of the key."""
    CALLS.append(city)
    return {"city": city, "temp_c": 21}


@rp.boundary(kind="tool")
def flaky(n: int) -> int:
    """Raises on odd numbers."""
    CALLS.append(str(n))
    if n % 2:
        raise ValueError(f"odd: {n}")
    return n


@rp.boundary(kind="llm")
async def acomplete(prompt: str) -> str:
    """An async model call."""
    CALLS.append(prompt)
    return prompt.upper()


@rp.boundary(kind="llm")
def stream(prompt: str) -> Iterator[str]:
    """A streamed model answer."""
    CALLS.append(prompt)
    yield from prompt.split()


@rp.boundary(kind="llm")
async def astream(prompt: str) -> AsyncIterator[str]:
    """An async streamed model answer."""
    CALLS.append(prompt)
    for word in prompt.split():
        yield word


@rp.boundary(kind="agent")
def agent(question: str) -> str:
    """An agent: runs live, its model call goes through the cassette."""
    return complete(question) + "!"


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    CALLS.clear()


@pytest.fixture
def tape(tmp_path: Path) -> Path:
    return tmp_path / "cassettes" / "tape.jsonl"


class TestAutoMode:
    def test_miss_records_then_hit_serves_without_calling(self, tape: Path) -> None:
        """The first run calls through and records; the second is served from the file."""
        with rp.cassette(tape) as c1:
            first = complete("hello")
        with rp.cassette(tape) as c2:
            second = complete("hello")
        assert first == second == "answer 1 to hello"
        assert CALLS == ["hello"]
        assert (c1.hits, c1.misses, c2.hits, c2.misses) == (0, 1, 1, 0)

    def test_file_is_one_call_a_line_keyed_by_canonical_input(self, tape: Path) -> None:
        """Each line is a JSON object with boundary, key, input and output."""
        with rp.cassette(tape):
            complete("a")
            complete("b", temperature=0.5)
        lines = [orjson.loads(x) for x in tape.read_bytes().splitlines()]
        assert [ln["input"] for ln in lines] == [
            {"prompt": "a", "temperature": 0.0},
            {"prompt": "b", "temperature": 0.5},
        ]
        assert lines[0]["key"] == rp.key({"prompt": "a", "temperature": 0.0})
        assert lines[0]["boundary"].endswith(":complete")

    def test_repeated_identical_calls_replay_in_recorded_order(self, tape: Path) -> None:
        """Three identical calls get the three recorded answers, in order."""
        with rp.cassette(tape):
            recorded = [complete("same") for _ in range(3)]
        with rp.cassette(tape, mode="replay"):
            replayed = [complete("same") for _ in range(3)]
        assert replayed == recorded == [f"answer {i} to same" for i in (1, 2, 3)]
        assert len(CALLS) == 3

    def test_auto_records_a_new_answer_past_the_recorded_count(self, tape: Path) -> None:
        """Auto mode records a fourth identical call instead of reusing the third."""
        with rp.cassette(tape):
            complete("same")
        with rp.cassette(tape) as c:
            complete("same")
            complete("same")
        assert (c.hits, c.misses) == (1, 1)
        assert len(tape.read_bytes().splitlines()) == 2

    def test_recorded_error_is_raised_again(self, tape: Path) -> None:
        """An exception raised by the boundary is recorded and re-raised as the same type."""
        with rp.cassette(tape), pytest.raises(ValueError, match="odd: 3"):
            flaky(3)
        with rp.cassette(tape, mode="replay"), pytest.raises(ValueError, match="odd: 3"):
            flaky(3)
        assert CALLS == ["3"]

    def test_agent_boundaries_run_live_and_their_calls_are_served(self, tape: Path) -> None:
        """An agent is never served; its model call is."""
        with rp.cassette(tape):
            agent("q")
        with rp.cassette(tape, mode="replay"):
            assert agent("q") == "answer 1 to q!"
        assert CALLS == ["q"]

    def test_live_boundaries_always_call_through(self, tape: Path) -> None:
        """A boundary named in live= runs every time and is not recorded.

        (Full name: other test modules define a ``complete`` boundary too, and an ambiguous
        bare name is an error.)"""
        with rp.cassette(tape, live=["tests.test_cassette:complete"]):
            complete("x")
            complete("x")
        assert CALLS == ["x", "x"]
        assert not tape.exists()


class TestReplayMode:
    def test_miss_names_nearest_input_and_differing_fields(self, tape: Path) -> None:
        """FixtureMiss says which fields differ from the nearest recorded call."""
        with rp.cassette(tape):
            complete("hello", temperature=0.2)
            complete("something else entirely", temperature=0.9)
        with rp.cassette(tape, mode="replay"), pytest.raises(rp.FixtureMiss) as info:
            complete("hello", temperature=0.7)
        err = info.value
        assert err.nearest == {"prompt": "hello", "temperature": 0.2}
        assert [(c.path, c.recorded, c.actual) for c in err.changes] == [("temperature", 0.2, 0.7)]
        assert "~ temperature: 0.2 -> 0.7" in str(err)
        assert str(tape) in str(err)

    def test_miss_on_unknown_boundary_says_so(self, tape: Path) -> None:
        """A boundary the cassette never saw gets its own explanation."""
        tape.parent.mkdir(parents=True)
        tape.write_bytes(b"")
        with rp.cassette(tape, mode="replay"), pytest.raises(rp.FixtureMiss, match="no call"):
            complete("hello")

    def test_replay_past_the_end_serves_the_last_recording(self, tape: Path) -> None:
        """Replay mode never calls through: extra identical calls get the last answer."""
        with rp.cassette(tape):
            complete("same")
        with rp.cassette(tape, mode="replay"):
            assert complete("same") == complete("same") == "answer 1 to same"
        assert len(CALLS) == 1

    def test_field_left_out_of_the_key_that_differs_warns(self, tape: Path) -> None:
        """Keys stay honest: an ignored field that changed is served, with a warning."""
        with rp.cassette(tape):
            lookup("Paris", trace_note="run 1")
        with (
            rp.cassette(tape, mode="replay"),
            pytest.warns(rp.ReplayableWarning, match=r"trace_note: 'run 1' -> 'run 2'"),
        ):
            assert lookup("Paris", trace_note="run 2") == {"city": "Paris", "temp_c": 21}
        assert CALLS == ["Paris"]

    def test_truncated_last_line_is_reported(self, tape: Path) -> None:
        """A half-written line is a TraceCorrupt naming the line, not a silent skip."""
        with rp.cassette(tape):
            complete("a")
        tape.write_bytes(tape.read_bytes() + b'{"boundary": "x"')
        with pytest.raises(rp.TraceCorrupt, match="line 2"), rp.cassette(tape):
            pass


class TestModes:
    def test_record_mode_starts_the_file_afresh(self, tape: Path) -> None:
        """Record mode calls through every time and rewrites the file."""
        with rp.cassette(tape):
            complete("a")
        with rp.cassette(tape, mode="record"):
            complete("a")
        assert len(CALLS) == 2
        assert len(tape.read_bytes().splitlines()) == 1
        with rp.cassette(tape, mode="replay"):
            assert complete("a") == "answer 2 to a"

    def test_off_mode_calls_through_and_writes_nothing(self, tape: Path) -> None:
        """Off: the cassette is inert."""
        with rp.cassette(tape, mode="off"):
            complete("a")
            complete("a")
        assert len(CALLS) == 2
        assert not tape.exists()

    def test_environment_overrides_the_mode_in_code(
        self, tape: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """$REPLAYABLE_MODE=replay turns an auto cassette into a strict one."""
        monkeypatch.setenv("REPLAYABLE_MODE", "replay")
        with rp.cassette(tape, mode="auto") as c:
            assert c.mode == "replay"
            with pytest.raises(rp.FixtureMiss):
                complete("never recorded")
        assert CALLS == []

    def test_bad_mode_is_refused(self, tape: Path) -> None:
        """An unknown mode is an error naming the valid ones."""
        with pytest.raises(rp.ReplayableError, match="record, replay, auto, off"):
            rp.cassette(tape, mode="sometimes")

    def test_cannot_nest_inside_a_recording(self, tape: Path) -> None:
        """One session per context: a cassette inside a record is refused."""
        with rp.record(), pytest.raises(rp.ReplayableError, match="already active"):
            rp.cassette(tape).__enter__()


class TestShapes:
    async def test_async_function(self, tape: Path) -> None:
        """Async boundaries record and replay."""
        async with rp.cassette(tape):
            assert await acomplete("hi") == "HI"
        async with rp.cassette(tape, mode="replay"):
            assert await acomplete("hi") == "HI"
        assert CALLS == ["hi"]

    def test_generator_chunks_replay_in_order(self, tape: Path) -> None:
        """A stream's chunks are recorded and served in order."""
        with rp.cassette(tape):
            assert list(stream("a b c")) == ["a", "b", "c"]
        with rp.cassette(tape, mode="replay"):
            assert list(stream("a b c")) == ["a", "b", "c"]
        assert CALLS == ["a b c"]

    async def test_async_generator_chunks_replay_in_order(self, tape: Path) -> None:
        """An async stream's chunks are recorded and served in order."""
        async with rp.cassette(tape):
            assert [w async for w in astream("x y")] == ["x", "y"]
        async with rp.cassette(tape, mode="replay"):
            assert [w async for w in astream("x y")] == ["x", "y"]
        assert CALLS == ["x y"]

    def test_decorator_activates_per_call(self, tape: Path) -> None:
        """As a decorator, each call of the function runs under the cassette."""

        @rp.cassette(tape)
        def scenario() -> str:
            return complete("deco")

        assert scenario() == scenario() == "answer 1 to deco"
        assert CALLS == ["deco"]

    async def test_decorator_on_async_function(self, tape: Path) -> None:
        """As a decorator on a coroutine function, the cassette is active while it awaits."""

        @rp.cassette(tape)
        async def scenario() -> str:
            return await acomplete("deco")

        assert await scenario() == await scenario() == "DECO"
        assert CALLS == ["deco"]


class TestScale:
    def test_a_thousand_call_suite_replays_without_calling_anything(self, tape: Path) -> None:
        """1,000 recorded calls replay as 1,000 hits and no real call."""
        with rp.cassette(tape):
            for i in range(1000):
                complete(f"q{i}")
        CALLS.clear()
        with rp.cassette(tape, mode="replay") as c:
            answers = [complete(f"q{i}") for i in range(1000)]
        assert (c.hits, c.misses, len(c)) == (1000, 0, 1000)
        assert CALLS == []
        assert answers[999] == "answer 1000 to q999"

    def test_concurrent_processes_append_whole_lines(self, tmp_path: Path) -> None:
        """Four processes recording into one file (as xdist workers do) leave only whole lines."""
        mod = tmp_path / "castool.py"
        mod.write_text(
            textwrap.dedent(
                """
                import sys
                import replayable as rp

                @rp.boundary(kind="tool")
                def echo(worker: int, i: int, pad: str) -> str:
                    return pad

                if __name__ == "__main__":
                    w = int(sys.argv[1])
                    with rp.cassette(sys.argv[2]):
                        for i in range(150):
                            echo(w, i, "x" * 3000)
                """
            )
        )
        path = tmp_path / "shared.jsonl"
        procs = [
            subprocess.Popen(
                [sys.executable, str(mod), str(w), str(path)],
                cwd=tmp_path,
                stderr=subprocess.PIPE,
                text=True,
            )
            for w in range(4)
        ]
        errors = [p.communicate(timeout=120)[1] for p in procs]
        assert [p.returncode for p in procs] == [0, 0, 0, 0], errors
        lines = path.read_bytes().splitlines()
        assert len(lines) == 600
        seen = {(d["input"]["worker"], d["input"]["i"]) for d in map(orjson.loads, lines)}
        assert len(seen) == 600
        c = Cassette(path)
        c.load()
        assert len(c) == 600


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(10**6), 10**6) | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=3)
        # values under secret-named keys are redacted on purpose; round-tripping is about the rest
        | st.dictionaries(
            st.text(max_size=5).filter(lambda k: not is_secret_key(k)), children, max_size=3
        )
    ),
    max_leaves=8,
)


@rp.boundary(kind="tool")
def identity(value: Any) -> Any:
    """Returns its argument."""
    CALLS.append("identity")
    return value


@settings(max_examples=40, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(value=json_values)
def test_any_json_input_round_trips(tmp_path: Path, value: Any) -> None:
    """Whatever JSON goes in, replay serves exactly what was recorded, without calling."""
    path = tmp_path / f"prop-{rp.key(value)[:16]}.jsonl"
    path.unlink(missing_ok=True)
    with rp.cassette(path):
        recorded = identity(value)
    CALLS.clear()
    with rp.cassette(path, mode="replay"):
        assert identity(value) == recorded == value
    assert CALLS == []
