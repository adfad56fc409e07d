"""Runs whose rows refer to another run's events (a replay's ranges and served references):
``run_refs`` records them, pruning keeps their sources, verify checks their sources too, and
the migration that adds it fills it from the references stored before."""

from __future__ import annotations

import sqlite3
import time
from pathlib import Path
from typing import Any

import psycopg
import pytest
from click.testing import CliRunner
from tests.fixtures.old_stores import postgres_before, sqlite_before

import replayable as rp
from replayable.cli import main
from replayable.store.base import References, RunQuery, Store
from replayable.store.postgres import PostgresStore
from replayable.store.sqlite import SQLiteStore
from replayable.trace import verify_run


@rp.boundary(name="refs:ask", kind="llm")
def ask(i: int) -> str:
    """A model call."""
    return f"answer {i}"


@rp.boundary(name="refs:search", kind="tool")
def search(i: int) -> str:
    """A tool."""
    return f"result {i}"


@rp.boundary(name="refs:note", kind="tool")
def note(i: int) -> str:
    """A tool a replay runs live."""
    return f"noted {i}"


def record(store: Store, n: int = 5) -> rp.Run:
    with rp.record(store=store, name="source") as run:
        for i in range(n):
            ask(i)
    return run


def replay(store: Store, source: rp.Run, n: int = 5) -> rp.Run:
    with rp.replay(source.id, store=store) as r:
        for i in range(n):
            ask(i)
    assert r.ok
    return r.run


def between() -> float:
    """A moment strictly after what was recorded so far and before what comes next."""
    t = time.time()
    while time.time() <= t:
        pass
    return t


def ids(store: Store) -> set[str]:
    return {r.id for r in store.list_runs(RunQuery(limit=100))}


def old_ref_row(run_id: str, source: str) -> tuple[Any, ...]:
    """A served step as replays stored it before ranges: a reference to one source event."""
    meta = f'{{"$ref":["{source}",0,1],"served":true,"source_seq":0}}'
    return (run_id, 0, 0, "a/0", None, "a", "llm", "k", "null", "null", None, meta, 1.0, 1, "h")


class TestRecordedReferences:
    """Writing a replay records which run it refers to."""

    def test_a_replay_refers_to_its_source_and_a_recording_to_nothing(self, backend: Store) -> None:
        """run_refs holds (replay, source) once, however many rows refer; a recording none."""
        assert isinstance(backend, References)
        source = record(backend)
        run = replay(backend, source)
        rp.flush()
        assert backend.sources_of(run.id) == [source.id]
        assert backend.sources_of(source.id) == []


class TestBoundaryFilter:
    """``runs --boundary`` sees the steps a replay's range rows stand for."""

    def test_a_replay_is_found_by_a_boundary_inside_its_range(self, backend: Store) -> None:
        """The range row is at its first step (refs:ask); the replay still lists under the tool
        it served later in the range, and not under one it never called."""
        with rp.record(store=backend) as source:
            ask(0), search(1), ask(2)
        with rp.replay(source.id, store=backend) as r:
            ask(0), search(1), ask(2)
        rp.flush()
        found = {run.id for run in backend.list_runs(RunQuery(boundary="refs:search"))}
        assert found == {source.id, r.run.id}
        assert {run.id for run in backend.list_runs(RunQuery(boundary="search"))} == found
        assert backend.list_runs(RunQuery(boundary="refs:nothing")) == []

    def test_a_replay_of_a_replay_is_found_by_a_boundary_two_ranges_down(
        self, backend: Store
    ) -> None:
        """A replay of a replay whose range starts inside its source's range (stored at note/0)
        lists under the tool served in the middle of both, and not under one never called."""
        with rp.record(store=backend) as source:
            note(0), ask(1), search(2), ask(3)
        with rp.replay(source.id, store=backend) as first:
            note(0), ask(1), search(2), ask(3)
        with rp.replay(first.run.id, store=backend, live=["refs:note"]) as second:
            note(0), ask(1), search(2), ask(3)
        rp.flush()
        assert first.ok
        assert second.ok
        found = {run.id for run in backend.list_runs(RunQuery(boundary="refs:search"))}
        assert found == {source.id, first.run.id, second.run.id}
        assert {run.id for run in backend.list_runs(RunQuery(boundary="search"))} == found
        assert backend.list_runs(RunQuery(boundary="refs:nothing")) == []

    @pytest.mark.parametrize("shift", [0, 1])
    def test_ranges_referring_round_in_a_circle_end_the_filter(
        self, backend: Store, shift: int
    ) -> None:
        """Two replays' range rows edited to refer to each other (at once, or shifted by a step)
        leave the query finishing (a bounded depth), finding neither under a boundary none
        holds."""
        source = record(backend)
        a, b = replay(backend, source), replay(backend, source)
        rp.flush()
        for run, other in ((a, b), (b, a)):
            meta = '{"$range":["' + other.id + f'",{shift},5,"x","y"]}}'
            if isinstance(backend, SQLiteStore):
                db = sqlite3.connect(backend.path)
                with db:
                    db.execute("UPDATE events SET meta = ? WHERE run_id = ?", (meta, run.id))
                db.close()
            else:
                assert isinstance(backend, PostgresStore)
                with psycopg.connect(backend.connection_url(), autocommit=True) as conn:
                    conn.execute("UPDATE events SET meta = %s WHERE run_id = %s", (meta, run.id))
        t0 = time.monotonic()
        assert backend.list_runs(RunQuery(boundary="refs:search")) == []
        found = {r.id for r in backend.list_runs(RunQuery(boundary="refs:ask"))}
        assert found == {source.id, a.id, b.id}  # each range row is at its own ask step
        assert time.monotonic() - t0 < 10

    def test_a_range_meta_that_is_not_json_does_not_break_the_filter(
        self, backend: Store, tmp_path: Path
    ) -> None:
        """An edited range row whose meta is not JSON reads as no range: the query still runs."""
        source = record(backend)
        run = replay(backend, source)
        rp.flush()
        broken = '{"$range":["' + source.id + '",0,5,'
        if isinstance(backend, SQLiteStore):
            db = sqlite3.connect(backend.path)
            with db:
                db.execute("UPDATE events SET meta = ? WHERE run_id = ?", (broken, run.id))
            db.close()
        else:
            assert isinstance(backend, PostgresStore)
            with psycopg.connect(backend.connection_url(), autocommit=True) as conn:
                conn.execute("UPDATE events SET meta = %s WHERE run_id = %s", (broken, run.id))
        found = {r.id for r in backend.list_runs(RunQuery(boundary="refs:ask"))}
        assert source.id in found


class TestPrune:
    """Pruning never deletes a run a kept run serves events from."""

    def test_the_source_of_a_newer_replay_is_kept_and_the_replay_still_verifies(
        self, backend: Store
    ) -> None:
        """Runs started before the cut go, except the replayed source; once the replay goes too,
        so does its source."""
        assert isinstance(backend, References)
        source = record(backend)
        other = record(backend)
        cut = between()
        run = replay(backend, source)
        rp.flush()
        assert backend.kept_before(cut) == [source.id]
        assert backend.delete_runs(before=cut) == 1
        assert ids(backend) == {source.id, run.id}
        replayed = backend.get_run(run.id)
        assert verify_run(replayed, backend.iter_events(run.id)).ok
        assert other.id not in ids(backend)
        assert backend.delete_runs(before=between()) == 2
        assert ids(backend) == set()
        assert backend.sources_of(run.id) == []

    def test_sources_are_kept_through_a_replay_of_a_replay(self, backend: Store) -> None:
        """A kept replay of an old replay keeps both: the old replay and the recording it
        serves from."""
        assert isinstance(backend, References)
        source = record(backend)
        first = replay(backend, source)
        cut = between()
        second = replay(backend, first)
        rp.flush()
        assert sorted(backend.kept_before(cut)) == sorted([source.id, first.id])
        assert backend.delete_runs(before=cut) == 0
        events = list(backend.iter_events(second.id))
        assert [e.output for e in events] == [f"answer {i}" for i in range(5)]
        assert verify_run(backend.get_run(second.id), events).ok

    def test_the_cli_says_which_runs_it_kept(self, store_path: Path) -> None:
        """prune names the runs it kept and why (the source made 40 days old by hand)."""
        store = SQLiteStore(store_path)
        source = record(store)
        replay(store, source)
        rp.flush()
        db = sqlite3.connect(store_path)
        with db:
            db.execute(
                "UPDATE runs SET started_at = started_at - 86400 * 40 WHERE id = ?", (source.id,)
            )
        db.close()
        result = CliRunner().invoke(
            main, ["prune", "--older-than", "30d", "--yes", "--store", str(store_path)]
        )
        assert result.exit_code == 0, result.output
        assert "deleted 0 runs" in result.output
        assert "kept 1 older runs" in result.output
        assert source.id in result.output


class TestVerifyChecksSources:
    """``replayable verify`` of a replay checks the runs it serves from."""

    def test_a_source_whose_header_was_edited_fails_the_replays_verify(
        self, store_path: Path
    ) -> None:
        """An edit to the source no served step shows (its name) still fails the replay's
        verify, which names the source."""
        store = SQLiteStore(store_path)
        source = record(store)
        run = replay(store, source)
        rp.flush()
        ok = CliRunner().invoke(main, ["verify", run.id, "--store", str(store_path)])
        assert ok.exit_code == 0, ok.output
        db = sqlite3.connect(store_path)
        with db:
            db.execute("UPDATE runs SET name = 'forged' WHERE id = ?", (source.id,))
        db.close()
        bad = CliRunner().invoke(main, ["verify", run.id, "--store", str(store_path)])
        assert bad.exit_code == 1
        assert f"serves events of run {source.id}, which does not verify" in bad.output

    def test_the_mcp_verify_tool_checks_the_source_too(self, store_path: Path) -> None:
        """The MCP server's verify_run answers as the CLI does: not ok, naming the source."""
        from replayable.mcp_server._tools import Tools

        store = SQLiteStore(store_path)
        source = record(store)
        run = replay(store, source)
        tools = Tools(store)
        assert tools.verify_run(run.id)["ok"] is True
        rp.flush()
        db = sqlite3.connect(store_path)
        with db:
            db.execute("UPDATE runs SET name = 'forged' WHERE id = ?", (source.id,))
        db.close()
        answer = tools.verify_run(run.id)
        assert answer["ok"] is False
        assert source.id in answer["problem"]


class TestMigration:
    """m007 adds run_refs and fills it from references stored before it."""

    def test_sqlite_fills_run_refs_from_old_references(self, tmp_path: Path) -> None:
        """An m006 SQLite file with a replay's reference rows: opening it records the source,
        and pruning then keeps it."""
        path = tmp_path / "old.db"
        db = sqlite_before(path, 6)
        db.execute(
            "INSERT INTO runs (id, started_at, status) "
            "VALUES ('src', 1.0, 'ok'), ('rep', 5.0, 'ok')"
        )
        db.execute(f"INSERT INTO events VALUES ({','.join('?' * 15)})", old_ref_row("rep", "src"))
        db.close()
        store = SQLiteStore(path)
        assert store.migrations()[-1] == "_m007_run_refs"
        assert store.sources_of("rep") == ["src"]
        assert store.delete_runs(before=2.0) == 0
        store.close()

    def test_postgres_fills_run_refs_from_old_references(self, pg_url: str) -> None:
        """The same on PostgreSQL, through the same runner."""
        postgres_before(pg_url, 5)
        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute(
                "INSERT INTO runs (id, started_at, status) "
                "VALUES ('src', 1.0, 'ok'), ('rep', 5.0, 'ok')"
            )
            conn.execute(
                f"INSERT INTO events VALUES ({','.join(['%s'] * 15)})", old_ref_row("rep", "src")
            )
        store = PostgresStore(pg_url)
        assert "m007_run_refs" in store.migrations()
        assert store.sources_of("rep") == ["src"]
        assert store.delete_runs(before=2.0) == 0
        store.close()
