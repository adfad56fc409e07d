"""Replay: outputs served, side effects never re-fired, the first divergence named precisely."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import random
import sqlite3
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pydantic
import pytest

import replayable as rp
from replayable.trace import write_trace

CALLS: list[str] = []
VARIANT: dict[str, Any] = {}


class Answer(pydantic.BaseModel):
    text: str


@dataclasses.dataclass
class Score:
    value: float


@pytest.fixture(autouse=True)
def _reset_calls() -> None:
    CALLS.clear()
    VARIANT.clear()


@rp.boundary(kind="llm")
def plan(task: str) -> dict[str, Any]:
    CALLS.append("plan")
    return {"action": "delete", "id": int(rp.random() * 1000)}


@rp.boundary(kind="tool", side_effects=True)
def delete_row(db: str, row_id: int) -> int:
    CALLS.append("delete_row")
    with sqlite3.connect(db) as conn:
        return conn.execute("DELETE FROM t WHERE id = ?", (row_id,)).rowcount


@rp.boundary(kind="tool")
def lookup(row_id: int) -> dict[str, Any]:
    CALLS.append("lookup")
    return {"id": row_id, "at": rp.now().isoformat()}


@rp.boundary(kind="agent")
def agent(db: str, task: str) -> dict[str, Any]:
    decision = plan(task)
    info = lookup(decision["id"])
    if VARIANT.get("confirm"):
        lookup(decision["id"] + 1)
    deleted = delete_row(db, decision["id"])
    return {"decision": decision, "info": info, "deleted": deleted}


@pytest.fixture
def db(tmp_path: Path) -> str:
    path = tmp_path / "rows.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE t (id INTEGER PRIMARY KEY)")
        conn.executemany("INSERT INTO t VALUES (?)", [(i,) for i in range(1000)])
    return str(path)


def rows(db: str) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM t").fetchone()[0])


def recorded(db: str, confirm: bool = False) -> tuple[rp.Run, dict[str, Any]]:
    VARIANT["confirm"] = confirm
    with rp.record(name="agent") as run:
        out = agent(db, "delete the stale row")
    VARIANT["confirm"] = False
    return run, out


class TestServing:
    def test_outputs_served_and_side_effects_not_fired(self, db: str) -> None:
        """In replay, tools and models are served; the side-effect function is never called."""
        run, out = recorded(db)
        assert rows(db) == 999
        CALLS.clear()
        with rp.replay(run.id) as r:
            again = agent(db, "delete the stale row")
        assert again == out
        assert CALLS == []
        assert rows(db) == 999
        assert r.divergences == []
        assert r.ok

    def test_replay_is_recorded_and_linked(self, db: str) -> None:
        """The replay is a run of its own, pointing at its source."""
        run, _ = recorded(db)
        with rp.replay(run.id) as r:
            agent(db, "delete the stale row")
        stored = rp.open_store().get_run(r.run.id)
        assert stored.parent_run == run.id
        assert stored.metadata["replay_of"] == run.id
        served = [e for e in stored.events() if e.meta.get("served")]
        assert {e.boundary.rsplit(":", 1)[1] for e in served} == {"plan", "lookup", "delete_row"}

    def test_clock_and_randomness_replay_equal(self) -> None:
        """rp.now, rp.random and rp.uuid4 return the recorded values in replay."""

        @rp.boundary(kind="agent")
        def sample() -> tuple[str, float, str]:
            return rp.now().isoformat(), rp.random(), str(rp.uuid4())

        with rp.record() as run:
            first = sample()
        with rp.replay(run.id):
            second = sample()
        assert first == second

    def test_trace_file_source(self, db: str, tmp_path: Path) -> None:
        """A trace file replays like the run it was written from."""
        run, out = recorded(db)
        path = write_trace(run, run.events(), tmp_path / "incident.jsonl")
        CALLS.clear()
        with rp.replay(str(path)) as r:
            assert agent(db, "delete the stale row") == out
        assert CALLS == []
        assert r.ok

    def test_typed_returns_rebuilt(self) -> None:
        """Return annotations that are Pydantic models or dataclasses are rebuilt in replay."""

        @rp.boundary(kind="llm")
        def answer() -> Answer:
            return Answer(text="hi")

        @rp.boundary(kind="tool")
        def score() -> Score:
            return Score(0.5)

        @rp.boundary(kind="agent")
        def run_both() -> tuple[Any, Any]:
            return answer(), score()

        with rp.record() as run:
            run_both()
        with rp.replay(run.id):
            a, s = run_both()
        assert a == Answer(text="hi")
        assert s == Score(0.5)


class TestCallShapes:
    def test_generator_chunks_replay_in_order(self) -> None:
        """A streaming generator's chunks are recorded and replayed in order."""

        @rp.boundary(kind="llm")
        def stream(n: int) -> Iterator[str]:
            CALLS.append("stream")
            for i in range(n):
                yield f"tok{i}-{random.random():.3f}"

        @rp.boundary(kind="agent")
        def run_stream() -> list[str]:
            return list(stream(4))

        with rp.record() as run:
            first = run_stream()
        CALLS.clear()
        with rp.replay(run.id):
            assert run_stream() == first
        assert CALLS == []
        (ev,) = [e for e in run.events() if e.kind == "llm"]
        assert ev.output == first
        assert ev.meta["stream"] is True

    def test_async_generator_chunks_replay_in_order(self) -> None:
        """An async generator streams the same chunks in replay."""

        @rp.boundary(kind="llm")
        async def astream(n: int) -> AsyncIterator[dict[str, Any]]:
            for i in range(n):
                await asyncio.sleep(0)
                yield {"delta": i, "r": random.random()}

        @rp.boundary(kind="agent")
        async def run_astream() -> list[dict[str, Any]]:
            return [c async for c in astream(3)]

        async def go(mode: Any) -> list[dict[str, Any]]:
            async with mode:
                return await run_astream()

        async def record_it() -> tuple[rp.Run, list[dict[str, Any]]]:
            async with rp.record() as r:
                out = await run_astream()
            return r, out

        run, first = asyncio.run(record_it())
        assert asyncio.run(go(rp.replay(run.id))) == first

    def test_generator_parent_is_captured_at_creation(self) -> None:
        """A generator created inside a step nests there even when iterated elsewhere."""

        @rp.boundary(kind="tool")
        def gen() -> Iterator[int]:
            yield 1

        made: list[Iterator[int]] = []

        @rp.boundary(kind="agent")
        def make() -> None:
            made.append(gen())

        with rp.record() as run:
            make()
            assert list(made[0]) == [1]
        events = {e.boundary.rsplit(".", 1)[1]: e for e in run.events()}
        assert events["gen"].parent_seq == events["make"].seq

    def test_gather_of_20_replays_in_shuffled_order(self) -> None:
        """asyncio.gather calls match by key whatever order they start in."""

        @rp.boundary(kind="tool")
        async def fetch(i: int) -> dict[str, Any]:
            await asyncio.sleep(random.random() / 1000)
            return {"i": i, "value": random.random()}

        @rp.boundary(kind="agent", name="fan-agent")
        async def fan(order: list[int]) -> list[dict[str, Any]]:
            results = await asyncio.gather(*(fetch(i) for i in order))
            return sorted(results, key=lambda r: r["i"])

        async def record_it() -> tuple[rp.Run, list[dict[str, Any]]]:
            async with rp.record() as run:
                out = await fan(list(range(20)))
            return run, out

        run, first = asyncio.run(record_it())
        shuffled = list(range(20))
        random.Random(7).shuffle(shuffled)

        @rp.boundary(kind="agent", name="fan-agent")
        async def fan_again(order: list[int]) -> list[dict[str, Any]]:
            results = await asyncio.gather(*(fetch(i) for i in shuffled))
            return sorted(results, key=lambda r: r["i"])

        async def replay_it() -> tuple[rp.Replay, list[dict[str, Any]]]:
            async with rp.replay(run.id) as r:
                out = await fan_again(list(range(20)))
            return r, out

        r, second = asyncio.run(replay_it())
        assert second == first
        assert r.divergences == []

    def test_exceptions_round_trip_as_their_type(self) -> None:
        """A recorded exception is re-raised in replay as the same type with the same args."""

        class QuotaError(Exception):
            pass

        @rp.boundary(kind="tool")
        def flaky() -> None:
            CALLS.append("flaky")
            raise KeyError("missing-user")

        @rp.boundary(kind="agent")
        def wrapper() -> str:
            try:
                flaky()
            except KeyError as exc:
                return f"caught {exc.args[0]}"
            return "no error"

        with rp.record() as run:
            assert wrapper() == "caught missing-user"
        CALLS.clear()
        with rp.replay(run.id):
            assert wrapper() == "caught missing-user"
        assert CALLS == []


class TestDivergence:
    def test_changed_argument_names_the_field(self, db: str) -> None:
        """A changed argument raises Divergence at that call with the field-level diff."""

        @rp.boundary(kind="tool", name="search")
        def search(query: str, limit: int) -> list[int]:
            return [1, 2]

        @rp.boundary(kind="agent", name="find")
        def find() -> list[int]:
            return search("stale rows", limit=VARIANT.get("limit", 5))

        with rp.record() as run:
            find()
        VARIANT["limit"] = 6
        with pytest.raises(rp.Divergence) as info, rp.replay(run.id):
            find()
        div = info.value
        assert div.reason == "changed"
        assert div.boundary == "search"
        assert div.address == "find/0 > search/0"
        assert [(c.path, c.change, c.recorded, c.actual) for c in div.changes] == [
            ("limit", "changed", 5, 6)
        ]
        assert "limit: 5 -> 6" in str(div)

    def test_removed_call_reported_as_skipped(self, db: str) -> None:
        """A recorded call the code no longer makes is reported as skipped at exit."""
        run, _ = recorded(db, confirm=True)
        with rp.replay(run.id, strict=False) as r:
            agent(db, "delete the stale row")
        assert [(d.reason, d.boundary.rsplit(":", 1)[1]) for d in r.divergences] == [
            ("skipped", "lookup")
        ]
        assert r.divergences[0].address.endswith("lookup/1")
        assert "never reached" in r.report()

    def test_skipped_raises_at_exit_when_strict(self, db: str) -> None:
        """In strict mode a skipped call raises when the replay block ends."""
        run, _ = recorded(db, confirm=True)
        with pytest.raises(rp.Divergence, match="never reached"), rp.replay(run.id):
            agent(db, "delete the stale row")

    def test_new_call_is_unexpected(self, db: str) -> None:
        """A call the recording does not have cannot be served: it raises."""
        run, _ = recorded(db)
        VARIANT["confirm"] = True
        with (
            pytest.raises(rp.Divergence, match="unexpected call") as info,
            rp.replay(run.id, strict=False),
        ):
            agent(db, "delete the stale row")
        assert info.value.reason == "unexpected"

    def test_non_strict_runs_changed_live_boundary_live(self) -> None:
        """strict=False: a changed call to a live boundary runs live and is reported."""

        @rp.boundary(kind="tool", name="price")
        def price(symbol: str) -> float:
            CALLS.append(symbol)
            return 100.0 if symbol == "ACME" else 50.0

        @rp.boundary(kind="agent", name="trade")
        def trade() -> float:
            return price(VARIANT.get("symbol", "ACME"))

        with rp.record() as run:
            trade()
        CALLS.clear()
        VARIANT["symbol"] = "OTHER"
        with rp.replay(run.id, strict=False, live=["price"]) as r:
            assert trade() == 50.0
        assert CALLS == ["OTHER"]
        assert [(d.reason, d.boundary) for d in r.divergences] == [("changed", "price")]
        assert r.divergences[0].changes[0].path == "symbol"

    def test_non_strict_changed_served_boundary_still_raises(self, db: str) -> None:
        """strict=False: a changed call to a served boundary raises (nothing honest to serve)."""

        @rp.boundary(kind="tool", name="quote")
        def quote(symbol: str) -> float:
            CALLS.append(symbol)
            return 1.0

        @rp.boundary(kind="agent", name="buy")
        def buy() -> float:
            return quote(VARIANT.get("symbol", "A"))

        with rp.record() as run:
            buy()
        VARIANT["symbol"] = "B"
        with rp.replay(run.id, strict=False) as r, pytest.raises(rp.Divergence) as info:
            buy()
        assert info.value.boundary == "quote"
        assert CALLS == ["A"]
        assert [d.reason for d in r.divergences] == ["changed"]

    def test_key_mismatch_with_ignored_field_warns(self) -> None:
        """A field left out of the key may change; replay still matches but warns."""

        @rp.boundary(kind="llm", ignore=["trace_note"])
        def model(prompt: str, trace_note: str) -> str:
            return "answer"

        @rp.boundary(kind="agent")
        def ask() -> str:
            return model("hi", trace_note=VARIANT.get("note", "first"))

        with rp.record() as run:
            ask()
        VARIANT["note"] = "second"
        with pytest.warns(rp.ReplayableWarning, match="trace_note"), rp.replay(run.id) as r:
            assert ask() == "answer"
        assert r.ok


class TestLive:
    def test_live_boundary_runs(self, db: str) -> None:
        """A boundary named in live runs its real function."""
        run, _ = recorded(db)
        CALLS.clear()
        with rp.replay(run.id, live=["lookup"]):
            agent(db, "delete the stale row")
        assert CALLS == ["lookup"]

    def test_nth_call_only(self, db: str) -> None:
        """name#N runs only the N-th recorded call of that boundary."""
        run, _ = recorded(db, confirm=True)
        CALLS.clear()
        VARIANT["confirm"] = True
        with rp.replay(run.id, live=["lookup#2"], strict=False) as r:
            agent(db, "delete the stale row")
        assert CALLS == ["lookup"]
        assert r.ok

    def test_side_effect_live_refused_before_anything_runs(self, db: str) -> None:
        """Naming a side-effect boundary live without permission fails before the block."""
        run, _ = recorded(db)
        before = rows(db)
        with pytest.raises(rp.SideEffectRefused, match="allow_side_effects"):
            rp.replay(run.id, live=["delete_row"])
        assert rows(db) == before

    def test_side_effect_live_allowed_when_asked(self, db: str) -> None:
        """allow_side_effects=True runs the side effect for real."""
        run, out = recorded(db)
        with sqlite3.connect(db) as conn:
            conn.execute("INSERT INTO t VALUES (?)", (out["decision"]["id"],))
        with rp.replay(run.id, live=["delete_row"], allow_side_effects=True):
            agent(db, "delete the stale row")
        assert rows(db) == 999

    def test_unknown_and_ambiguous_names(self, db: str) -> None:
        """Unknown boundary names and ambiguous bare names are clear errors."""
        run, _ = recorded(db)
        with pytest.raises(rp.UnknownBoundary, match="no boundary named 'nope'"):
            rp.replay(run.id, live=["nope"])

        @rp.boundary(name="one.module:twin")
        def twin_a() -> None: ...

        @rp.boundary(name="other.module:twin")
        def twin_b() -> None: ...

        with pytest.raises(rp.UnknownBoundary, match="ambiguous"):
            rp.replay(run.id, live=["twin"])

    def test_unknown_run_id(self) -> None:
        """Replaying a run that does not exist says so."""
        with pytest.raises(rp.RunNotFound, match="no run"):
            rp.replay("does-not-exist")


class TestKeyMatching:
    def test_match_by_key_ignores_position(self) -> None:
        """match='key' serves a call wherever it sits, by canonical input alone."""

        @rp.boundary(kind="tool")
        def square(x: int) -> int:
            CALLS.append("square")
            return x * x

        @rp.boundary(kind="agent")
        def first() -> list[int]:
            return [square(2), square(3)]

        with rp.record() as run:
            first()

        @rp.boundary(kind="agent")
        def second() -> list[int]:
            return [square(3), square(2)]

        CALLS.clear()
        with rp.replay(run.id, match="key", strict=False) as r:
            assert second() == [9, 4]
        assert CALLS == []
        assert [d.reason for d in r.divergences] == ["unexpected", "skipped"]


class TestIncompleteRecordings:
    def test_children_of_a_call_that_never_completed_are_not_lost(self) -> None:
        """Completed children of an in-flight parent are reported if the replay skips them."""
        from replayable.trace import Event, chain_events

        run = rp.Run(id="dead-run", name="died", status="incomplete")
        leaf = Event("dead-run", 2, "agent/0 > mid/0 > leaf/0", 1, "leaf", "tool", "k", {}, 1)
        chain_events(run, [leaf])
        path = write_trace(run, [leaf], Path("dead.jsonl"))

        @rp.boundary(kind="agent", name="agent")
        def agent_doing_nothing() -> None:
            return None

        with rp.replay(str(path), strict=False) as r:
            agent_doing_nothing()
        reasons = [(d.reason, d.boundary) for d in r.divergences]
        assert ("skipped", "leaf") in reasons

    def test_key_mode_reports_a_changed_call_once(self) -> None:
        """match='key': a changed call is one divergence, not also a skipped one."""

        @rp.boundary(kind="tool", name="sq")
        def sq(x: int) -> int:
            return x * x

        @rp.boundary(kind="agent", name="sq_agent")
        def sq_agent() -> int:
            return sq(VARIANT.get("x", 2))

        with rp.record() as run:
            sq_agent()
        VARIANT["x"] = 3
        with rp.replay(run.id, match="key", strict=False) as r, pytest.raises(rp.Divergence):
            sq_agent()
        assert [d.reason for d in r.divergences] == ["changed"]


class TestReplayRunRecord:
    def test_a_replay_that_diverged_is_marked_so(self, db: str) -> None:
        """The replay's own run finishes as 'diverged' when it found divergences."""
        run, _ = recorded(db, confirm=True)
        with rp.replay(run.id, strict=False) as r:
            agent(db, "delete the stale row")
        assert rp.open_store().get_run(r.run.id).status == "diverged"

    def test_nth_call_beyond_the_recording_is_an_error(self, db: str) -> None:
        """name#N naming a call the recording does not have is refused up front."""
        run, _ = recorded(db)
        with pytest.raises(rp.UnknownBoundary, match="1 recorded call"):
            rp.replay(run.id, live=["lookup#5"])

    def test_missing_trace_file(self) -> None:
        """A trace path that does not exist says so plainly."""
        with pytest.raises(rp.TraceCorrupt, match="no such trace file"):
            rp.replay("nowhere/incident.jsonl")

    def test_report_says_where_the_replay_stopped(self) -> None:
        """When a divergence ends the replay, the report says later calls were never reached."""

        @rp.boundary(kind="tool", name="step_one")
        def step_one(x: int) -> int:
            return x

        @rp.boundary(kind="tool", name="step_two")
        def step_two() -> int:
            return 2

        @rp.boundary(kind="agent", name="two_steps")
        def two_steps() -> int:
            return step_one(VARIANT.get("x", 1)) + step_two()

        with rp.record() as run:
            two_steps()
        VARIANT["x"] = 5
        r = rp.replay(run.id, strict=False)
        with pytest.raises(rp.Divergence), r:
            two_steps()
        assert [d.reason for d in r.divergences] == ["changed", "skipped"]
        assert "stopped at divergence 1" in r.report()


class TestCancellation:
    def test_a_timed_out_call_times_out_again_in_replay(self) -> None:
        """A call cancelled by the caller's timeout is cancelled again, not re-raised raw."""

        @rp.boundary(kind="tool", name="slow_lookup")
        async def slow_lookup(x: int) -> int:
            CALLS.append("slow_lookup")
            await asyncio.sleep(10)
            return x

        @rp.boundary(kind="agent", name="with_fallback")
        async def with_fallback() -> str:
            try:
                await asyncio.wait_for(slow_lookup(1), 0.05)
            except TimeoutError:
                return "fallback"
            return "answer"

        async def go(mode: Any) -> str:
            async with mode:
                return await with_fallback()

        async def record_it() -> tuple[rp.Run, str]:
            async with rp.record() as run:
                out = await with_fallback()
            return run, out

        run, first = asyncio.run(record_it())
        assert first == "fallback"
        CALLS.clear()
        assert asyncio.run(go(rp.replay(run.id))) == "fallback"
        assert CALLS == []


class TestTamperedRecordings:
    def test_replaying_an_edited_run_warns(self, db: str, store_path: Path) -> None:
        """A recording edited after the fact still replays, with a warning that says so."""
        run, _ = recorded(db)
        rp.flush()  # edited behind replayable's back: its writes first
        with sqlite3.connect(store_path) as conn:
            conn.execute(
                'UPDATE events SET output = \'{"action":"delete","id":1}\' '
                "WHERE run_id = ? AND boundary LIKE '%:plan'",
                (run.id,),
            )
        with pytest.warns(rp.ReplayableWarning, match="does not verify") as caught:
            rp.replay(run.id)
        assert caught[0].filename == __file__  # the user's line, not one of replayable's


@rp.boundary(kind="tool")
def weather(city: str) -> str:
    """A tool an agent wraps in try/except, as agent frameworks do."""
    return f"sunny in {city}"


@rp.boundary(kind="tool")
def forecast(city: str) -> str:
    """A second tool, called after weather."""
    return f"rain tomorrow in {city}"


@rp.boundary(kind="tool")
def tags(name: str) -> dict[str, Any]:
    """A tool returning a mutable value the agent may change in place."""
    return {"name": name, "tags": ["a"]}


def tool_message(fn: Any, city: str) -> str:
    """What a framework does with a tool's exception: it becomes the tool's message."""
    try:
        return str(fn(city))
    except Exception as exc:
        return f"tool error: {exc}"


class TestDivergenceCannotBeSwallowed:
    def test_a_caught_divergence_is_kept_and_raised_at_exit(self) -> None:
        """The agent catches the Divergence inside its tool call; the strict replay still fails
        with it at block exit, and the report lists it."""
        with rp.record() as run:
            tool_message(weather, "Paris")
        with pytest.raises(rp.Divergence) as info, rp.replay(run.id) as r:
            message = tool_message(weather, "Lyon")
        assert message.startswith("tool error:")
        assert info.value.boundary.endswith(":weather")
        assert info.value.reason == "changed"
        assert r.divergences[0] is info.value
        assert "weather changed" in r.report().splitlines()[1]
        assert "'Paris' -> 'Lyon'" in r.report()

    def test_the_first_divergence_wins_over_a_later_exception(self) -> None:
        """A caught divergence, then a later error propagating: the first divergence is raised,
        with the later error as its context."""
        with rp.record() as run:
            tool_message(weather, "Paris")
            forecast("Paris")

        def agent() -> None:
            tool_message(weather, "Lyon")  # diverges; caught
            forecast("Lyon")  # diverges; propagates

        with pytest.raises(rp.Divergence) as info, rp.replay(run.id) as r:
            agent()
        assert info.value.boundary.endswith(":weather")
        assert isinstance(info.value.__context__, rp.Divergence)
        assert info.value.__context__.boundary.endswith(":forecast")
        assert [d.boundary.rsplit(":", 1)[-1] for d in r.divergences][:2] == [
            "weather",
            "forecast",
        ]
        assert "weather" in r.report().splitlines()[1]

    def test_an_unrelated_error_after_a_caught_divergence_surfaces_the_divergence(self) -> None:
        """The agent fails later because of what the swallowed divergence did: the divergence
        is the error reported."""
        with rp.record() as run:
            tool_message(weather, "Paris")

        def agent() -> None:
            raise KeyError(tool_message(weather, "Lyon"))

        with pytest.raises(rp.Divergence) as info, rp.replay(run.id):
            agent()
        assert isinstance(info.value.__context__, KeyError)

    def test_non_strict_keeps_a_caught_divergence(self) -> None:
        """With strict=False nothing raises, and the caught divergence is in .divergences."""
        with rp.record() as run:
            tool_message(weather, "Paris")
        with rp.replay(run.id, strict=False) as r:
            tool_message(weather, "Lyon")
        assert [d.reason for d in r.divergences] == ["changed"]


@rp.boundary(kind="tool", side_effects=True)
def send_email(to: str) -> str:
    """A side effect that must never fire in a replay."""
    SENT.append(to)
    return f"sent to {to}"


SENT: list[str] = []


class TestThreads:
    def test_a_raw_thread_pool_without_bind_refuses_a_side_effect_in_a_replay(self) -> None:
        """A raw thread pool does not carry the context: a side effect called there during a
        replay is refused, naming rp.bind, instead of firing."""
        from concurrent.futures import ThreadPoolExecutor

        def main(bound: bool) -> str:
            fn = rp.bind(send_email) if bound else send_email
            with ThreadPoolExecutor(1) as pool:
                return pool.submit(fn, "bob@example.com").result()

        with rp.record() as run:
            main(bound=True)
        assert SENT == ["bob@example.com"]
        SENT.clear()
        with pytest.raises(rp.SideEffectRefused, match=r"rp\.bind"), rp.replay(run.id):
            main(bound=False)
        assert SENT == []
        with rp.replay(run.id) as r:
            assert main(bound=True) == "sent to bob@example.com"
        assert r.ok
        assert SENT == []

    def test_run_in_executor_carries_the_context_without_bind(self) -> None:
        """While a run is active, loop.run_in_executor runs the callable in the caller's
        context (frameworks run sync tools there): recorded, then served in replay."""

        async def main() -> str:
            loop = asyncio.get_running_loop()
            return await loop.run_in_executor(None, send_email, "bob@example.com")

        with rp.record() as run:
            asyncio.run(main())
        assert [e.boundary.rsplit(":", 1)[-1] for e in run.events()] == ["send_email"]
        assert SENT == ["bob@example.com"]
        SENT.clear()
        with rp.replay(run.id) as r:
            assert asyncio.run(main()) == "sent to bob@example.com"
        assert r.ok
        assert SENT == []

    def test_run_in_executor_is_left_as_it_was_after_the_run(self) -> None:
        """The executor patch exists only while a run is active."""
        before = asyncio.BaseEventLoop.__dict__["run_in_executor"]
        with rp.record():
            assert asyncio.BaseEventLoop.__dict__["run_in_executor"] is not before
        assert asyncio.BaseEventLoop.__dict__["run_in_executor"] is before

    def test_a_boundary_outside_the_context_warns_once_naming_bind(self) -> None:
        """While recording, a call from a thread without the context warns (once) and says
        what to do; it is not recorded."""
        from concurrent.futures import ThreadPoolExecutor

        with rp.record() as run, ThreadPoolExecutor(2) as pool:
            with pytest.warns(rp.ReplayableWarning, match=r"rp\.bind") as warned:
                list(pool.map(weather, ["a", "b", "c"]))
        assert len([w for w in warned if "rp.bind" in str(w.message)]) == 1
        assert list(run.events()) == []

    def test_to_thread_carries_the_context(self) -> None:
        """asyncio.to_thread copies the context: the call is recorded and replayed."""

        async def main() -> str:
            return await asyncio.to_thread(weather, "Oslo")

        with rp.record() as run:
            asyncio.run(main())
        with rp.replay(run.id) as r:
            assert asyncio.run(main()) == "sunny in Oslo"
        assert r.ok
        assert [e.boundary for e in run.events()] == ["tests.test_replay:weather"]


class TestServedStepsAreReferences:
    """A replay keeps a served step as a reference to the recorded one, not a second copy."""

    def replayed(self, source: Any) -> rp.Replay:
        with rp.replay(source) as r:
            tool_message(weather, "Paris")
            forecast("Paris")
        return r

    def stored_rows(self, run_id: str) -> list[tuple[str, str, str]]:
        rp.flush()  # read behind replayable's back: its writes first
        db = sqlite3.connect(rp.open_store().url.removeprefix("sqlite:///"))
        try:
            rows = db.execute(
                "SELECT input, output, meta FROM events WHERE run_id = ? ORDER BY seq", (run_id,)
            ).fetchall()
        finally:
            db.close()
        return rows

    def test_served_steps_are_stored_as_one_range_and_read_back_whole(self) -> None:
        """Two steps served in a row are one row referring to the recorded range; the store
        reads it back as the two steps with the full recorded values."""
        with rp.record() as run:
            tool_message(weather, "Paris")
            forecast("Paris")
        r = self.replayed(run.id)
        rows = self.stored_rows(r.run.id)
        assert len(rows) == 1
        inp, out, meta = rows[0]
        assert (inp, out) == ("null", "null")
        assert json.loads(meta)["$range"][:3] == [run.id, 0, 2]
        recorded, replayed = list(run.events()), list(r.run.events())
        assert [(e.input, e.output) for e in replayed] == [(e.input, e.output) for e in recorded]
        assert all("$ref" not in e.meta for e in replayed)
        assert rp.open_store().get_run(r.run.id).status == "ok"
        from replayable.trace import verify_run

        assert verify_run(rp.open_store().get_run(r.run.id), replayed).ok

    def test_an_agent_that_mutates_a_served_value_leaves_the_replay_verifiable(self) -> None:
        """The agent gets a served output of its own: changing it in place changes neither the
        recording nor the replay's own record, which still verifies."""
        from replayable.trace import verify_run

        with rp.record() as run:
            tags("Bob")
        with rp.replay(run.id) as r:
            served = tags("Bob")
            served["tags"].append("added by the agent")
            served["extra"] = 1
        store = rp.open_store()
        assert [e.output for e in run.events()] == [{"name": "Bob", "tags": ["a"]}]
        replayed = store.get_run(r.run.id)
        assert verify_run(replayed, replayed.events()).ok
        assert [e.output for e in replayed.events()] == [{"name": "Bob", "tags": ["a"]}]

    def test_an_edit_of_the_source_after_the_replay_breaks_the_replays_verification(
        self,
    ) -> None:
        """A served step is hashed over its source's values (through the digest the source's
        verification computed): editing the source's stored output afterwards is an edit of the
        replay too, and verify says so."""
        from replayable.trace import verify_run

        with rp.record() as run:
            tool_message(weather, "Paris")
            forecast("Paris")
        r = self.replayed(run.id)
        store = rp.open_store()
        replayed = store.get_run(r.run.id)
        assert verify_run(replayed, replayed.events()).ok
        db = sqlite3.connect(store.url.removeprefix("sqlite:///"))
        with db:
            db.execute(
                "UPDATE events SET output = ? WHERE run_id = ? AND seq = 1",
                ('"sunny tomorrow in Paris"', run.id),
            )
        db.close()
        replayed = store.get_run(r.run.id)
        result = verify_run(replayed, replayed.events())
        assert not result.ok
        assert result.bad_seq == 1

    def test_a_step_matched_by_key_with_other_input_bytes_keeps_its_input_and_verifies(
        self,
    ) -> None:
        """A served step whose input differs from the recorded one outside the key (a
        transient field) refers to the source's output but keeps its own input, and is hashed
        over that input, not over the source's: the replay verifies, and reads back with the
        input it was called with."""
        from replayable.trace import verify_run

        @rp.boundary(kind="llm")
        def ask(prompt: str, request_id: str) -> str:
            return f"answer to {prompt}"

        with rp.record() as run:
            ask("q", request_id="first")
        with rp.replay(run.id) as r:
            assert ask("q", request_id="second") == "answer to q"
        assert r.ok
        inp, out, meta = self.stored_rows(r.run.id)[0]
        assert out == "null"
        assert '"$ref"' in meta
        assert json.loads(inp)["request_id"] == "second"
        replayed = rp.open_store().get_run(r.run.id)
        events = list(replayed.events())
        assert [e.input["request_id"] for e in events] == ["second"]
        assert verify_run(replayed, events).ok

    def test_a_replay_of_a_replay_serves_and_verifies(self) -> None:
        """References to references resolve: the second replay serves, its events read whole."""
        with rp.record() as run:
            tool_message(weather, "Paris")
            forecast("Paris")
        first = self.replayed(run.id)
        second = self.replayed(first.run.id)
        assert second.ok
        third = self.replayed(second.run.id)
        from replayable.trace import verify_run

        events = list(third.run.events())
        assert [e.output for e in events] == [e.output for e in run.events()]
        assert verify_run(rp.open_store().get_run(third.run.id), events).ok

    def test_an_exported_replay_is_self_contained_and_verifies(self, tmp_path: Path) -> None:
        """A replay written as a trace file carries the full values and verifies on its own."""
        from replayable.trace import check_trace, write_trace

        with rp.record() as run:
            tool_message(weather, "Paris")
            forecast("Paris")
        r = self.replayed(run.id)
        stored = rp.open_store().get_run(r.run.id)
        path = write_trace(stored, stored.events(), tmp_path / "replay.jsonl")
        text = path.read_text()
        assert "$ref" not in text
        assert "sunny in Paris" in text
        _, events = check_trace(path)
        assert [e.output for e in events] == ["sunny in Paris", "rain tomorrow in Paris"]
        with rp.replay(path, store=tmp_path / "elsewhere.db") as again:
            tool_message(weather, "Paris")
            forecast("Paris")
        assert again.ok

    def test_a_replay_from_a_trace_file_keeps_copies(self, tmp_path: Path) -> None:
        """With no source run in the same store, served steps are stored in full."""
        from replayable.trace import write_trace

        with rp.record() as run:
            tool_message(weather, "Paris")
            forecast("Paris")
        path = write_trace(run, run.events(), tmp_path / "t.jsonl")
        r = self.replayed(path)
        assert all(out != "null" for _, out, _ in self.stored_rows(r.run.id))
