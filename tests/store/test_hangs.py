"""A store that hangs never holds the agent: a frozen PostgreSQL (its processes SIGSTOPped) and
an SQLite file locked by another process cost the agent a bounded delay (opening the store) and at
most one warning; the run's end only hands off; the run is written once the store answers again."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import replayable as rp
from replayable._writer import writer_for
from replayable.store import open_store

PGBIN = Path("/usr/lib/postgresql/15/bin")
BOUND_S = 2.5  # the agent's delay at a hung store: opening it (0.5 s), with slack
END_S = 1.0  # a run's end at a hung store: a hand-off, with slack


@rp.boundary(kind="tool")
def double(x: int) -> int:
    return 2 * x


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _server_pids(postmaster: int) -> list[int]:
    """The postmaster and every process it started (backends, checkpointer, ...)."""
    pids = [postmaster]
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == postmaster:
            pids.append(int(stat.parent.name))
    return pids


@pytest.fixture(scope="module")
def own_postgres() -> Iterator[tuple[str, int]]:
    """A PostgreSQL server of this test's own on 127.0.0.1 (never the shared one): its URL
    and postmaster pid."""
    data = Path(tempfile.mkdtemp(prefix="replayable-frozen-pg."))
    as_pg: list[str] = []
    if os.getuid() == 0:
        shutil.chown(data, "postgres")
        as_pg = ["runuser", "-u", "postgres", "--"]
    port = _free_port()
    subprocess.run(
        [*as_pg, str(PGBIN / "initdb"), "-D", str(data), "-A", "trust", "-U", "postgres"],
        check=True,
        capture_output=True,
    )
    opts = f"-c listen_addresses=127.0.0.1 -p {port} -k {data} -c fsync=off"
    ctl = [*as_pg, str(PGBIN / "pg_ctl"), "-D", str(data), "-l", str(data / "log")]
    subprocess.run([*ctl, "-w", "-o", opts, "start"], check=True, capture_output=True)
    pid = int((data / "postmaster.pid").read_text().split()[0])
    try:
        yield f"postgresql://postgres@127.0.0.1:{port}/postgres", pid
    finally:
        for p in _server_pids(pid):
            with contextlib.suppress(ProcessLookupError):
                os.kill(p, signal.SIGCONT)
        subprocess.run([*ctl, "-m", "immediate", "stop"], check=False, capture_output=True)
        shutil.rmtree(data, ignore_errors=True)


def _timed_run(store: object) -> tuple[float, rp.Run]:
    t0 = time.monotonic()
    with rp.record(store=store, name="during") as run:  # type: ignore[arg-type]
        assert double(21) == 42
    return time.monotonic() - t0, run


class TestHungStores:
    def test_frozen_postgres_holds_the_agent_a_bounded_time(
        self, own_postgres: tuple[str, int], caplog: pytest.LogCaptureFixture
    ) -> None:
        """Every server process SIGSTOPped mid-recording: the agent's runs end at once, at most
        one warning is logged, and the runs arrive once the server resumes."""
        url, postmaster = own_postgres
        store = open_store(url)
        with rp.record(store=store, name="before"):
            double(1)
        caplog.set_level(logging.WARNING, logger="replayable")
        frozen = _server_pids(postmaster)
        for p in frozen:
            os.kill(p, signal.SIGSTOP)
        try:
            elapsed, run = _timed_run(store)
            assert elapsed < END_S
            elapsed_again, _ = _timed_run(store)
            assert elapsed_again < END_S
        finally:
            for p in frozen:
                os.kill(p, signal.SIGCONT)
        warnings = [r for r in caplog.records if r.name == "replayable"]
        assert len(warnings) <= 1
        writer_for(store).flush(timeout=60)
        assert store.get_run(run.id).status == "ok"

    def test_sqlite_locked_by_another_process_holds_the_agent_a_bounded_time(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Another process holds an exclusive lock on the file: open_store and the run cost
        the agent under the bound; the run is written after the lock is released."""
        db = tmp_path / "locked.db"
        locker = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import sqlite3, sys, time\n"
                f"c = sqlite3.connect({str(db)!r}, isolation_level=None)\n"
                "c.execute('BEGIN EXCLUSIVE')\n"
                "print('locked', flush=True)\n"
                "time.sleep(60)\n",
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        try:
            assert locker.stdout is not None
            assert locker.stdout.readline().strip() == "locked"
            caplog.set_level(logging.WARNING, logger="replayable")
            t0 = time.monotonic()
            store = open_store(db)
            elapsed, run = _timed_run(store)
            assert time.monotonic() - t0 < BOUND_S
            assert elapsed < END_S
        finally:
            locker.kill()
            locker.wait()
            if locker.stdout is not None:
                locker.stdout.close()
        assert len([r for r in caplog.records if r.name == "replayable"]) <= 1
        writer_for(store).flush(timeout=60)
        assert store.get_run(run.id).status == "ok"
