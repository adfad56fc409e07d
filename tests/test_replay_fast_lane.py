"""The replay's usual served call: an input byte for byte the recorded one is served without
being redacted or keyed again (``RecordingMatcher``'s shortcut through
``RecordedRun.next_if_same``).

The shortcut must be taken where it applies (else the speed it buys is not there), and keep
exactly the steps the keyed match keeps where it does; every case it does not handle must reach
the keyed match. ``tests/store/test_hash_v3.py`` compares both on one agent that uses every
shape; these cover what that agent does not: nesting, typed returns, a source with no store,
observers, outputs that were never recorded, threads.
"""

from __future__ import annotations

import asyncio
import dataclasses
import importlib
import random
import sqlite3
import threading
import warnings
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

import replayable as rp
from replayable.errors import ReplayableError
from replayable.store.sqlite import SQLiteStore
from replayable.trace import verify_run, write_trace

replayer_mod = importlib.import_module("replayable._replayer")
record_mod = importlib.import_module("replayable.record")


@dataclasses.dataclass
class Quote:
    symbol: str
    price: float


@rp.boundary(kind="tool")
def quote(symbol: str) -> Quote:
    return Quote(symbol, round(random.uniform(1, 500), 2))


@rp.boundary(kind="retrieval")
def search(q: str) -> list[str]:
    return [f"{q}-{random.random()}"]


@rp.boundary(kind="tool")
def research(topic: str) -> dict[str, Any]:
    """A tool with boundaries inside it: served whole at replay, its children never run."""
    return {"topic": topic, "hits": search(topic) + search(topic + "?")}


@rp.boundary(kind="llm")
def think(prompt: str, *, temperature: float = 0.0) -> str:
    return f"{prompt}:{random.random()}"


@rp.boundary(kind="agent")
def trader(n: int) -> list[Any]:
    out: list[Any] = [think("plan"), think("plan"), think(prompt="plan", temperature=0.5)]
    for i in range(n):
        out.append(quote(f"S{i}"))
    out.append(research("acme"))
    out.append(think("done"))
    return out


@rp.boundary(kind="tool")
async def aquote(symbol: str) -> Quote:
    await asyncio.sleep(0)
    return Quote(symbol, round(random.uniform(1, 500), 2))


@rp.boundary(kind="llm")
async def athink(prompt: str) -> str:
    await asyncio.sleep(0)
    return f"{prompt}:{random.random()}"


@rp.boundary(kind="agent")
async def atrader(n: int) -> list[Any]:
    """The async shape: sequential calls, a gather of concurrent ones, a sync tool inside."""
    out: list[Any] = [await athink("plan")]
    out.extend(await asyncio.gather(*(aquote(f"S{i}") for i in range(n))))
    out.append(quote("SYNC"))
    out.append(await athink("done"))
    return out


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SQLiteStore]:
    s = SQLiteStore(tmp_path / "lane.db")
    yield s
    s.close()


_TIMES = ("run_id", "started_at", "duration_ns", "hash")  # what differs from one run to the next


def _steps(store: SQLiteStore, run_id: str) -> list[dict[str, Any]]:
    """A run's stored steps in start order, all but their run, times and hashes."""
    events = sorted(store.get_run(run_id).events(), key=lambda e: e.seq)
    return [{k: v for k, v in e.to_dict().items() if k not in _TIMES} for e in events]


def _verifies(store: SQLiteStore, run_id: str) -> bool:
    return verify_run(store.get_run(run_id), list(store.iter_events(run_id))).ok


def _without_fast_lane(monkeypatch: pytest.MonkeyPatch) -> None:
    """No recorded input is ever byte for byte the call's: every call takes the keyed match."""
    monkeypatch.setattr(replayer_mod.RecordedRun, "next_if_same", lambda self, gkey, data: None)


@pytest.fixture
def begun(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The boundaries whose calls the replay's matcher redacted and keyed (the keyed match
    rather than the shortcut), in order."""
    names: list[str] = []
    match = replayer_mod.RecordingMatcher.match

    def counting(self: Any, frame: Any) -> Any:
        found = match(self, frame)
        if not found.same:
            names.append(frame.b.name)
        return found

    monkeypatch.setattr(replayer_mod.RecordingMatcher, "match", counting)
    return names


class TestTaken:
    def test_a_plain_served_call_skips_the_driver(
        self, store: SQLiteStore, begun: list[str]
    ) -> None:
        """No call is keyed again: every served call (and the agent, which runs live) took
        the shortcut."""
        with rp.record(store=store) as run:
            recorded = trader(4)
        with rp.replay(run.id, store=store) as r:
            assert trader(4) == recorded
        assert r.ok, r.report()
        assert begun == []

    def test_the_driver_takes_every_call_without_it(
        self, store: SQLiteStore, begun: list[str], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """The counter-check of the test above: with the shortcut off, each call is keyed."""
        with rp.record(store=store) as run:
            trader(2)
        _without_fast_lane(monkeypatch)
        with rp.replay(run.id, store=store):
            trader(2)
        assert len(begun) == 1 + 3 + 2 + 1 + 1

    def test_an_async_served_call_skips_the_driver(
        self, store: SQLiteStore, begun: list[str]
    ) -> None:
        """The async driver takes the same shortcut: no call is keyed again."""
        with rp.record(store=store) as run:
            recorded = asyncio.run(atrader(5))
        with rp.replay(run.id, store=store) as r:
            assert asyncio.run(atrader(5)) == recorded
        assert r.ok, r.report()
        assert begun == []


class TestSameSteps:
    @pytest.mark.parametrize("shift", [False, True], ids=["unchanged", "changed"])
    def test_the_lane_and_the_driver_keep_the_same_steps(
        self, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, shift: bool
    ) -> None:
        """Nesting, typed returns, keyword and positional calls, repeated inputs: the replay's
        stored steps, its outputs and its divergences are the same either way."""
        with rp.record(store=store) as run:
            think("top")  # calls outside any agent: no parent step
            trader(3)
            quote("Z")

        def once() -> tuple[Any, ...]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    with rp.replay(run.id, store=store, strict=False) as r:
                        out = [think("top"), trader(4 if shift else 3), quote("Z")]
                except Exception as exc:  # a divergence: compared, not raised
                    out = type(exc).__name__
            divergences = [(d.reason, d.address) for d in r.divergences]
            assert _verifies(store, r.run.id)
            return out, divergences, _steps(store, r.run.id)

        fast = once()
        _without_fast_lane(monkeypatch)
        slow = once()
        assert fast == slow
        if not shift:
            assert isinstance(fast[0][1][3], Quote)  # the return annotation rebuilt the value
            assert fast[1] == []
            assert fast[2][0]["parent_seq"] is None  # a top-level step has no parent

    @pytest.mark.parametrize("n", [5, 6], ids=["unchanged", "changed"])
    def test_the_async_lane_and_the_driver_keep_the_same_steps(
        self, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, n: int
    ) -> None:
        """Concurrent async calls under one parent, served by the lane or by the driver: the
        same outputs, divergences and stored steps."""
        with rp.record(store=store) as run:
            asyncio.run(atrader(5))

        def once() -> tuple[Any, ...]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    with rp.replay(run.id, store=store, strict=False) as r:
                        out = asyncio.run(atrader(n))
                except Exception as exc:
                    out = type(exc).__name__
            assert _verifies(store, r.run.id)
            return out, [(d.reason, d.address) for d in r.divergences], _steps(store, r.run.id)

        fast = once()
        _without_fast_lane(monkeypatch)
        slow = once()
        assert fast == slow
        if n == 5:
            assert fast[1] == []
            assert isinstance(fast[0][1], Quote)

    def test_a_served_parent_stands_for_its_children(self, store: SQLiteStore) -> None:
        """A served tool's recorded children are consumed with it: nothing is reported skipped,
        and they are not in the replay (they did not run)."""
        with rp.record(store=store) as run:
            recorded = research("acme")
        with rp.replay(run.id, store=store) as r:
            assert research("acme") == recorded
        assert r.ok, r.report()
        assert [s["boundary"] for s in _steps(store, r.run.id)] == [research.__replayable__.name]  # type: ignore[attr-defined]


class TestDriverCases:
    def test_a_source_with_no_store_is_copied_not_referenced(
        self, store: SQLiteStore, tmp_path: Path
    ) -> None:
        """Replayed from a trace file, a served step keeps its own copy of the output (there is
        no stored event to refer to), and the replay verifies."""
        with rp.record(store=store) as run:
            recorded = trader(2)
        path = write_trace(run, store.iter_events(run.id), tmp_path / "run.jsonl")
        with rp.replay(str(path), store=store) as r:
            assert trader(2) == recorded
        assert r.ok, r.report()
        events = list(store.iter_events(r.run.id))
        served = [e for e in events if e.meta.get("served")]
        assert len(served) == len(events) - 1
        assert all("$ref" not in e.meta and e.output is not None for e in served)
        assert _verifies(store, r.run.id)

    def test_a_replay_into_another_store_copies_the_outputs(
        self, store: SQLiteStore, tmp_path: Path
    ) -> None:
        """A run from one store replayed into another: the served steps cannot refer to events
        the target does not hold, so they carry their outputs, and the replay verifies there."""
        with rp.record(store=store) as run:
            recorded = trader(2)
        other = SQLiteStore(tmp_path / "other.db")
        try:
            with rp.replay(store.get_run(run.id), store=other) as r:
                assert trader(2) == recorded
            assert r.ok, r.report()
            events = list(other.iter_events(r.run.id))
            assert len(events) == 1 + 3 + 2 + 1 + 1
            assert all("$ref" not in e.meta and "unresolved_ref" not in e.meta for e in events)
            assert _verifies(other, r.run.id)
        finally:
            other.close()

    def test_observers_see_every_served_call(self, store: SQLiteStore) -> None:
        """A live observer (the OpenTelemetry exporter) is told of each served call."""
        with rp.record(store=store) as run:
            trader(2)

        class Observer:
            def __init__(self) -> None:
                self.begun: list[str] = []
                self.finished: list[str] = []

            def on_begin(self, session: Any, b: Any, frame: Any) -> None:
                self.begun.append(b.name)

            def on_finish(self, session: Any, b: Any, frame: Any, error: Any, ns: int) -> None:
                self.finished.append(b.name)

        obs = Observer()
        record_mod.OBSERVERS.append(obs)
        try:
            with rp.replay(run.id, store=store) as r:
                trader(2)
        finally:
            record_mod.OBSERVERS.remove(obs)
        assert r.ok
        assert len(obs.begun) == len(obs.finished) == 1 + 3 + 2 + 1 + 1

    def test_an_output_that_was_never_recorded_is_refused(self, store: SQLiteStore) -> None:
        """A recorded call whose output had no JSON form cannot be served: the driver says so,
        as it did before the lane."""

        @rp.boundary(kind="tool", name="lane:opaque")
        def opaque(x: int) -> Any:
            return threading.Lock()

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with rp.record(store=store) as run:
                opaque(1)
        with pytest.raises(ReplayableError, match="its output was not recorded"):
            with rp.replay(run.id, store=store):
                opaque(1)

    @pytest.mark.parametrize("column", ["output", "error"])
    def test_a_stored_field_that_is_not_json_is_refused_as_before(
        self, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch, column: str
    ) -> None:
        """An edited row whose output (or error) no longer parses: the replay (warned that the
        run does not verify) refuses that call the way the driver always has, lane or not."""
        with rp.record(store=store) as run:
            trader(2)
        rp.flush()  # edited behind replayable's back: its writes first
        db = sqlite3.connect(store.path)
        with db:
            db.execute(
                f"UPDATE events SET {column} = '{{not json' WHERE run_id = ? AND address LIKE ?",
                (run.id, "%quote/1"),
            )
        db.close()

        def once() -> tuple[Any, ...]:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                try:
                    with rp.replay(run.id, store=store, strict=False) as r:
                        trader(2)
                    failure = ""
                except Exception as exc:
                    failure = f"{type(exc).__name__}: {exc}".replace(run.id, "RUN")
            return failure, _steps(store, r.run.id)

        fast = once()
        _without_fast_lane(monkeypatch)
        slow = once()
        assert fast == slow
        assert fast[0]  # the call was refused
        assert any(s["address"].endswith("quote/1") and s["error"] for s in fast[1])

    def test_a_recorded_error_is_raised_again(self, store: SQLiteStore) -> None:
        @rp.boundary(kind="tool", name="lane:fails")
        def fails(x: int) -> int:
            raise KeyError(f"no row {x}")

        with rp.record(store=store) as run:
            with pytest.raises(KeyError):
                fails(7)
        calls: list[int] = []
        with rp.replay(run.id, store=store) as r:
            with pytest.raises(KeyError, match="no row 7"):
                calls.append(fails(7))
        assert r.ok
        assert calls == []

    def test_concurrent_calls_each_get_their_own_output(self, store: SQLiteStore) -> None:
        """Threads racing for the same boundary under one parent: each call is served the
        output recorded for its input, whichever order they arrive in."""

        @rp.boundary(kind="agent", name="lane:fan_out")
        def fan_out(symbols: list[str]) -> dict[str, Quote]:
            with ThreadPoolExecutor(8) as pool:
                return dict(zip(symbols, pool.map(rp.bind(quote), symbols), strict=True))

        symbols = [f"T{i}" for i in range(40)]
        with rp.record(store=store) as run:
            recorded = fan_out(symbols)
        for _ in range(3):
            with rp.replay(run.id, store=store) as r:
                assert fan_out(symbols) == recorded
            assert r.ok, r.report()
            assert _verifies(store, r.run.id)
