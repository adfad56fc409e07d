"""Reliability: crashes, stores that go away, and many writers at once."""

from __future__ import annotations

import contextlib
import logging
import signal
import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

import replayable as rp
from replayable import _writer
from replayable._tree import build_tree
from replayable._writer import writer_for
from replayable.errors import RunNotFound, StoreUnavailable
from replayable.store import open_store
from replayable.store.base import RunQuery
from replayable.store.postgres import PostgresStore
from replayable.store.sqlite import SQLiteStore
from replayable.trace import Run, verify_run


def python(code: str, *args: str, **kw: object) -> subprocess.Popen[str]:
    """Start a Python child running ``code`` with ``args``."""
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code), *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,  # type: ignore[arg-type]
    )


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A URL for each writable backend, empty."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return str(request.getfixturevalue("pg_url"))


def warnings_from_replayable(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "replayable" and r.levelno >= logging.WARNING
    ]


KILLED_AGENT = """
    import sys, time
    import replayable as rp
    from replayable._writer import writer_for

    url = sys.argv[1]

    @rp.boundary(kind="tool")
    def step(i):
        return {"i": i}

    @rp.boundary(kind="agent")
    def agent():
        for i in range(50):
            step(i)
        writer_for(rp.open_store(url)).flush()
        print("flushed", flush=True)
        time.sleep(60)

    with rp.record(store=url, name="killed") as run:
        print(run.id, flush=True)
        agent()
"""


class TestKilledMidRun:
    def test_sigkill_leaves_flushed_events_and_an_incomplete_run(self, store_url: str) -> None:
        """After SIGKILL: flushed events readable, run incomplete, parent rebuilt with children."""
        child = python(KILLED_AGENT, store_url)
        assert child.stdout is not None
        run_id = child.stdout.readline().strip()
        assert child.stdout.readline().strip() == "flushed"
        child.send_signal(signal.SIGKILL)
        child.communicate(timeout=30)
        store = open_store(store_url)
        run = store.get_run(run_id)
        assert run.status == "incomplete"
        events = list(store.iter_events(run_id))
        assert [e.seq for e in events] == list(range(1, 51))
        (root,) = build_tree(events)
        assert root.incomplete
        assert root.boundary == "__main__:agent"
        assert len(root.children) == 50
        assert verify_run(run, events).ok
        if isinstance(store, SQLiteStore):
            assert store._db().execute("PRAGMA integrity_check").fetchone() == ("ok",)


@rp.boundary(kind="tool")
def double(x: int) -> int:
    return 2 * x


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class TestStoreUnavailable:
    def test_postgres_down_agent_unaffected_one_warning(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """No server listening: calls return real results, one warning, nothing raised."""
        store = PostgresStore(f"postgresql://postgres@127.0.0.1:{free_port()}/x", timeout=0.3)
        try:
            with caplog.at_level(logging.WARNING):
                with rp.record(store=store):
                    assert [double(i) for i in range(20)] == [2 * i for i in range(20)]
                assert rp.flush() is False  # the writer tried, and keeps the events
            assert len(warnings_from_replayable(caplog)) == 1
            assert "cannot write to store" in warnings_from_replayable(caplog)[0]
        finally:
            _writer.stop_writer(store)
            store.close()

    def test_sqlite_path_unusable_agent_unaffected(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A store path that cannot be created costs the agent one warning."""
        blocker = tmp_path / "file"
        blocker.write_text("x")
        with caplog.at_level(logging.WARNING):
            with rp.record(store=blocker / "t.db"):
                assert double(4) == 8
            assert rp.flush() is False
        assert len(warnings_from_replayable(caplog)) == 1

    def test_buffer_is_bounded(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
    ) -> None:
        """While the store is down, at most MAX_PENDING events are kept for retry."""
        monkeypatch.setattr(_writer, "MAX_PENDING", 50)
        blocker = tmp_path / "file"
        blocker.write_text("x")
        store = open_store(blocker / "t.db")
        with caplog.at_level(logging.WARNING), rp.record(store=store):
            for i in range(500):
                double(i)
        writer = writer_for(store)
        assert writer.flush() is False
        assert 0 < len(writer._held.rows) <= 50
        assert all(isinstance(row[1], int) for row in writer._held.rows)

    def test_sqlite_on_a_full_filesystem(self, tmp_path: Path) -> None:
        """Writes failing with a full disk: the agent finishes, one warning, file intact."""
        db = tmp_path / "full.db"
        child = python(
            """
            import logging, resource, signal, sys
            import replayable as rp
            logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
            store = rp.open_store(sys.argv[1])
            store.list_runs()
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
            resource.setrlimit(resource.RLIMIT_FSIZE, (128 * 1024, hard))

            @rp.boundary(kind="tool")
            def big(i):
                return "x" * 1024

            with rp.record(store=store) as run:
                results = [big(i) for i in range(1000)]
            assert results == ["x" * 1024] * 1000
            print("agent ok", flush=True)
            """,
            str(db),
        )
        out, err = child.communicate(timeout=60)
        assert child.returncode == 0, err
        assert out.strip() == "agent ok"
        warnings = [line for line in err.splitlines() if line.startswith("replayable:")]
        assert len(warnings) == 1, err
        assert "full" in warnings[0] or "disk" in warnings[0] or "I/O" in warnings[0]
        conn = sqlite3.connect(db)
        assert conn.execute("PRAGMA integrity_check").fetchone() == ("ok",)
        conn.close()


class Proxy:
    """A TCP forwarder to PostgreSQL that can be cut and restored, to simulate an outage."""

    def __init__(self, target: tuple[str, int]) -> None:
        self.target = target
        self.port = free_port()
        self._conns: list[socket.socket] = []
        self._server: socket.socket | None = None
        self._lock = threading.Lock()

    def start(self) -> None:
        self._server = socket.create_server(("127.0.0.1", self.port))
        threading.Thread(target=self._accept, args=(self._server,), daemon=True).start()

    def _accept(self, server: socket.socket) -> None:
        while True:
            try:
                client, _ = server.accept()
            except OSError:
                return
            upstream = socket.create_connection(self.target)
            with self._lock:  # a connection accepted as the proxy stops is cut with the rest
                cut = server is not self._server
                if not cut:
                    self._conns += [client, upstream]
            if cut:
                for conn in (client, upstream):
                    conn.close()
                return
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        for s in (src, dst):
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)

    def stop(self) -> None:
        assert self._server is not None
        with self._lock:
            server, self._server = self._server, None
            conns, self._conns = self._conns, []
        with contextlib.suppress(OSError):
            server.shutdown(socket.SHUT_RDWR)  # wakes an accept() blocked on it (close does not)
        server.close()
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)
            conn.close()


@pytest.fixture
def proxy(pg_url: str) -> Iterator[tuple[Proxy, str]]:
    from urllib.parse import urlsplit

    parts = urlsplit(pg_url)
    p = Proxy((parts.hostname or "127.0.0.1", parts.port or 5432))
    p.start()
    yield p, pg_url.replace(f":{parts.port}/", f":{p.port}/")
    p.stop()


def arrived(store: PostgresStore, run_id: str, events: int, within: float = 20.0) -> Run:
    """The run once it is stored finished with ``events`` events: after an outage the writer
    puts in what it held when the store answers again, so it arrives a little later."""
    deadline = time.monotonic() + within
    while True:
        # not there yet, or the pool not connected again yet for this read
        with contextlib.suppress(RunNotFound, StoreUnavailable):
            run = store.get_run(run_id)
            if run.status != "running" and len(list(store.iter_events(run_id))) == events:
                return run
        assert time.monotonic() < deadline, f"run {run_id} did not arrive within {within} s"
        time.sleep(0.05)


def recovered(store: PostgresStore, caplog: pytest.LogCaptureFixture) -> None:
    """Wait for the writer to say the store is writable again (it does just after the commit
    a reader may already see), then check it said so once, after one "cannot write"."""
    deadline = time.monotonic() + 5
    while writer_for(store).failing:
        assert time.monotonic() < deadline, "the writer still says the store is down"
        time.sleep(0.01)
    warnings = warnings_from_replayable(caplog)
    assert sum("cannot write" in w for w in warnings) == 1
    assert sum("writable again" in w for w in warnings) == 1


class TestPostgresOutage:
    def test_events_recorded_during_an_outage_arrive_after_it(
        self, proxy: tuple[Proxy, str], caplog: pytest.LogCaptureFixture
    ) -> None:
        """The server goes away mid-run and comes back: every event stored once, one warning."""
        p, url = proxy
        store = PostgresStore(url, timeout=0.5)
        try:
            with caplog.at_level(logging.WARNING), rp.record(store=store) as run:
                assert [double(i) for i in range(10)] == [2 * i for i in range(10)]
                writer_for(store).flush()
                p.stop()
                assert [double(i) for i in range(10, 20)] == [2 * i for i in range(10, 20)]
                writer_for(store).flush()
                p.start()
            stored = arrived(store, run.id, 20)
            events = list(store.iter_events(run.id))
            assert [e.seq for e in events] == list(range(20))
            assert stored.status == "ok"
            assert verify_run(stored, events).ok
            recovered(store, caplog)
        finally:
            _writer.stop_writer(store)
            store.close()

    def test_a_run_recorded_in_an_outage_goes_in_with_nothing_after_it(
        self, proxy: tuple[Proxy, str], caplog: pytest.LogCaptureFixture
    ) -> None:
        """A whole run recorded while the server is away (its start, events and end held),
        then nothing more: the idle writer tries again by itself, and once the server is back
        the run is there, finished and verifying, with no later event to carry it."""
        p, url = proxy
        store = PostgresStore(url, timeout=0.5)
        try:
            assert store.list_runs() == []  # opened (migrated) while the server answers
            p.stop()
            with caplog.at_level(logging.WARNING), rp.record(store=store, name="offline") as run:
                assert [double(i) for i in range(5)] == [0, 2, 4, 6, 8]
            refused = time.monotonic() + 10
            while not writer_for(store).failing:  # the writer's try at the run's end failed
                assert time.monotonic() < refused, "the writer never found the store down"
                time.sleep(0.01)
            time.sleep(1.5)  # a timed retry or two, refused while the server is still away
            p.start()
            stored = arrived(store, run.id, 5)
            events = list(store.iter_events(run.id))
            assert (stored.name, stored.status) == ("offline", "ok")
            assert [e.output for e in events] == [0, 2, 4, 6, 8]
            assert verify_run(stored, events).ok
            recovered(store, caplog)
        finally:
            _writer.stop_writer(store)
            store.close()

    def test_closing_a_store_that_is_down_does_not_wait_on_it(
        self, proxy: tuple[Proxy, str]
    ) -> None:
        """Stopping the writer while the server is away and work is held returns at once: no
        last try that would wait out the pool's timeout (3 s here) on a dead server."""
        p, url = proxy
        store = PostgresStore(url, timeout=3.0)
        try:
            store.list_runs()
            writer = writer_for(store)
            writer._retry_s = 3600.0  # no timed retry in flight when it stops
            p.stop()
            with rp.record(store=store, name="down-at-close"):
                double(1)
            refused = time.monotonic() + 15
            while not writer.failing:
                assert time.monotonic() < refused, "the writer never found the store down"
                time.sleep(0.01)
            started = time.monotonic()
            _writer.stop_writer(store)
            assert time.monotonic() - started < 1.5
            assert not writer._thread.is_alive()
        finally:
            p.start()
            _writer.stop_writer(store)
            store.close()


WRITER = """
    import sys
    import replayable as rp

    @rp.boundary(kind="tool")
    def step(i):
        return {"i": i}

    with rp.record(store=sys.argv[1], name=sys.argv[2]):
        for i in range(10_000):
            step(i)
"""


class TestConcurrentWriters:
    def test_eight_processes_ten_thousand_events_each(self, store_url: str) -> None:
        """8 recording processes into one store: every event exactly once, order intact."""
        children = [python(WRITER, store_url, f"proc-{i}") for i in range(8)]
        for child in children:
            _, err = child.communicate(timeout=240)
            assert child.returncode == 0, err
        store = open_store(store_url)
        runs = store.list_runs(RunQuery(limit=100))
        assert sorted(r.name or "" for r in runs) == [f"proc-{i}" for i in range(8)]
        for run in runs:
            assert (run.status, run.event_count) == ("ok", 10_000)
            events = list(store.iter_events(run.id))
            assert [e.seq for e in events] == list(range(10_000))
            assert [e.output["i"] for e in events] == list(range(10_000))
            assert verify_run(run, events).ok
