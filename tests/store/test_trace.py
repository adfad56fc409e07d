"""Trace files and tamper evidence: stable files, damage named by line, chains that catch edits."""

from __future__ import annotations

import pickle
from pathlib import Path

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import replayable as rp
from replayable.errors import TraceCorrupt
from replayable.trace import (
    StoredEvent,
    check_trace,
    event_content,
    event_hash,
    event_payload,
    payload_digest,
    read_trace,
    verify_run,
    write_trace,
)


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


def _stored(ev: rp.Event) -> StoredEvent:
    """``ev`` as a store reads it back: JSON fields as their bytes, decoded on first read."""
    return StoredEvent.from_stored(
        ev.run_id,
        ev.seq,
        ev.chain_seq,
        ev.address,
        ev.parent_seq,
        ev.boundary,
        ev.kind,
        ev.key,
        orjson.dumps(ev.input),
        orjson.dumps(ev.output),
        None if ev.error is None else orjson.dumps(ev.error),
        orjson.dumps(ev.meta),
        ev.started_at,
        ev.duration_ns,
        ev.hash,
    )


def _event(**fields: object) -> rp.Event:
    base: dict[str, object] = {
        "run_id": "r1",
        "seq": 0,
        "address": "t:echo/0",
        "parent_seq": None,
        "boundary": "t:echo",
        "kind": "tool",
        "key": "k",
        "input": {"b": 1, "a": [1, 2]},
        "output": {"text": "hi"},
        "meta": {"model": "m"},
    }
    base.update(fields)
    return rp.Event(**base)  # type: ignore[arg-type]


class TestStoredEvent:
    """Events read from a store keep their JSON fields as bytes until a field is read."""

    @given(_values, _values, _values, st.none() | st.dictionaries(st.text(max_size=5), _values))
    @settings(max_examples=80, deadline=None)
    def test_hashes_and_reads_like_the_event_it_stores(
        self, inp: object, out: object, meta_value: object, error: dict | None
    ) -> None:
        """Property: a stored event hashes to the same content, reads back the same fields and
        compares equal to the event it stores, before and after its fields are decoded."""
        ev = _event(input=inp, output=out, meta={"v": meta_value}, error=error)
        stored = _stored(ev)
        assert stored.stored_fields() == ev.stored_fields()
        assert event_content(stored) == event_content(ev)
        assert stored == ev
        assert ev == stored
        assert (stored.input, stored.output, stored.error, stored.meta) == (
            ev.input,
            ev.output,
            ev.error,
            ev.meta,
        )
        assert event_content(stored) == event_content(ev)

    def test_an_edit_in_place_after_reading_changes_the_hashed_content(self) -> None:
        """Once read, the decoded value is the field: editing it in place is an edit the hash
        sees (scan --fix, rechain), not hidden behind the bytes first read."""
        stored = _stored(_event())
        before = event_content(stored)
        stored.output["text"] = "edited"
        assert event_content(stored) != before
        assert stored.stored("output") == b'{"text":"edited"}'

    def test_an_error_edited_after_reading_is_hashed_as_edited(self) -> None:
        """The error, once read, is hashed from its value, not from the bytes first read."""
        stored = _stored(_event(error={"type": "builtins:ValueError", "message": "bad"}))
        before = event_content(stored)
        assert stored.error is not None
        stored.error["message"] = "edited"
        assert stored.stored_fields()[2] == b'{"type":"builtins:ValueError","message":"edited"}'
        assert event_content(stored) != before

    @given(_values, _values)
    @settings(max_examples=60, deadline=None)
    def test_the_remembered_payload_is_the_payload_of_the_bytes_now(
        self, inp: object, out: object
    ) -> None:
        """Property: a stored event's remembered input/output digest (version 3) is always the
        digest of its fields as they are now: computed once, forgotten by any edit."""
        stored = _stored(_event(input=inp, output=out))
        ev = _event(input=inp, output=out)
        assert stored.remembered_payload() is None
        assert (
            event_payload(stored)
            == event_payload(ev)
            == payload_digest(orjson.dumps(inp), orjson.dumps(out))
        )
        assert stored.remembered_payload() == event_payload(ev)
        assert event_hash("p" * 64, stored) == event_hash("p" * 64, ev)
        stored.output = ["edited", out]
        assert stored.remembered_payload() is None
        assert event_payload(stored) == payload_digest(
            orjson.dumps(inp), orjson.dumps(["edited", out])
        )
        stored.set_stored("input", b'"set"')
        assert stored.remembered_payload() is None
        assert event_hash("p" * 64, stored) != event_hash("p" * 64, ev)

    def test_set_stored_keeps_bytes_of_its_own(self) -> None:
        """``set_stored`` with a ``bytearray`` copies it: changing the bytearray afterwards
        changes neither the field nor the digest remembered for it."""
        stored = _stored(_event())
        raw = bytearray(b'"set"')
        stored.set_stored("output", raw)
        before = event_hash("", stored)
        raw[1:4] = b"xyz"
        assert stored.output == "set"
        assert event_hash("", stored) == before

    def test_a_field_decoded_and_edited_in_place_is_not_served_from_the_memo(self) -> None:
        """Reading a field and editing the value in place is an edit the version-3 hash sees,
        although the bytes it was remembered for are still the same objects elsewhere."""
        stored = _stored(_event())
        before = event_hash("", stored)
        stored.output["text"] = "edited"
        assert event_hash("", stored) != before

    @given(st.binary(max_size=40), st.binary(max_size=40), st.binary(max_size=40))
    @settings(max_examples=200, deadline=None)
    def test_input_and_output_cannot_trade_bytes(self, a: bytes, b: bytes, c: bytes) -> None:
        """Property: the payload digest tells ``(a, b + c)`` from ``(a + b, c)``: moving bytes
        from the output into the input (or back) changes it."""
        if b:
            assert payload_digest(a, b + c) != payload_digest(a + b, c)

    def test_a_decoded_copy_is_the_callers_own(self) -> None:
        """``decoded`` hands out a fresh value: changing it leaves the event and its bytes."""
        stored = _stored(_event())
        copy = stored.decoded("output")
        copy["text"] = "changed by the agent"
        assert stored.output == {"text": "hi"}
        assert stored.stored("output") == b'{"text":"hi"}'

    def test_has_meta_answers_from_the_bytes_and_from_escaped_keys(self) -> None:
        """A key is found whether written plainly or with JSON escapes; absent keys are absent."""
        stored = _stored(_event(meta={"stream": True}))
        assert stored.has_meta("stream")
        assert not stored.has_meta("closed_early")
        escaped = StoredEvent.from_stored(
            "r1", 0, 0, "a", None, "b", "tool", "k", b"1", b"2", None,
            b'{"\\u0073tream":true}', 0.0, 0, "",
        )  # fmt: skip
        assert escaped.has_meta("stream")
        assert escaped.meta == {"stream": True}

    def test_sql_null_reads_as_the_empty_value(self) -> None:
        """NULL columns read as null input/output/error and an empty meta, as before."""
        ev = StoredEvent.from_stored(
            "r1", 0, 0, "a", None, "b", "tool", "k", None, None, None, None, 0.0, 0, ""
        )
        assert (ev.input, ev.output, ev.error, ev.meta) == (None, None, None, {})

    def test_pickles_as_a_plain_event(self) -> None:
        """A stored event crosses process boundaries (check --jobs, Dask) as an equal Event."""
        stored = _stored(_event())
        back = pickle.loads(pickle.dumps(stored))
        assert type(back) is rp.Event
        assert back == stored

    def test_a_store_reads_stored_events_that_verify(self) -> None:
        """The SQLite store hands out stored events; the run verifies from their bytes."""
        with rp.record() as run:
            agent(["alice", "bob"])
        events = list(rp.open_store().get_run(run.id).events())
        assert all(type(e) is StoredEvent for e in events)
        assert verify_run(rp.open_store().get_run(run.id), events).ok
        assert [e.output for e in events][1] == {"name": "alice", "id": 5}
