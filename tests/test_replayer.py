"""The replay's composed parts: policy state stays off the record, the check runs the same replay
into a buffer, and the seams other modes plug into (input transform, matcher, runner) work."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import replayable as rp
from replayable._engine import Match
from replayable._replayer import (
    RecordingMatcher,
    Replay,
    ReplayPolicy,
    build_replay,
    replay_parts,
)
from replayable._writer import Buffer
from replayable.boundary import Boundary
from replayable.context import Frame
from replayable.store.sqlite import SQLiteStore
from replayable.trace import verify_run

SCRATCH_KEYS = {"whatif", "whatif_input", "cassette_miss", "fallback", "how", "scratch"}


@rp.boundary(kind="llm", name="tests.replayer:ask")
def ask(prompt: str) -> str:
    return f"answer to {prompt}"


@rp.boundary(kind="tool", name="tests.replayer:look")
def look(q: str, *, user: str = "ann") -> list[str]:
    return [q, user]


@rp.boundary(kind="tool", side_effects=True, name="tests.replayer:send")
def send(to: str) -> bool:
    return True


PROMPT = {"text": "plan"}


@rp.boundary(kind="agent", name="tests.replayer:agent")
def agent(n: int) -> list[Any]:
    out: list[Any] = [ask(PROMPT["text"])]
    out += [look(f"q{i}") for i in range(n)]
    out.append(send("ops"))
    out.append(ask("done"))
    return out


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "parts.db")
    yield s
    s.close()


@pytest.fixture
def recorded(store: SQLiteStore) -> Iterator[rp.Run]:
    PROMPT["text"] = "plan"
    with rp.record(store=store) as run:
        agent(2)
    yield run
    PROMPT["text"] = "plan"


def _stored_meta_keys(store: SQLiteStore, run_id: str) -> set[str]:
    return {k for e in store.iter_events(run_id) for k in (e.meta or {})}


class TestScratchStateOffTheRecord:
    def test_a_what_if_keeps_its_notes_on_the_frame(
        self, store: SQLiteStore, recorded: rp.Run
    ) -> None:
        """A what-if whose live and changed steps it notes (how, input changes): none of its
        notes reach the stored (hashed) metadata, and the fork verifies."""
        PROMPT["text"] = "a new plan"
        with rp.replay(recorded.id, store=store, live_kinds=("llm",), strict=False) as r:
            agent(2)
        assert [c.how for c in r.changes] == ["live"]
        assert r.changes[0].changes  # the input change was noted (kept on the frame)
        assert not _stored_meta_keys(store, r.run.id) & SCRATCH_KEYS
        assert verify_run(store.get_run(r.run.id), list(store.iter_events(r.run.id))).ok

    def test_a_fallback_and_its_cassette_keep_their_notes_on_the_frame(
        self, store: SQLiteStore, recorded: rp.Run, tmp_path: Path
    ) -> None:
        """A call the fallback cassette took (a miss, recorded live): neither the replay's
        "fallback" nor the cassette's "miss" is in the stored metadata or the cassette line."""
        PROMPT["text"] = "a new plan"
        tape = tmp_path / "fallback.jsonl"
        with rp.replay(recorded.id, store=store, fallback=rp.cassette(tape)) as r:
            agent(2)
        assert len(r.fallback_calls) == 1
        assert not _stored_meta_keys(store, r.run.id) & SCRATCH_KEYS
        lines = rp.cassette(tape)
        lines.load()
        assert len(lines) == 1
        assert "cassette_miss" not in tape.read_text()
        assert verify_run(store.get_run(r.run.id), list(store.iter_events(r.run.id))).ok

    def test_a_recorded_step_still_keeps_what_the_engine_notes(
        self, store: SQLiteStore, recorded: rp.Run
    ) -> None:
        """The counter-check: served steps do keep their stored metadata (served, source)."""
        with rp.replay(recorded.id, store=store) as r:
            agent(2)
        assert {"served", "source_seq"} <= _stored_meta_keys(store, r.run.id)


class TestCheckRunsTheSameReplay:
    def test_a_buffer_sink_writes_nothing_and_starts_no_writer(self, recorded: rp.Run) -> None:
        """The replay rp.check builds keeps its steps in a buffer: no writer thread starts, no
        store is written, and the buffered steps become rows of a sealed run on demand."""
        events = list(recorded.events())
        writers = sum(t.name == "replayable-writer" for t in threading.enumerate())
        buffer = Buffer()
        with build_replay(recorded, events, target=None, sink=buffer, strict=False) as r:
            agent(2)
        assert r.ok, r.report()
        assert sum(t.name == "replayable-writer" for t in threading.enumerate()) == writers
        assert len(buffer.pending) == len(events)
        rows = buffer.rows(r.run)
        assert [row.seq for row in rows] == [p.seq for p in buffer.pending]
        assert r.run.event_count == len(rows)

    def test_a_check_keeps_a_diverged_replay(self, store: SQLiteStore, recorded: rp.Run) -> None:
        """rp.check finds the divergence through the same replay and keeps that replay."""
        PROMPT["text"] = "a new plan"
        report = rp.check(store, imports=[])
        assert report.counts["diverged"] == 1
        kept = report.outcomes[0].replay_id
        assert kept is not None
        assert store.get_run(kept).parent_run == recorded.id


class TestSeams:
    def test_a_live_input_is_transformed_before_it_is_keyed(
        self, store: SQLiteStore, recorded: rp.Run
    ) -> None:
        """``prepare`` sees the live input before the comparison, the key and the stored
        step: an input changed only where the transform maps it back still matches."""
        PROMPT["text"] = "PLAN"
        seen: list[str] = []

        def lower(b: Boundary, data: bytes) -> bytes:
            seen.append(b.name)
            return data.replace(b'"PLAN"', b'"plan"')

        parts = replay_parts(recorded, list(recorded.events()), target=store)
        parts.matcher.prepare = lower
        policy = ReplayPolicy(
            parts.recording,
            parts.keeper,
            live=(),
            allow_side_effects=False,
            strict=True,
            matcher=parts.matcher,
            server=parts.server,
        )
        with pytest.raises(rp.Divergence), rp.replay(recorded.id, store=store):
            agent(2)  # without the transform, the changed prompt diverges
        replay = Replay(policy)
        with replay:
            agent(2)
        assert replay.ok, replay.report()
        assert ask.__replayable__.name in seen  # type: ignore[attr-defined]

    def test_a_matcher_of_another_kind_plugs_in(self, store: SQLiteStore, recorded: rp.Run) -> None:
        """A matcher comparing only the fields a recorded step carries (here: ``q``, not
        ``user``) replaces the recording matcher; the rest of the replay is unchanged."""
        parts = replay_parts(recorded, list(recorded.events()), target=store)
        rec = parts.recording

        class FewerFields:
            def match(self, frame: Frame) -> Match:
                b = frame.b
                assert b is not None
                parent = frame.parent
                prec = parent.rec_seq if parent is not None else None
                with rec.lock:
                    group = rec.groups.get((prec, b.name), [])
                    start = rec.first_unconsumed((prec, b.name), group)
                    if start == len(group):
                        return Match(None)
                    ev = rec.take(group[start])
                frame.key = ev.key
                return Match(ev)

        policy = ReplayPolicy(
            rec,
            parts.keeper,
            live=(),
            allow_side_effects=False,
            strict=True,
            matcher=FewerFields(),  # type: ignore[arg-type]
            server=parts.server,
        )
        replay = Replay(policy)
        with replay:
            out = agent(2)
        assert replay.ok, replay.report()
        assert out[1] == ["q0", "ann"]

    def test_a_runner_wraps_what_a_live_call_runs(
        self, store: SQLiteStore, recorded: rp.Run
    ) -> None:
        """``runner`` wraps the function of a call named live (a forwarding call would carry
        the replay's context across here); served calls never reach it."""
        wrapped: list[str] = []

        def runner(frame: Frame, fn: Callable[..., Any]) -> Callable[..., Any]:
            wrapped.append(frame.address)
            return fn

        parts = replay_parts(recorded, list(recorded.events()), target=store)
        policy = ReplayPolicy(
            parts.recording,
            parts.keeper,
            live=["look"],
            allow_side_effects=False,
            strict=True,
            matcher=parts.matcher,
            server=parts.server,
            runner=runner,
        )
        with Replay(policy) as replay:
            agent(2)
        assert replay.ok, replay.report()
        assert [a.rsplit(" > ", 1)[-1] for a in wrapped] == [
            "tests.replayer:agent/0",
            "tests.replayer:look/0",
            "tests.replayer:look/1",
        ]


def test_the_matcher_refuses_an_unknown_mode(recorded: rp.Run) -> None:
    """``match=`` is 'address' or 'key'."""
    parts = replay_parts(recorded, list(recorded.events()), target=recorded.store)
    with pytest.raises(ValueError, match="'address' or 'key'"):
        RecordingMatcher(parts.recording, match="place")


COLLIDING: dict[Any, Any] = {2: "a", "2": "b", True: "t", "true": "T", None: "n", "null": "N"}


@rp.boundary(kind="tool", name="tests.replayer:collide")
def collide(data: dict[Any, Any]) -> dict[Any, Any]:
    return {**data, 2.5: "f", "2.5": "F"}


@rp.boundary(kind="llm", name="tests.replayer:collide_stream")
def collide_stream(n: int) -> Iterator[dict[Any, Any]]:
    for i in range(n):
        yield {i: "int", str(i): "str"}


def _same_dict(got: Any, want: dict[Any, Any]) -> None:
    """``got`` is ``want``: the same keys with the same types, in order, and the same values."""
    assert got == want
    assert [(type(k), k) for k in got] == [(type(k), k) for k in want]


class TestCollidingKeysServedWhole:
    """A dict whose keys collide as strings is recorded whole and served back whole."""

    def test_a_recorded_run_serves_the_dict_back_with_every_key_and_its_type(self) -> None:
        """Replay serves {2, "2", True, "true", None, "null", 2.5, "2.5"} keys back as they were
        returned, and the run verifies."""
        with rp.record() as run:
            recorded = collide(COLLIDING)
        rp.flush()
        stored = rp.open_store().get_run(run.id)
        assert verify_run(stored, stored.events()).ok
        [ev] = list(stored.events())
        assert ev.meta["dict_pairs"] is True
        assert "unserializable_output" not in ev.meta
        with rp.replay(run.id) as replay:
            served = collide(COLLIDING)
        assert replay.ok
        _same_dict(served, recorded)

    def test_a_replay_of_the_replay_serves_it_whole_too(self) -> None:
        """A served step kept as a reference says its output holds pairs, so a replay of the
        replay rebuilds the dict too."""
        with rp.record() as run:
            recorded = collide(COLLIDING)
        with rp.replay(run.id) as first:
            collide(COLLIDING)
        with rp.replay(first.run.id) as second:
            served = collide(COLLIDING)
        assert second.ok
        _same_dict(served, recorded)

    def test_a_trace_file_serves_it_whole(self, tmp_path: Path) -> None:
        """The flag travels in the event's metadata into a trace file and back."""
        from replayable.trace import write_trace

        with rp.record() as run:
            recorded = collide(COLLIDING)
        rp.flush()
        stored = rp.open_store().get_run(run.id)
        path = write_trace(stored, stored.events(), tmp_path / "collide.jsonl")
        with rp.replay(path) as replay:
            served = collide(COLLIDING)
        assert replay.ok
        _same_dict(served, recorded)

    def test_streamed_chunks_are_served_whole(self) -> None:
        """Each chunk of a served stream is rebuilt with its colliding keys."""
        with rp.record() as run:
            recorded = list(collide_stream(3))
        with rp.replay(run.id) as replay:
            served = list(collide_stream(3))
        assert replay.ok
        assert len(served) == 3
        for got, want in zip(served, recorded, strict=True):
            _same_dict(got, want)

    def test_a_cassette_serves_it_whole(self, tmp_path: Path) -> None:
        """A cassette line keeps the flag, so its hit serves the dict back whole."""
        path = tmp_path / "collide.jsonl"
        with rp.cassette(path, mode="record"):
            recorded = collide(COLLIDING)
        with rp.cassette(path, mode="replay"):
            served = collide(COLLIDING)
        _same_dict(served, recorded)

    def test_a_secret_under_a_colliding_dicts_key_is_redacted(self, tmp_path: Path) -> None:
        """The pairs' keys are names like any dict's: a password under one is not stored, and
        the replay serves the redacted value under the same key."""
        secret = "hunter2-correct-horse"
        with rp.record() as run:
            collide({1: "a", "1": "b", "password": secret})
        rp.flush()
        for file in tmp_path.glob("traces.db*"):  # the database, its WAL
            assert secret.encode() not in file.read_bytes()
        with rp.replay(run.id) as replay:
            served = collide({1: "a", "1": "b", "password": secret})
        assert replay.ok
        assert served["password"] == "[REDACTED]"
        assert (served[1], served["1"]) == ("a", "b")

    def test_a_changed_colliding_value_is_a_divergence(self) -> None:
        """Changing the value under one of two colliding keys is reported, not matched."""
        with rp.record() as run:
            collide({1: "a", "1": "b"})
        with rp.replay(run.id, strict=False) as replay, pytest.raises(rp.Divergence):
            collide({1: "x", "1": "b"})
        assert [d.reason for d in replay.divergences] == ["changed"]

    @given(
        st.dictionaries(
            st.integers(-3, 3)
            | st.booleans()
            | st.none()
            | st.floats(-3, 3, allow_nan=False).map(lambda f: round(f, 1))
            | st.sampled_from(["1", "-1", "0", "true", "false", "null", "0.5", "x"]),
            st.integers(-(2**63), 2**63 - 1) | st.text(max_size=4) | st.lists(st.booleans()),
            max_size=6,
        )
    )
    @settings(max_examples=40, deadline=None)
    def test_any_dict_of_scalar_keys_is_served_back_whole(self, value: dict[Any, Any]) -> None:
        """Property: whatever scalar keys a dict has, a replay serves back every value: keys
        that collide as strings come back typed as they were recorded, keys that do not come
        back as JSON keys (strings), as the design says of every served value."""
        with rp.record() as run:
            recorded = echo(value)
        with rp.replay(run.id) as replay:
            served = echo(value)
        assert replay.ok
        texts = {orjson.dumps({k: 0}, option=orjson.OPT_NON_STR_KEYS) for k in recorded}
        if len(texts) < len(recorded):  # keys collide as strings: served whole
            _same_dict(served, recorded)
        else:
            _same_dict(served, orjson.loads(orjson.dumps(recorded, option=orjson.OPT_NON_STR_KEYS)))


@rp.boundary(kind="tool", name="tests.replayer:echo")
def echo(value: dict[Any, Any]) -> dict[Any, Any]:
    return dict(value)
