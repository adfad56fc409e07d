"""Range rows: a replay's served steps stored as one reference to the source's steps, read back
as the per-step events they stand for, and verified as them."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import replayable as rp
from replayable._replayer import build_replay
from replayable._writer import Buffer, pending_row
from replayable.store.base import event_to_row
from replayable.store.sqlite import SQLiteStore
from replayable.trace import (
    Event,
    Verification,
    genesis_hash,
    rechain,
    seal_run,
    verify_run,
    write_trace,
)

LIVE = "ranges:tool"


@rp.boundary(name="ranges:ask", kind="llm")
def ask(i: int) -> dict[str, Any]:
    """A model call: 2 KB of answer."""
    return {"text": f"answer {i} " + "x" * 2000, "i": i}


@rp.boundary(name="ranges:lookup", kind="llm")
def lookup(i: int, request_id: str) -> str:
    """A call matched on its key while a transient field changes (served, its input its own)."""
    return f"found {i}"


@rp.boundary(name=LIVE, kind="tool")
def tool(i: int) -> int:
    """A tool the replay runs live."""
    return i * 2


OPS = ("served", "live", "changed_live", "other_input", "extra_live")


def play(ops: list[str], *, recording: bool) -> None:
    """The agent: one call per op, as recorded or as replayed."""

    @rp.boundary(name="ranges:agent", kind="agent")
    def agent() -> None:
        for i, op in enumerate(ops):
            if op == "served":
                ask(i)
            elif op == "live":
                tool(i)
            elif op == "changed_live":
                tool(i if recording else i + 1000)
            elif op == "other_input":
                lookup(i, request_id="recorded" if recording else "replayed")
            elif op == "extra_live" and not recording:
                tool(-i - 1)

    agent()


def stored_rows(store: SQLiteStore, run_id: str) -> list[tuple[Any, ...]]:
    """The run's rows as stored (read behind the store's back, after its writes)."""
    rp.flush()
    db = sqlite3.connect(store.path)
    try:
        return db.execute(
            "SELECT seq, input, output, meta FROM events WHERE run_id = ? ORDER BY seq", (run_id,)
        ).fetchall()
    finally:
        db.close()


def edit(store: SQLiteStore, sql: str, *params: Any) -> None:
    """Change the database's bytes directly, as someone with the file could."""
    rp.flush()
    db = sqlite3.connect(store.path)
    with db:
        db.execute(sql, params)
    db.close()


def shape(ev: Event) -> tuple[Any, ...]:
    """What a reader sees of a step, but the run it is in, its timing and hash."""
    return (
        ev.seq,
        ev.chain_seq,
        ev.address,
        ev.parent_seq,
        ev.boundary,
        ev.kind,
        ev.key,
        ev.input,
        ev.output,
        ev.error,
        ev.meta,
    )


def recorded(store: SQLiteStore, n: int) -> rp.Run:
    with rp.record(store=store, name="source") as run:
        for i in range(n):
            ask(i)
    return run


def replayed(store: SQLiteStore, source: rp.Run, n: int) -> rp.Replay:
    with rp.replay(source.id, store=store) as r:
        for i in range(n):
            ask(i)
    assert r.ok, r.report()
    return r


class TestStorage:
    """A replay that takes the recorded path stores one row per range, not per step."""

    def test_a_thousand_served_steps_are_a_row_or_two_and_read_back_as_the_source(
        self, tmp_path: Path
    ) -> None:
        """1,000 served steps of 2 KB are stored in a few rows holding no value, and read back as
        1,000 events with the source's inputs and outputs, each marked served, verifying."""
        store = SQLiteStore(tmp_path / "t.db")
        source = recorded(store, 1000)
        r = replayed(store, source, 1000)
        rows = stored_rows(store, r.run.id)
        assert 1 <= len(rows) <= 3  # the writer may cut a batch while the replay runs
        assert all(inp == "null" and out == "null" and '"$range"' in m for _, inp, out, m in rows)
        assert sum(json.loads(m)["$range"][2] for *_, m in rows) == 1000
        events = list(store.iter_events(r.run.id))
        src = list(store.iter_events(source.id))
        assert [(e.seq, e.input, e.output) for e in events] == [
            (e.seq, e.input, e.output) for e in src
        ]
        assert [e.meta for e in events] == [{"served": True, "source_seq": e.seq} for e in src]
        run = store.get_run(r.run.id)
        assert run.event_count == 1000
        assert verify_run(run, events).ok

    def test_a_divergence_splits_the_range_and_is_stored_as_its_own_row(
        self, tmp_path: Path
    ) -> None:
        """A live step in the middle ends one range and the next begins after it: three rows
        for 2 + 1 + 2 steps, read back in order."""
        store = SQLiteStore(tmp_path / "t.db")
        with rp.record(store=store) as source:
            ask(0), ask(1), tool(2), ask(3), ask(4)
        for _ in range(50):  # until the writer took the replay in one batch (see TestTamper)
            with rp.replay(source.id, store=store, live=[LIVE]) as r:
                ask(0), ask(1), tool(2), ask(3), ask(4)
            rows = stored_rows(store, r.run.id)
            if len(rows) == 3:
                break
        assert [seq for seq, *_ in rows] == [0, 2, 3]
        assert [json.loads(m).get("$range", [0, 0, 1])[2] for *_, m in rows] == [2, 1, 2]
        events = list(store.iter_events(r.run.id))
        assert [e.seq for e in events] == [0, 1, 2, 3, 4]
        assert events[2].meta == {"source_seq": 2}  # ran live
        assert verify_run(store.get_run(r.run.id), events).ok

    def test_threads_racing_under_one_parent_read_back_as_served_and_verify(
        self, tmp_path: Path
    ) -> None:
        """Calls served from eight threads complete in any order: ranges take only steps in a
        row in both seq and write order, and the replay reads back as the source, verifying."""
        from concurrent.futures import ThreadPoolExecutor

        @rp.boundary(name="ranges:fan_out", kind="agent")
        def fan_out(n: int) -> list[Any]:
            with ThreadPoolExecutor(8) as pool:
                return list(pool.map(rp.bind(ask), range(n)))

        store = SQLiteStore(tmp_path / "t.db")
        with rp.record(store=store) as source:
            fan_out(60)
        for _ in range(3):
            with rp.replay(source.id, store=store) as r:
                fan_out(60)
            assert r.ok, r.report()
            events = list(store.iter_events(r.run.id))
            src = {e.seq: e for e in store.iter_events(source.id)}
            assert len(events) == 61
            served = [e for e in events if e.meta.get("served")]
            assert all(e.output == src[e.meta["source_seq"]].output for e in served)
            assert all(e.input == src[e.meta["source_seq"]].input for e in served)
            assert verify_run(store.get_run(r.run.id), events).ok

    def test_a_signed_replay_stored_as_ranges_verifies_its_signature(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Under a signing key the replay's head is signed over the steps' chain: verify says
        the signature is valid, and a range edited fails it."""
        monkeypatch.setenv("REPLAYABLE_SIGNING_KEY", "k" * 32)
        store = SQLiteStore(tmp_path / "t.db")
        source = recorded(store, 40)
        r = replayed(store, source, 40)
        run = store.get_run(r.run.id)
        v = verify_run(run, store.iter_events(run.id))
        assert (v.ok, v.signature) == (True, "valid")
        edit(store, "UPDATE events SET duration_ns = duration_ns + 1 WHERE run_id = ?", run.id)
        assert not verify_run(run, store.iter_events(run.id)).ok

    def test_a_range_step_reads_back_inside_the_replays_own_time(self, tmp_path: Path) -> None:
        """A ranged step's timing is the range's span shared evenly: within the replay run,
        in order, never the source's (a live model call's seconds)."""
        store = SQLiteStore(tmp_path / "t.db")
        source = recorded(store, 50)
        r = replayed(store, source, 50)
        run = store.get_run(r.run.id)
        events = list(store.iter_events(r.run.id))
        starts = [e.started_at for e in events]
        assert starts == sorted(starts)
        assert run.started_at <= starts[0]
        assert run.ended_at is not None
        assert all(e.started_at + e.duration_ns / 1e9 <= run.ended_at + 1e-6 for e in events)

    def test_a_replay_of_a_replay_is_ranges_of_ranges_and_verifies(self, tmp_path: Path) -> None:
        """Replaying a replay serves the expanded steps; its own ranges refer to the first
        replay, and reading it expands through both."""
        store = SQLiteStore(tmp_path / "t.db")
        source = recorded(store, 30)
        first = replayed(store, source, 30)
        second = replayed(store, first.run, 30)
        rows = stored_rows(store, second.run.id)
        assert all(json.loads(m)["$range"][0] == first.run.id for *_, m in rows)
        events = list(store.iter_events(second.run.id))
        assert [e.output for e in events] == [e.output for e in store.iter_events(source.id)]
        assert verify_run(store.get_run(second.run.id), events).ok

    def test_an_exported_replay_is_self_contained_and_verifies(self, tmp_path: Path) -> None:
        """A replay stored as ranges exports as every step in full, and the file verifies on its
        own and replays from another store."""
        store = SQLiteStore(tmp_path / "t.db")
        source = recorded(store, 20)
        r = replayed(store, source, 20)
        run = store.get_run(r.run.id)
        path = write_trace(run, store.iter_events(run.id), tmp_path / "replay.jsonl")
        assert "$range" not in path.read_text()
        from replayable.trace import check_trace

        _header, events = check_trace(path)
        assert len(events) == 20
        elsewhere = SQLiteStore(tmp_path / "elsewhere.db")
        with rp.replay(path, store=elsewhere) as again:
            for i in range(20):
                ask(i)
        assert again.ok


class TestExpandedReadIsThePerStepEvents:
    """Whatever the replay's path, reading its ranges gives the events a row per step gave."""

    @settings(
        max_examples=25, suppress_health_check=[HealthCheck.function_scoped_fixture], deadline=None
    )
    @given(ops=st.lists(st.sampled_from(OPS), min_size=1, max_size=14))
    def test_ranged_and_per_step_rows_read_back_alike(
        self, tmp_path_factory: pytest.TempPathFactory, ops: list[str]
    ) -> None:
        """The same replay's steps kept as ranges (the writer's and the buffer's) and as a row
        each (references, as before ranges) read back as the same events but for timing; all
        verify, and the ranged one stores one row per divergent or live step plus one per
        stretch of served steps."""
        d = tmp_path_factory.mktemp("ranges")
        store, other = SQLiteStore(d / "a.db"), SQLiteStore(d / "b.db")
        with rp.record(store=store) as source:
            play(ops, recording=True)
        with rp.replay(source.id, store=store, live=[LIVE], strict=False) as by_writer:
            play(ops, recording=False)

        src = store.get_run(source.id)
        buffer = Buffer()
        kept = build_replay(
            src,
            list(store.iter_events(src.id)),
            target=store,
            sink=buffer,
            live=[LIVE],
            strict=False,
        )
        with kept:
            play(ops, recording=False)
        run = kept.run
        chains = {run.id: (0, genesis_hash(run))}
        per_step = [pending_row(p, chains) for p in buffer.pending]
        seal_run(run, chains[run.id][1], chains[run.id][0])
        assert store.put_run(run, per_step)
        other.put_run(src, [event_to_row(e) for e in store.iter_events(src.id)])
        assert other.put_run(run, buffer.rows(run))

        plain = list(store.iter_events(run.id))
        ranged = list(other.iter_events(run.id))
        written = list(store.iter_events(by_writer.run.id))
        assert [shape(e) for e in ranged] == [shape(e) for e in plain]
        assert [shape(e) for e in written] == [shape(e) for e in plain]
        assert verify_run(store.get_run(run.id), plain).ok
        assert verify_run(other.get_run(run.id), ranged).ok
        assert verify_run(store.get_run(by_writer.run.id), written).ok

        stretches = sum(
            1 for i, op in enumerate(ops) if op == "served" and (i == 0 or ops[i - 1] != "served")
        )
        own = sum(1 for op in ops if op != "served")  # a live or divergent step: a row each
        assert len(stored_rows(other, run.id)) == 1 + own + stretches
        store.close()
        other.close()


class TestTamper:
    """An edit of the range row or of the source it refers to fails verification."""

    @pytest.fixture
    def setup(self, tmp_path: Path) -> tuple[SQLiteStore, rp.Run, rp.Run]:
        store = SQLiteStore(tmp_path / "t.db")
        source = recorded(store, 10)
        # The edits below need a replay stored as one range row. The writer may take a batch
        # while the replay is still running and so store it as two (both read back alike:
        # TestStorage): replay again until one is a single row, a bounded number of times.
        for _ in range(50):
            r = replayed(store, source, 10)
            if len(stored_rows(store, r.run.id)) == 1:
                break
        else:
            pytest.fail("50 replays of a 10-step run were all stored as more than one row")
        run = store.get_run(r.run.id)
        assert verify_run(run, store.iter_events(run.id)).ok
        return store, source, run

    def verdict(self, store: SQLiteStore, run_id: str) -> Verification:
        run = store.get_run(run_id)
        return verify_run(run, store.iter_events(run_id))

    def range_meta(self, store: SQLiteStore, run_id: str) -> list[Any]:
        ((meta,),) = sqlite3.connect(store.path).execute(
            "SELECT meta FROM events WHERE run_id = ?", (run_id,)
        )
        return list(json.loads(meta)["$range"])

    def set_range(self, store: SQLiteStore, run_id: str, d: list[Any]) -> None:
        edit(
            store,
            "UPDATE events SET meta = ? WHERE run_id = ?",
            json.dumps({"$range": d}, separators=(",", ":")),
            run_id,
        )

    def test_an_edited_source_output_fails_at_the_range_end(self, setup: Any) -> None:
        """The source's stored output changed in place: the replay's chain breaks at the range's
        last step (its stored hash), though the source's hashes were left as they were."""
        store, source, run = setup
        edit(
            store,
            "UPDATE events SET output = ? WHERE run_id = ? AND seq = 3",
            '"forged"',
            source.id,
        )
        v = self.verdict(store, run.id)
        assert not v.ok
        assert v.bad_seq == 9

    def test_an_error_put_on_a_served_source_step_fails(self, setup: Any) -> None:
        """A source step given an error afterwards (which a range never serves) fails the
        replay's verification too, saying its source changed."""
        store, source, run = setup
        edit(
            store,
            "UPDATE events SET error = ? WHERE run_id = ? AND seq = 4",
            '{"type": "RuntimeError", "message": "forged"}',
            source.id,
        )
        v = self.verdict(store, run.id)
        assert not v.ok
        assert "changed since" in str(v.problem)

    def test_a_source_edited_and_rechained_fails(self, setup: Any) -> None:
        """Someone edits the source and recomputes its chain and seal (no key set): the source
        verifies on its own, the replay does not, and says its source changed."""
        store, source, run = setup
        src = store.get_run(source.id)
        events = list(store.iter_events(source.id))
        events[9].output = {"text": "forged", "i": 9}
        rechain(src, events, key=b"")
        store.replace_run(src, [event_to_row(e) for e in events])
        assert self.verdict(store, source.id).ok
        v = self.verdict(store, run.id)
        assert not v.ok
        assert "changed since" in str(v.problem)

    @pytest.mark.parametrize(
        ("index", "value"),
        [(1, 1), (2, 9), (2, 11), (3, "0" * 64), (4, "0" * 64)],
        ids=["first-seq", "fewer-steps", "more-steps", "source-hash", "before-hash"],
    )
    def test_an_edited_range_descriptor_fails(self, setup: Any, index: int, value: Any) -> None:
        """Each field of the range's reference edited fails: where it starts, how many steps,
        the source's hash at its end, the chain hash before it."""
        store, _source, run = setup
        d = self.range_meta(store, run.id)
        d[index] = value
        self.set_range(store, run.id, d)
        assert not self.verdict(store, run.id).ok

    def test_a_range_pointed_at_another_recording_fails(self, setup: Any) -> None:
        """A second recording with the very same steps put in the source's place: its hashes are
        its own, and the replay says its source changed."""
        store, _source, run = setup
        twin = recorded(store, 10)
        d = self.range_meta(store, run.id)
        d[0] = twin.id
        self.set_range(store, run.id, d)
        v = self.verdict(store, run.id)
        assert not v.ok
        assert "changed since" in str(v.problem)

    @pytest.mark.parametrize(
        ("column", "value"),
        [
            ("started_at", 1.0),
            ("duration_ns", 7),
            ("hash", "0" * 64),
            ("parent_seq", 3),
            ("chain_seq", 1),
            ("address", "ranges:ask/5"),
            ("key", "forged"),
            ("input", '"forged"'),
            ("output", '"forged"'),
            ("boundary", "ranges:lookup"),
        ],
    )
    def test_an_edited_range_column_fails(self, setup: Any, column: str, value: Any) -> None:
        """Every column of the range row is covered: timing, hash, place, and the columns a
        reader never takes from it (its steps come from the source)."""
        store, _source, run = setup
        edit(store, f"UPDATE events SET {column} = ? WHERE run_id = ?", value, run.id)
        assert not self.verdict(store, run.id).ok

    @pytest.mark.parametrize(
        "rewrite",
        [
            lambda m: m.replace(",", ", "),
            lambda m: m[:-1] + ',"extra":1}',
            lambda m: m[:-5],
            lambda m: m.replace('{"$range":', '{"note":1,"$range":'),
        ],
        ids=["spaced", "extra-key", "cut-short", "key-before"],
    )
    def test_a_range_meta_rewritten_to_mean_the_same_or_nothing_fails(
        self, setup: Any, rewrite: Any
    ) -> None:
        """The reference's bytes are covered too: spaced out or given an extra key (meaning the
        same), cut into no JSON or put behind another key, it fails verification (and reading
        does not raise)."""
        store, _source, run = setup
        ((meta,),) = sqlite3.connect(store.path).execute(
            "SELECT meta FROM events WHERE run_id = ?", (run.id,)
        )
        edit(store, "UPDATE events SET meta = ? WHERE run_id = ?", rewrite(meta), run.id)
        assert not self.verdict(store, run.id).ok

    def test_a_range_whose_source_is_gone_fails(self, setup: Any) -> None:
        """The source's events deleted behind the store's back: the range stays unexpanded,
        marked, and fails verification naming the run it refers to."""
        store, source, run = setup
        edit(store, "DELETE FROM events WHERE run_id = ?", source.id)
        events = list(store.iter_events(run.id))
        assert len(events) == 1
        v = verify_run(store.get_run(run.id), events)
        assert not v.ok
        assert source.id in str(v.problem)

    def test_a_range_referring_to_its_own_run_fails_without_recursing(self, setup: Any) -> None:
        """A range edited to refer to the replay itself is left unexpanded, not read forever."""
        store, _source, run = setup
        d = self.range_meta(store, run.id)
        d[0] = run.id
        self.set_range(store, run.id, d)
        assert not self.verdict(store, run.id).ok
