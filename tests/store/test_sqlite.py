"""SQLite specifics: schema migrations, indexes, and opening lazily."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import pytest
from tests.fixtures.old_stores import sqlite_before

from replayable.errors import StoreUnavailable
from replayable.store.base import EventRow, RunQuery, runs_query
from replayable.store.sqlite import (
    _SQL,
    AUTOCHECKPOINT_BYTES,
    BACKSTOP_BYTES,
    MIGRATIONS,
    PAGE_SIZE,
    ROWS_PER_INSERT,
    SQLiteStore,
)
from replayable.trace import Run, verify_run

ALL = [m.__name__ for m in MIGRATIONS]


class TestMigrations:
    def test_blank_database_gets_every_migration_in_order(self, tmp_path: Path) -> None:
        """A new file is migrated to the latest schema, each migration recorded once."""
        store = SQLiteStore(tmp_path / "new.db")
        assert store.migrations() == ALL
        store.close()
        assert SQLiteStore(tmp_path / "new.db").migrations() == ALL

    def test_old_schema_is_upgraded_keeping_its_runs(self, tmp_path: Path) -> None:
        """A database at the first schema gains the later migrations; its data survives."""
        path = tmp_path / "old.db"
        db = sqlite_before(path, 1)
        db.execute(
            "INSERT INTO runs (id, name, started_at, status, head_hash, event_count) "
            "VALUES ('old-run', 'legacy', 1.0, 'ok', 'h', 0)"
        )
        db.close()
        store = SQLiteStore(path)
        assert store.migrations() == ALL
        run = store.get_run("old-run")
        assert (run.name, run.status, run.signature) == ("legacy", "ok", None)

    def test_query_indexes_exist(self, tmp_path: Path) -> None:
        """The filters of list_runs have indexes to use, and events carry no index that no
        query reads (each one is paid for by every event written)."""
        store = SQLiteStore(tmp_path / "i.db")
        names = {
            r[0] for r in store._db().execute("SELECT name FROM sqlite_master WHERE type = 'index'")
        }
        assert {"runs_started", "runs_name", "runs_status", "events_errors"} <= names
        events = {
            r[0]
            for r in store._db().execute(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'events'"
            )
        }
        assert events == {"sqlite_autoindex_events_1", "events_errors"}
        store.close()

    def test_the_boundary_filter_searches_each_runs_events_by_its_key(self, tmp_path: Path) -> None:
        """``--boundary`` (an exact name, or a bare name as the suffix after ``:``) looks up
        a run's events by the primary key: the plan for which ``events_boundary`` was made
        never used it, and it is gone."""
        store = SQLiteStore(tmp_path / "b.db")
        store.create_run(Run(id="r1", started_at=1.0))
        sql, params = runs_query(RunQuery(boundary="lookup"), ph="?", tag_clause="", tag_path=str)
        plan = " | ".join(
            r[-1]
            for r in store._db().execute("EXPLAIN QUERY PLAN SELECT id FROM runs" + sql, params)
        )
        assert "SEARCH e USING INDEX sqlite_autoindex_events_1 (run_id=?)" in plan, plan
        assert "SCAN e" not in plan, plan
        store.close()

    def test_an_older_store_loses_the_unread_boundary_index(self, tmp_path: Path) -> None:
        """A database made before m005 has ``events_boundary``; opening it drops the index,
        keeps the runs, and ``--boundary`` still finds them."""
        path = tmp_path / "m004.db"
        sqlite_before(path, 4).close()
        before = sqlite3.connect(path)
        assert before.execute(
            "SELECT 1 FROM sqlite_master WHERE name = 'events_boundary'"
        ).fetchone()
        before.close()
        store = SQLiteStore(path)
        assert store.migrations() == ALL
        assert (
            store._db()
            .execute("SELECT 1 FROM sqlite_master WHERE name = 'events_boundary'")
            .fetchone()
            is None
        )
        import replayable as rp

        with rp.record(store, name="after") as run:
            rp.boundary(kind="tool", name="mod:lookup")(lambda q: q)("x")
        assert [r.id for r in store.list_runs(RunQuery(boundary="lookup"))] == [run.id]
        store.close()

    def test_a_lookup_by_id_searches_the_primary_key(self, tmp_path: Path) -> None:
        """Finding a run or a check by its id (every replay does) is an index search, not a
        scan of the table: a store with many runs replays as fast as one with few."""
        store = SQLiteStore(tmp_path / "plan.db")
        store.create_run(Run(id="r1", started_at=1.0))
        with sqlite3.connect(tmp_path / "plan.db") as db:
            for sql in (_SQL.get_run[0], _SQL.get_check[0]):
                plan = " ".join(r[-1] for r in db.execute("EXPLAIN QUERY PLAN " + sql, ("r1",)))
                assert "USING INDEX" in plan, plan
                assert "SCAN" not in plan, plan
        store.close()

    def test_wal_mode(self, tmp_path: Path) -> None:
        """The store runs in WAL mode, so readers never block the writer."""
        store = SQLiteStore(tmp_path / "w.db")
        assert store._db().execute("PRAGMA journal_mode").fetchone()[0] == "wal"


class TestPageSize:
    def test_a_new_store_has_16_kb_pages(self, tmp_path: Path) -> None:
        """A database the store creates gets 16 KB pages, so events of a few KB share a page."""
        store = SQLiteStore(tmp_path / "new.db")
        store.create_run(Run(id="r1", started_at=1.0))
        store.close()
        with sqlite3.connect(tmp_path / "new.db") as db:
            assert db.execute("PRAGMA page_size").fetchone()[0] == PAGE_SIZE == 16_384

    def test_a_store_made_with_4_kb_pages_keeps_them_and_its_runs_replay(
        self, tmp_path: Path
    ) -> None:
        """A database created with SQLite's default 4 KB pages is opened as it is (no
        migration): its pages stay 4 KB and a run recorded into it reads back, verifies and
        replays."""
        import replayable as rp

        path = tmp_path / "old.db"
        with sqlite3.connect(path) as db:
            db.execute("PRAGMA page_size=4096")
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("CREATE TABLE t (x)")
        store = SQLiteStore(path)
        step = rp.boundary(kind="tool", name="t:pages")(lambda i: {"i": i, "pad": "x" * 3000})
        with rp.record(store, name="pages") as run:
            for i in range(20):
                step(i)
        with rp.replay(run.id, store=store):
            assert [step(i)["i"] for i in range(20)] == list(range(20))
        stored = store.get_run(run.id)
        assert stored is not None
        assert stored.event_count == 20
        assert verify_run(stored, store.iter_events(run.id), key=b"").ok
        store.close()
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA page_size").fetchone()[0] == 4096

    @pytest.mark.parametrize("page", [4096, PAGE_SIZE])
    def test_wal_checkpoint_thresholds_are_bytes_whatever_the_page_size(
        self, tmp_path: Path, page: int
    ) -> None:
        """The WAL checkpoints itself after the same number of bytes in a database with 4 KB
        pages as in one with 16 KB pages (the thresholds are counted in the store's pages)."""
        path = tmp_path / f"p{page}.db"
        with sqlite3.connect(path) as db:
            db.execute(f"PRAGMA page_size={page}")
            db.execute("PRAGMA journal_mode=WAL")
        store = SQLiteStore(path)
        pages = store._db().execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        assert pages * page == AUTOCHECKPOINT_BYTES
        store.write_batch([Run(id="r1", started_at=1.0)], [], [], [])
        assert store._write_conn is not None
        backstop = store._write_conn.execute("PRAGMA wal_autocheckpoint").fetchone()[0]
        assert backstop * page == BACKSTOP_BYTES
        store.close()


class TestUnwritablePlace:
    def test_opening_never_raises_the_first_operation_does(self, tmp_path: Path) -> None:
        """A path that cannot be created opens fine and raises StoreUnavailable on use."""
        blocker = tmp_path / "a-file"
        blocker.write_text("not a directory")
        store = SQLiteStore(blocker / "traces.db")
        with pytest.raises(StoreUnavailable, match="cannot open SQLite store"):
            store.create_run(Run(id="x"))
        with pytest.raises(StoreUnavailable):
            store.list_runs()


class TestClose:
    def test_close_stops_the_writer_before_its_connection_goes(self, tmp_path: Path) -> None:
        """Closing a store first lets its background writer finish: the run is written and
        the writer's thread is gone, so no connection is closed under a write."""
        import replayable as rp
        from replayable import _writer

        store = SQLiteStore(tmp_path / "close.db")
        with rp.record(store) as run:
            rp.boundary(kind="tool", name="t:close")(lambda: 1)()
        writer = _writer.writer_for(store)
        store.close()
        assert not writer._thread.is_alive()
        assert store not in _writer._WRITERS
        again = SQLiteStore(tmp_path / "close.db")
        assert again.get_run(run.id).event_count == 1
        again.close()


class TestBatches:
    def test_a_run_created_and_finished_in_one_batch_is_one_finished_row(
        self, tmp_path: Path
    ) -> None:
        """write_batch inserts a run that is also being finished with its final state, and
        finishes a run created earlier, all in one transaction."""
        store = SQLiteStore(tmp_path / "batch.db")
        earlier = Run(id="earlier", started_at=1.0)
        store.write_batch([earlier], [], [], [])
        both = Run(
            id="both", started_at=2.0, status="ok", ended_at=3.0, head_hash="h", event_count=0
        )
        earlier.status, earlier.ended_at = "error", 4.0
        store.write_batch([both], [], [], [both, earlier])
        assert [(r.id, r.status, r.ended_at) for r in store.list_runs()] == [
            ("both", "ok", 3.0),
            ("earlier", "error", 4.0),
        ]
        store.close()

    def test_a_refused_batch_leaves_nothing_behind(self, tmp_path: Path) -> None:
        """All or nothing: a batch whose run id is already there writes none of its runs."""
        store = SQLiteStore(tmp_path / "atomic.db")
        store.write_batch([Run(id="taken", started_at=1.0)], [], [], [])
        with pytest.raises(sqlite3.IntegrityError):
            store.write_batch(
                [Run(id="new", started_at=2.0), Run(id="taken", started_at=3.0)], [], [], []
            )
        assert [r.id for r in store.list_runs()] == ["taken"]
        store.close()

    @pytest.mark.parametrize(
        "count",
        [
            0,
            1,
            2,
            ROWS_PER_INSERT - 1,
            ROWS_PER_INSERT,
            ROWS_PER_INSERT + 1,
            2 * ROWS_PER_INSERT + 3,
        ],
    )
    def test_rows_many_to_a_statement_read_back_exactly(self, tmp_path: Path, count: int) -> None:
        """Event rows go in several to an INSERT: every row, every column, comes back as written
        whatever the batch's size against the rows a statement carries."""
        store = SQLiteStore(tmp_path / "many.db")
        store.write_batch([Run(id="many", started_at=1.0)], [], [], [])
        rows = [
            EventRow(
                "many",
                seq,
                seq,
                f"t:x/{seq}",
                None if seq % 3 else seq - 1,
                "t:x",
                "tool",
                f"k{seq}",
                f'{{"i":{seq}}}',
                f'"out {seq}"',
                None if seq % 5 else '{"type":"E"}',
                f'{{"n":{seq}}}',
                1.5 + seq / 7,
                10 * seq,
                f"h{seq}",
            )
            for seq in range(count)
        ]
        store.write_batch([], rows, [], [])
        with sqlite3.connect(tmp_path / "many.db") as db:
            got = db.execute("SELECT * FROM events ORDER BY seq").fetchall()
        assert [EventRow._make(r) for r in got] == rows
        store.close()

    def test_a_duplicate_row_in_a_full_statement_writes_none_of_the_batch(
        self, tmp_path: Path
    ) -> None:
        """All or nothing holds for rows inserted many to a statement: a (run, seq) already
        there fails the batch and leaves no row of it behind."""
        store = SQLiteStore(tmp_path / "dup.db")
        store.write_batch([Run(id="dup", started_at=1.0)], [], [], [])
        row = EventRow(
            "dup", 5, 0, "a/0", None, "a", "tool", "k", "1", "2", None, "{}", 1.0, 1, "h"
        )
        store.write_batch([], [row], [], [])
        batch = [row._replace(seq=100 + i, chain_seq=1 + i) for i in range(ROWS_PER_INSERT * 2)]
        batch[ROWS_PER_INSERT + 7] = row
        with pytest.raises(sqlite3.IntegrityError):
            store.write_batch([], batch, [], [])
        with sqlite3.connect(tmp_path / "dup.db") as db:
            assert db.execute("SELECT seq FROM events").fetchall() == [(5,)]
        store.close()

    def test_batch_commits_leave_the_wal_checkpoint_to_the_writers_upkeep(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Runs ended on the agent's thread never checkpoint (so never pay its fsync): their
        pages reach the database file when the background writer's upkeep runs."""
        import replayable as rp
        from replayable.store import sqlite as sqlite_store

        monkeypatch.setattr(sqlite_store, "CHECKPOINT_S", 3600.0)
        path = tmp_path / "upkeep.db"
        store = SQLiteStore(path)
        step = rp.boundary(kind="tool", name="t:upkeep")(lambda i: {"i": i, "pad": "x" * 500})
        with rp.record(store):
            step(0)
        before = path.stat().st_size
        for i in range(200):
            with rp.record(store, name="short"):
                step(i)
        rp.flush()  # the file is read behind replayable's back
        assert path.stat().st_size == before
        monkeypatch.setattr(sqlite_store, "CHECKPOINT_S", 0.0)
        store.housekeep()
        assert path.stat().st_size > before
        assert len(store.list_runs(RunQuery(name="short", limit=500))) == 200
        store.close()
