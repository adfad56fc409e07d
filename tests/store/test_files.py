"""A directory of trace files is a read-only store."""

from __future__ import annotations

from pathlib import Path

import pytest

import replayable as rp
from replayable.errors import RunNotFound, StoreUnavailable
from replayable.store.base import RunQuery
from replayable.store.files import TraceDirStore
from replayable.trace import Run, write_trace


@rp.boundary(kind="tool")
def shout(text: str) -> str:
    return text.upper()


@pytest.fixture
def traces(tmp_path: Path) -> Path:
    folder = tmp_path / "traces"
    for name in ("first", "second"):
        with rp.record(name=name) as run:
            shout(name)
        write_trace(run, run.events(), folder / "sub" / f"{name}.jsonl")
    (folder / "notes.jsonl").write_text('{"not": "a trace"}\n')
    return folder


class TestTraceDirStore:
    def test_open_store_on_a_directory(self, traces: Path) -> None:
        """open_store(dir) lists the runs of its trace files, newest first."""
        store = rp.open_store(str(traces))
        assert isinstance(store, TraceDirStore)
        assert [r.name for r in store.list_runs()] == ["second", "first"]
        assert [r.name for r in store.list_runs(RunQuery(name="first"))] == ["first"]
        assert [r.name for r in store.list_runs(RunQuery(boundary="shout", limit=1))] == ["second"]

    def test_runs_started_at_the_same_time_list_by_id(self, tmp_path: Path) -> None:
        """Newest first, ties by id descending: the order the SQL stores give."""
        for run_id, file in [("tie-b", "1"), ("tie-c", "2"), ("tie-a", "3"), ("later", "0")]:
            run = Run(id=run_id, started_at=2000.0 if run_id == "later" else 1000.0, status="ok")
            write_trace(run, [], tmp_path / f"{file}.jsonl")
        store = TraceDirStore(tmp_path)
        assert [r.id for r in store.list_runs()] == ["later", "tie-c", "tie-b", "tie-a"]
        assert [r.id for r in store.list_runs(RunQuery(limit=2))] == ["later", "tie-c"]

    def test_get_run_and_events(self, traces: Path) -> None:
        """A run is found by id prefix and its events read from its file."""
        store = TraceDirStore(traces)
        run = store.list_runs(RunQuery(name="first"))[0]
        got = store.get_run(run.id[:14])
        assert [e.output for e in got.events()] == ["FIRST"]
        with pytest.raises(RunNotFound):
            store.get_run("nope")

    def test_writing_is_refused_clearly(self, traces: Path) -> None:
        """Every write raises StoreUnavailable saying the store is read-only."""
        store = TraceDirStore(traces)
        with pytest.raises(StoreUnavailable, match="read-only"):
            store.create_run(Run(id="x"))
        with pytest.raises(StoreUnavailable, match="read-only"):
            store.delete_runs(before=0)

    def test_replay_from_the_directory(self, traces: Path) -> None:
        """A run in a trace directory replays like any other."""
        store = TraceDirStore(traces)
        run = store.list_runs(RunQuery(name="second"))[0]
        with rp.replay(run.id, store=store):
            assert shout("second") == "SECOND"
