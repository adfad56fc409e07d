"""Read your writes: a run's end only queues it for the background writer, yet any read of the
store in the same process sees the finished run; ``strict`` still waits and raises."""

from __future__ import annotations

import pytest

import replayable as rp
from replayable._writer import stop_writer
from replayable.store.base import RunQuery, Store
from replayable.store.postgres import PostgresStore
from replayable.store.sqlite import SQLiteStore
from replayable.trace import verify_run


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
