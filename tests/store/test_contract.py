"""The Store protocol, as every writable backend (SQLite, PostgreSQL) must honour it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from typing import Any

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import replayable as rp
from replayable.errors import RunNotFound
from replayable.store.base import RunQuery, Store, event_to_row
from replayable.store.postgres import PostgresStore
from replayable.trace import Event, Run, sign_run, verify_run


def make_run(run_id: str, **kw: Any) -> Run:
    env = {"pid": os.getpid(), "host": os.uname().nodename}
    kw.setdefault("started_at", time.time())
    return Run(id=run_id, environment=env, **kw)


def make_events(run_id: str, n: int, *, boundary: str = "mod:tool", error_at: int = -1) -> list:
    """Rows of ``n`` events chained the version-1 way (from ""; these runs are stored and
    queried here, not verified: the recorder's chains are, below)."""
    prev = ""
    rows = []
    from replayable.trace import chain_hash, event_content

    for i in range(n):
        ev = Event(
            run_id=run_id,
            seq=i,
            chain_seq=i,
            address=f"{boundary}/{i}",
            parent_seq=None,
            boundary=boundary,
            kind="tool",
            key=f"k{i}",
            input={"i": i, "text": "x" * 10},
            output={"ok": True},
            error={"type": "ValueError", "message": "boom"} if i == error_at else None,
            started_at=1000.0 + i,
            duration_ns=5,
        )
        ev.hash = chain_hash(prev, event_content(ev, 1))
        prev = ev.hash
        rows.append(event_to_row(ev))
    return rows


def finished(store: Store, run: Run, rows: list, status: str = "ok") -> Run:
    store.create_run(run)
    store.write_rows(rows)
    run.status, run.ended_at = status, run.started_at + 1
    run.event_count = len(rows)
    run.head_hash = rows[-1][-1] if rows else None
    store.finish_run(run)
    return run


class TestRunsAndEvents:
    def test_run_round_trips(self, backend: Store) -> None:
        """A created and finished run reads back with every field."""
        run = make_run("r" * 20, name="support", tags={"env": "prod"}, metadata={"a": [1]})
        finished(backend, run, make_events(run.id, 3))
        got = backend.get_run(run.id)
        assert (got.name, got.tags, got.metadata, got.status) == (
            "support",
            {"env": "prod"},
            {"a": [1]},
            "ok",
        )
        assert got.event_count == 3
        assert got.head_hash == run.head_hash
        assert got.store is backend

    def test_get_by_unique_prefix(self, backend: Store) -> None:
        """A unique id prefix finds the run; an ambiguous or unknown one raises RunNotFound."""
        backend.create_run(make_run("abc111"))
        backend.create_run(make_run("abc222"))
        assert backend.get_run("abc1").id == "abc111"
        with pytest.raises(RunNotFound, match="ambiguous"):
            backend.get_run("abc")
        with pytest.raises(RunNotFound, match="no run"):
            backend.get_run("zzz")
        with pytest.raises(RunNotFound):
            backend.get_run("abc%")

    def test_an_exact_id_wins_over_the_ids_it_prefixes(self, backend: Store) -> None:
        """A run whose id is also the prefix of other runs' ids is found by that id."""
        for run_id in ("abc", "abc1", "abc2", "abc3"):
            backend.create_run(make_run(run_id))
        assert backend.get_run("abc").id == "abc"
        with pytest.raises(RunNotFound, match="ambiguous"):
            backend.get_run("ab")

    def test_events_stream_in_seq_order(self, backend: Store) -> None:
        """Events come back in seq order even when written out of order, across batches."""
        run = make_run("run-order")
        rows = make_events(run.id, 1200)
        backend.create_run(run)
        backend.write_rows(rows[600:])
        backend.write_rows(rows[:600])
        it = backend.iter_events(run.id)
        first = next(it)
        assert first.seq == 0
        assert [e.seq for e in it] == list(range(1, 1200))

    def test_a_running_run_whose_process_died_reads_as_incomplete(self, backend: Store) -> None:
        """status 'running' with a dead recorder pid reads back as 'incomplete'."""
        dead = subprocess.run(
            [sys.executable, "-c", "import os; print(os.getpid())"],
            capture_output=True,
            text=True,
            check=True,
        )
        run = make_run("dead-run")
        run.environment["pid"] = int(dead.stdout)
        backend.create_run(run)
        backend.create_run(make_run("live-run"))
        assert backend.get_run("dead-run").status == "incomplete"
        assert backend.get_run("live-run").status == "running"
        assert [r.id for r in backend.list_runs(RunQuery(status="incomplete"))] == ["dead-run"]
        assert [r.id for r in backend.list_runs(RunQuery(status="running"))] == ["live-run"]


class TestOrder:
    def test_runs_started_at_the_same_time_list_by_id(self, backend: Store) -> None:
        """Newest first; runs with the same start time by id, descending, so every backend
        lists (and a LIMIT cuts) them alike."""
        for run_id in ["tie-b", "tie-c", "tie-a", "later"]:
            backend.create_run(make_run(run_id, started_at=2000.0 if run_id == "later" else 1000.0))
        assert [r.id for r in backend.list_runs()] == ["later", "tie-c", "tie-b", "tie-a"]
        assert [r.id for r in backend.list_runs(RunQuery(limit=2))] == ["later", "tie-c"]


class TestQueries:
    @pytest.fixture
    def populated(self, backend: Store) -> Store:
        now = time.time()
        finished(
            backend,
            make_run("q1", name="a", tags={"env": "prod"}, started_at=now - 7200),
            make_events("q1", 2, boundary="app.tools:search"),
        )
        finished(
            backend,
            make_run("q2", name="a", tags={"env": "dev"}, started_at=now - 60),
            make_events("q2", 2, boundary="app.tools:fetch", error_at=1),
        )
        finished(
            backend,
            make_run("q3", name="b", tags={"env": "prod"}, started_at=now - 30),
            make_events("q3", 1, boundary="app.llm:plan"),
            status="error",
        )
        return backend

    @pytest.mark.parametrize(
        ("query", "expected"),
        [
            (RunQuery(), ["q3", "q2", "q1"]),
            (RunQuery(name="a"), ["q2", "q1"]),
            (RunQuery(tags={"env": "prod"}), ["q3", "q1"]),
            (RunQuery(tags={"env": "prod"}, name="b"), ["q3"]),
            (RunQuery(status="error"), ["q3"]),
            (RunQuery(boundary="app.tools:search"), ["q1"]),
            (RunQuery(boundary="fetch"), ["q2"]),
            (RunQuery(boundary="etch"), []),
            (RunQuery(has_error=True), ["q3", "q2"]),
            (RunQuery(has_error=False), ["q1"]),
            (RunQuery(limit=1), ["q3"]),
        ],
    )
    def test_filters_combine(self, populated: Store, query: RunQuery, expected: list) -> None:
        """Each filter narrows the newest-first list; filters combine with AND."""
        assert [r.id for r in populated.list_runs(query)] == expected

    def test_a_status_that_no_run_can_have_is_refused(self) -> None:
        """RunQuery(status=...) takes only a run status; anything else is a ValueError
        naming them, never a query that silently matches nothing."""
        assert RunQuery(status="incomplete").status == "incomplete"
        with pytest.raises(ValueError, match="use one of running, ok, error, diverged, incomplete"):
            RunQuery(status="success")  # type: ignore[arg-type]

    def test_time_range(self, populated: Store) -> None:
        """since is inclusive, until exclusive, both on the start time."""
        now = time.time()
        assert [r.id for r in populated.list_runs(RunQuery(since=now - 3600))] == ["q3", "q2"]
        assert [r.id for r in populated.list_runs(RunQuery(until=now - 45))] == ["q2", "q1"]

    def test_retention_deletes_old_runs_and_their_events(self, populated: Store) -> None:
        """delete_runs(before=) removes older runs with their events and counts them."""
        assert populated.delete_runs(before=time.time() - 3600) == 1
        assert [r.id for r in populated.list_runs()] == ["q3", "q2"]
        assert list(populated.iter_events("q1")) == []


class TestPutRun:
    def test_put_run_is_atomic_and_idempotent(self, backend: Store) -> None:
        """A whole run goes in at once; putting it again writes nothing and returns False."""
        run = make_run("put-1", status="ok", head_hash="h", event_count=2)
        rows = make_events(run.id, 2)
        assert backend.put_run(run, rows) is True
        assert backend.put_run(run, rows) is False
        assert len(list(backend.iter_events(run.id))) == 2

    def test_put_run_failing_midway_leaves_nothing(self, backend: Store) -> None:
        """A batch with a duplicate event fails and leaves neither the run nor any event."""
        run = make_run("put-2")
        rows = make_events(run.id, 3)
        with pytest.raises(Exception):  # noqa: B017 - backend-specific integrity error
            backend.put_run(run, [*rows, rows[0]])
        with pytest.raises(RunNotFound):
            backend.get_run("put-2")
        assert list(backend.iter_events("put-2")) == []


def has_boundary_index(conn: psycopg.Connection[Any]) -> bool:
    """Whether the schema in use still has ``events_boundary`` (dropped by m005)."""
    return (
        conn.execute(
            "SELECT 1 FROM pg_indexes WHERE indexname = 'events_boundary' "
            "AND schemaname = current_schema()"
        ).fetchone()
        is not None
    )


class TestPostgresSchema:
    def test_events_carry_only_the_indexes_a_query_reads(self, pg_url: str) -> None:
        """The primary key (every run's events) and the error filter; ``events_boundary``,
        read by no query, is gone (m005)."""
        store = PostgresStore(pg_url)
        store.list_runs()  # opening migrates
        with psycopg.connect(pg_url) as conn:
            names = {
                name
                for (name,) in conn.execute(
                    "SELECT indexname FROM pg_indexes "
                    "WHERE tablename = 'events' AND schemaname = current_schema()"
                )
            }
        assert names == {"events_pkey", "events_errors"}
        store.close()

    def test_an_older_schema_loses_the_index_and_keeps_its_runs(self, pg_url: str) -> None:
        """A schema migrated up to m004 has ``events_boundary``; opening it drops the index,
        and ``--boundary`` still finds a run recorded before and one recorded after."""
        from replayable.store.postgres import MIGRATIONS

        with psycopg.connect(pg_url, autocommit=True) as conn:
            conn.execute("CREATE TABLE _migrations (name TEXT PRIMARY KEY, applied_at FLOAT8)")
            for name, sql in MIGRATIONS[:3]:
                for statement in sql.split(";"):
                    if statement.strip():
                        conn.execute(statement)
                conn.execute("INSERT INTO _migrations VALUES (%s, 0)", (name,))
            assert has_boundary_index(conn)
        old = make_run("before-m005", status="ok", head_hash="h", event_count=2)
        store = PostgresStore(pg_url)
        assert store.put_run(old, make_events(old.id, 2, boundary="mod:lookup"))
        assert "m005_drop_events_boundary" in store.migrations()
        with psycopg.connect(pg_url) as conn:
            assert not has_boundary_index(conn)
        with rp.record(store, name="after") as run:
            rp.boundary(kind="tool", name="mod:lookup")(lambda q: q)("x")
        found = [r.id for r in store.list_runs(RunQuery(boundary="lookup"))]
        assert sorted(found) == sorted([old.id, run.id])
        store.close()


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False, width=64)
    | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=8), inner, max_size=4)
    ),
    max_leaves=12,
)


@rp.boundary(kind="tool")
def echo(value: Any) -> Any:
    return {"value": value}


class TestHashChainSurvivesTheStore:
    @settings(
        max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(values=st.lists(json_values, min_size=1, max_size=4))
    def test_recorded_values_verify_after_round_trip(self, backend: Store, values: list) -> None:
        """Whatever JSON a boundary sees, the chain recomputed from the store matches."""
        with rp.record(store=backend) as run:
            for v in values:
                echo(v)
        stored = backend.get_run(run.id)
        result = verify_run(stored, backend.iter_events(run.id), key=b"")
        assert result.ok, result.problem
        assert result.event_count == len(values)

    def test_signed_head_verifies_with_the_key_only(
        self, backend: Store, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With $REPLAYABLE_SIGNING_KEY set the head is signed; a wrong key fails verify."""
        monkeypatch.setenv("REPLAYABLE_SIGNING_KEY", "s3cret")
        with rp.record(store=backend) as run:
            echo(1)
        stored = backend.get_run(run.id)
        assert stored.signature is not None
        assert verify_run(stored, backend.iter_events(run.id)).signature == "valid"
        bad = verify_run(stored, backend.iter_events(run.id), key=b"other")
        assert (bad.ok, bad.signature) == (False, "invalid")
        monkeypatch.delenv("REPLAYABLE_SIGNING_KEY")
        assert verify_run(stored, backend.iter_events(run.id)).signature == "unchecked"

    def test_sign_run_without_key_leaves_run_unsigned(self) -> None:
        """No key, no signature."""
        run = make_run("x", head_hash="abc")
        sign_run(run, key=b"")
        assert run.signature is None
