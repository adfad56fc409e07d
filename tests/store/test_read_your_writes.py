"""A run's ``with`` block hands the run to the writer and returns; every read through replayable in
this process then sees it finished, with every event, and it verifies (read your writes); after
``rp.flush()`` so do another connection, another process and a forked child; ``strict`` waits and
raises a store error at exit; a failing store never holds a read."""

from __future__ import annotations

import os
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import psycopg
import pytest

import replayable as rp
from replayable import _writer
from replayable._writer import stop_writer
from replayable.store.base import RunQuery, Store
from replayable.store.postgres import PostgresStore
from replayable.store.sqlite import SQLiteStore
from replayable.trace import SIGNING_KEY_ENV, verify_run, verify_trace, write_trace


@rp.boundary(kind="tool")
def double(x: int) -> dict[str, int]:
    """One recorded step."""
    return {"x": x, "y": 2 * x}


def _drop_events(store: Store) -> None:
    """Make the store reject every event write (its ``events`` table is gone)."""
    if isinstance(store, SQLiteStore):
        store.list_runs()  # creates the schema
        store._run(lambda db: db.execute("DROP TABLE events"))
    else:
        assert isinstance(store, PostgresStore)
        store.list_runs()
        store._use(lambda c: c.execute("DROP TABLE events"))


def _read_elsewhere(store: Store, run_id: str) -> tuple[str, int, str | None, int]:
    """(status, event_count, head_hash, events stored) through a connection of the test's own,
    not the store's (after ``rp.flush()``: the documented contract for reads behind
    replayable's back)."""
    rp.flush()
    run_sql = "SELECT status, event_count, head_hash FROM runs WHERE id = {p}"
    events_sql = "SELECT count(*) FROM events WHERE run_id = {p}"
    if isinstance(store, SQLiteStore):
        conn = sqlite3.connect(store.path)
        try:
            status, count, head = conn.execute(run_sql.format(p="?"), (run_id,)).fetchone()
            (stored,) = conn.execute(events_sql.format(p="?"), (run_id,)).fetchone()
        finally:
            conn.close()
    else:
        assert isinstance(store, PostgresStore)
        with psycopg.connect(store.url) as pg:
            row = pg.execute(run_sql.format(p="%s"), (run_id,)).fetchone()
            assert row is not None
            status, count, head = row
            counted = pg.execute(events_sql.format(p="%s"), (run_id,)).fetchone()
            assert counted is not None
            (stored,) = counted
    return status, count, head, stored


def test_a_finished_run_is_read_back_right_after_its_block(backend: Store) -> None:
    """Right after the block exits, get_run, iter_events and list_runs see the whole run."""
    with rp.record(store=backend, name="ryw") as run:
        for i in range(300):
            double(i)
    got = backend.get_run(run.id)
    assert (got.status, got.event_count) == ("ok", 300)
    events = list(backend.iter_events(run.id))
    assert [e.output["y"] for e in events] == [2 * i for i in range(300)]
    assert verify_run(got, events).ok
    assert [r.id for r in backend.list_runs(RunQuery(name="ryw"))] == [run.id]


def test_runs_in_a_loop_are_each_readable_at_once(backend: Store) -> None:
    """Many short runs, each read back the moment its block exits, are all complete."""
    for i in range(20):
        with rp.record(store=backend) as run:
            double(i)
        events = list(backend.iter_events(run.id))
        assert [e.output for e in events] == [{"x": i, "y": 2 * i}]
        assert backend.get_run(run.id).status == "ok"


def test_a_run_still_open_is_read_with_every_call_it_finished(tmp_path: Path) -> None:
    """Inside the block, a read through the store sees every call finished so far (the
    background writer has not had its turn yet: the read writes what is queued first)."""
    store = SQLiteStore(tmp_path / "open.db")
    try:
        with rp.record(store=store, name="open") as run:
            for i in range(5):
                double(i)
                assert [e.output["x"] for e in run.events()] == list(range(i + 1))
            assert store.get_run(run.id).status == "running"
    finally:
        store.close()


def test_another_connection_reads_the_whole_run_right_after_the_block(backend: Store) -> None:
    """Short runs back to back, each read after ``rp.flush()`` through a connection that is
    not the store's (sqlite3, psycopg): finished, sealed, every event there."""
    for i in range(1, 8):
        with rp.record(store=backend, name="elsewhere") as run:
            for k in range(i):
                double(k)
        assert _read_elsewhere(backend, run.id) == ("ok", i, run.head_hash, i)
        assert run.head_hash is not None


def test_the_returned_run_is_sealed_and_exports_a_verifying_trace(
    backend: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The Run the block gave back carries its event count, sealed head hash and signature
    at once; its events and a trace file written right away verify under the key."""
    monkeypatch.setenv(SIGNING_KEY_ENV, "run-end-key")
    with rp.record(store=backend, name="sealed") as run:
        for i in range(3):
            double(i)
    assert run.event_count == 3
    assert run.head_hash is not None
    assert run.signature is not None
    events = list(run.events())
    assert verify_run(run, events, key=b"run-end-key").ok
    path = write_trace(run, events, tmp_path / "sealed.jsonl")
    assert verify_trace(path, key=b"run-end-key").ok


def test_a_process_started_right_after_the_block_exports_the_run(tmp_path: Path) -> None:
    """The CLI in a new process, started once ``rp.flush()`` returns, exports the run whole
    and the file verifies."""
    db = tmp_path / "cli.db"
    store = SQLiteStore(db)
    try:
        with rp.record(store=store, name="for-the-cli") as run:
            for i in range(4):
                double(i)
        out = tmp_path / "exported.jsonl"
        rp.flush()
        cli = [sys.executable, "-m", "replayable.cli"]
        proc = subprocess.run(
            [*cli, "export", run.id, "--store", str(db), "-o", str(out)],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        result = verify_trace(out)
        assert result.ok
        assert len(out.read_text().splitlines()) == 1 + 4
    finally:
        store.close()


def test_a_child_forked_right_after_the_block_reads_the_run(tmp_path: Path) -> None:
    """A child forked once ``rp.flush()`` returns opens the file and finds the run finished
    with its events (the child has no writer of its own to wait for)."""
    store = SQLiteStore(tmp_path / "fork.db")
    try:
        with rp.record(store=store) as run:
            double(1)
            double(2)
        rp.flush()
        pid = os.fork()
        if pid == 0:  # the child: exit status says what it read
            code = 1
            try:
                code = 0 if _read_elsewhere(store, run.id)[::3] == ("ok", 2) else 3
            finally:
                os._exit(code)
        _, status = os.waitpid(pid, 0)
        assert os.waitstatus_to_exitcode(status) == 0
    finally:
        store.close()


def test_short_runs_on_many_threads_beside_a_long_run_all_read_back_whole(
    backend: Store,
) -> None:
    """Six threads record short runs while another records a long one into the same store:
    each short run is whole the moment its block exits, and every run verifies."""
    short: list[rp.Run] = []
    errors: list[BaseException] = []
    go = threading.Event()

    def shorts(n: int) -> None:
        try:
            go.wait()
            for i in range(n):
                with rp.record(store=backend, name="short") as run:
                    double(i)
                    double(i + 1)
                assert _read_elsewhere(backend, run.id) == ("ok", 2, run.head_hash, 2)
                short.append(run)
        except BaseException as exc:
            errors.append(exc)

    def long() -> None:
        try:
            go.wait()
            with rp.record(store=backend, name="long"):
                for i in range(1500):
                    double(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=shorts, args=(15,)) for _ in range(6)]
    threads.append(threading.Thread(target=long))
    for t in threads:
        t.start()
    go.set()
    for t in threads:
        t.join(120)
    assert errors == []
    assert len(short) == 6 * 15
    (long_run,) = backend.list_runs(RunQuery(name="long"))
    assert (long_run.status, long_run.event_count) == ("ok", 1500)
    for run in [*short[:10], long_run]:
        assert verify_run(backend.get_run(run.id), backend.iter_events(run.id)).ok


def test_strict_recording_raises_the_store_error_at_exit(backend: Store) -> None:
    """strict=True still waits for the writer at the run's end and raises its store error."""
    _drop_events(backend)
    try:
        with pytest.raises(rp.StoreUnavailable), rp.record(store=backend, strict=True):
            double(1)
    finally:
        stop_writer(backend)  # it keeps the rejected rows for retry: not past the store's close


def test_a_failing_store_does_not_hold_a_read(backend: Store) -> None:
    """Fail-open: a read after a run whose events the store rejects still answers."""
    _drop_events(backend)
    try:
        with rp.record(store=backend) as run:
            double(1)
        assert backend.get_run(run.id).id == run.id
    finally:
        stop_writer(backend)


HOLD_LOCK = """
import sqlite3, sys, time
db = sqlite3.connect(sys.argv[1], isolation_level=None)
db.execute("BEGIN IMMEDIATE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
db.execute("ROLLBACK")
"""


def _hold_lock(db: Path, seconds: float) -> subprocess.Popen[str]:
    """Another process holding the database's write lock for ``seconds`` (started, locked)."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(db), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert holder.stdout is not None
    assert holder.stdout.readline().strip() == "locked"
    return holder


class TestTheRunEndHandsOff:
    """The end of a run queues it for the writer and returns; the writer stores it later."""

    def test_a_sqlite_lock_held_by_another_process_does_not_hold_the_block(
        self, tmp_path: Path
    ) -> None:
        """Another process holds the write lock for 8 s: the block returns in under 1 s, and
        every event arrives, sealed and verifying, once the lock is released."""
        db = tmp_path / "locked.db"
        store = SQLiteStore(db)
        try:
            holder = _hold_lock(db, 8)
            t0 = time.monotonic()
            with rp.record(store=store, name="under-lock") as run:
                for i in range(20):
                    double(i)
            assert time.monotonic() - t0 < 1.0
            assert run.status == "ok"
            assert holder.wait(60) == 0
            assert holder.stdout is not None
            holder.stdout.close()
            rp.flush(timeout=60)
            assert _read_elsewhere(store, run.id) == ("ok", 20, run.head_hash, 20)
            assert verify_run(store.get_run(run.id), store.iter_events(run.id)).ok
        finally:
            store.close()

    def test_a_store_whose_writes_block_does_not_hold_short_runs(self, pg_url: str) -> None:
        """Another PostgreSQL connection locks the tables: fifty short runs still end at
        once (none waits for the writer), and all of them arrive after the lock goes."""
        store = PostgresStore(pg_url)
        try:
            store.list_runs()  # the schema, before the lock
            with psycopg.connect(pg_url) as other:
                other.execute("BEGIN")
                other.execute("LOCK TABLE runs, events IN ACCESS EXCLUSIVE MODE")
                t0 = time.monotonic()
                runs = []
                for i in range(50):
                    with rp.record(store=store, name="blocked") as run:
                        double(i)
                    runs.append(run)
                assert time.monotonic() - t0 < 1.0
                other.execute("ROLLBACK")
            rp.flush(timeout=60)
            for i, run in enumerate(runs):
                assert _read_elsewhere(store, run.id) == ("ok", 1, run.head_hash, 1)
                assert [e.output["x"] for e in run.events()] == [i]
        finally:
            stop_writer(store)
            store.close()

    def test_a_read_during_a_foreign_lock_is_not_held_for_long(self, tmp_path: Path) -> None:
        """While another process holds the lock, the run is sealed at once (the writer hashed
        it), a read gives up waiting for the stuck write after about a second (fail-open), and
        a flush with a timeout says it did not finish."""
        db = tmp_path / "hung.db"
        store = SQLiteStore(db)
        try:
            holder = _hold_lock(db, 5)
            with rp.record(store=store) as run:
                double(1)
            t0 = time.monotonic()
            assert run.head_hash is not None
            assert run.event_count == 1
            time.sleep(0.2)  # the writer is in the store, waiting for the lock
            assert [r.id for r in store.list_runs()] == []
            assert rp.flush(timeout=0.5) is False
            assert time.monotonic() - t0 < 4.0
            assert holder.wait(60) == 0
            assert holder.stdout is not None
            holder.stdout.close()
            # The write that met the lock is held for retry: a flush retries it now, instead
            # of waiting for the writer's own timer (0.5 s doubling).
            t1 = time.monotonic()
            assert rp.flush() is True
            assert time.monotonic() - t1 < 2.0
            assert store.get_run(run.id).event_count == 1
        finally:
            store.close()


class TestFlush:
    """``rp.flush`` waits for every store's pending writes."""

    def test_a_flush_retries_held_work_itself(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Work a foreign lock made the writer hold (its own retry pushed out to a minute)
        goes in with one flush once the lock is gone; a flush while it is held says False."""
        monkeypatch.setattr(_writer, "RETRY_MIN_S", 60.0)
        db = tmp_path / "held.db"
        store = SQLiteStore(db)
        try:
            holder = _hold_lock(db, 1.5)
            with rp.record(store=store) as run:
                double(1)
            assert rp.flush(timeout=0.3) is False
            assert holder.wait(60) == 0
            assert holder.stdout is not None
            holder.stdout.close()
            t0 = time.monotonic()
            assert rp.flush(timeout=20) is True
            assert time.monotonic() - t0 < 5.0
            assert _read_elsewhere(store, run.id)[::3] == ("ok", 1)
        finally:
            store.close()

    def test_flush_puts_every_store_on_disk(self, tmp_path: Path) -> None:
        """Runs into two stores, then flush: both files hold their run for any reader."""
        stores = [SQLiteStore(tmp_path / f"s{i}.db") for i in range(2)]
        try:
            ids = []
            for store in stores:
                with rp.record(store=store) as run:
                    double(3)
                ids.append(run.id)
            rp.flush()
            for store, run_id in zip(stores, ids, strict=True):
                assert _read_elsewhere(store, run_id)[::3] == ("ok", 1)
        finally:
            for store in stores:
                store.close()

    def test_strict_waits_for_the_store(self, tmp_path: Path) -> None:
        """strict=True: the run is on disk when the block exits, with no flush."""
        store = SQLiteStore(tmp_path / "strict.db")
        try:
            with rp.record(store=store, strict=True) as run:
                double(2)
            conn = sqlite3.connect(store.path)
            try:
                row = conn.execute("SELECT status FROM runs WHERE id = ?", (run.id,)).fetchone()
            finally:
                conn.close()
            assert row == ("ok",)
        finally:
            store.close()
