"""Trace files and tamper evidence: stable files, damage named by line, chains that catch edits."""

from __future__ import annotations

from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import replayable as rp
from replayable.errors import TraceCorrupt
from replayable.trace import check_trace, read_trace, verify_run, write_trace


@rp.boundary(kind="tool")
def lookup(name: str) -> dict:
    return {"name": name, "id": len(name)}


@rp.boundary(kind="agent")
def agent(names: list) -> list:
    return [lookup(n) for n in names]


@pytest.fixture
def trace(tmp_path: Path) -> Path:
    with rp.record(name="t", tags={"env": "test"}) as run:
        agent(["alice", "bob", "carol"])
    return write_trace(run, run.events(), tmp_path / "run.jsonl")


class TestTraceFiles:
    def test_round_trip(self, trace: Path) -> None:
        """A trace file reads back as the same run and events, and verifies."""
        run, events = check_trace(trace)
        assert run.name == "t"
        assert [e.seq for e in events] == [0, 1, 2, 3]
        assert verify_run(run, events).ok

    def test_lines_have_sorted_keys_and_rewrite_identically(
        self, trace: Path, tmp_path: Path
    ) -> None:
        """Keys are sorted on every line; writing what was read gives the same bytes."""
        for line in trace.read_bytes().splitlines():
            data = orjson.loads(line)
            assert list(data) == sorted(data)
        run, events = read_trace(trace)
        again = write_trace(run, events, tmp_path / "again.jsonl")
        assert again.read_bytes() == trace.read_bytes()

    def test_truncated_mid_line_names_the_line(self, trace: Path) -> None:
        """A file cut mid-line raises TraceCorrupt with the line of the cut."""
        data = trace.read_bytes()
        trace.write_bytes(data[: data.rindex(b"\n", 0, len(data) - 1) + 20])
        with pytest.raises(TraceCorrupt, match="line 5") as info:
            check_trace(trace)
        assert info.value.line == 5

    def test_one_byte_edit_names_the_event_and_line(self, trace: Path) -> None:
        """Changing one byte of a recorded output breaks the chain at that event's line."""
        lines = trace.read_bytes().split(b"\n")
        assert b'"bob"' in lines[3]
        lines[3] = lines[3].replace(b'"bob"', b'"bub"', 1)
        trace.write_bytes(b"\n".join(lines))
        with pytest.raises(TraceCorrupt, match="line 4") as info:
            check_trace(trace)
        assert (info.value.line, info.value.seq) == (4, 2)

    def test_removing_the_last_event_is_caught_by_the_head(self, trace: Path) -> None:
        """Dropping the final event leaves a valid chain, but not the run's head hash."""
        run, events = read_trace(trace)
        result = verify_run(run, [e for e in events if e.chain_seq != len(events) - 1])
        assert not result.ok
        assert "event count" in str(result.problem)

    def test_newer_format_version_is_refused(self, trace: Path) -> None:
        """A header with an unknown version says to upgrade."""
        lines = trace.read_bytes().split(b"\n")
        header = orjson.loads(lines[0])
        header["version"] = 99
        lines[0] = orjson.dumps(header)
        trace.write_bytes(b"\n".join(lines))
        with pytest.raises(TraceCorrupt, match="version 99"):
            read_trace(trace)

    def test_replay_reads_a_trace_file(self, trace: Path) -> None:
        """rp.replay(path) serves the calls recorded in the file."""
        with rp.replay(str(trace)) as r:
            assert agent(["alice", "bob", "carol"])[1] == {"name": "bob", "id": 3}
        assert r.divergences == []


_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=10),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=4)
    ),
    max_leaves=10,
)


@rp.boundary(kind="tool")
def echo(value: object) -> object:
    return value


class TestRoundTrip:
    @given(st.lists(_values, min_size=1, max_size=3))
    @settings(max_examples=40, deadline=None)
    def test_any_recorded_json_round_trips_through_a_trace_file(self, values: list) -> None:
        """Property: whatever a boundary sees, its trace file reads back as the same events
        (values in their recorded order) and verifies."""
        with rp.record() as run:
            for v in values:
                echo(v)
        stored = rp.open_store().get_run(run.id)
        events = list(stored.events())
        path = Path(f"{run.id}.jsonl")
        write_trace(stored, events, path)
        back, back_events = check_trace(path)
        assert back.to_dict() == stored.to_dict()
        assert [e.to_dict() for e in back_events] == [e.to_dict() for e in events]
        assert verify_run(back, back_events).ok
