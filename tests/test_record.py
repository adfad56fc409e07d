"""Recording: what a run captures, and that recording never breaks the agent."""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import replayable as rp
from replayable._tree import build_tree


@rp.boundary(kind="tool")
def add(a: int, b: int = 10) -> int:
    return a + b


@rp.boundary(kind="agent")
def outer(n: int) -> int:
    return add(n) + add(n, b=1)


class Service:
    @rp.boundary(kind="tool")
    def lookup(self, user_id: int) -> dict[str, Any]:
        return {"user_id": user_id}


class Opaque:
    pass


class CodeError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(f"failed with code {code}")
        self.code = code


@rp.boundary(kind="tool")
def takes_anything(thing: Any) -> str:
    return "fine"


class TestWhatIsRecorded:
    def test_nested_calls_form_a_tree_with_addresses(self) -> None:
        """Each call's address is its parent's, then name/ordinal; parents link by seq."""
        with rp.record(name="t") as run:
            assert outer(1) == 13
        events = list(run.events())
        m = __name__
        assert [e.address for e in events] == [
            f"{m}:outer/0",
            f"{m}:outer/0 > {m}:add/0",
            f"{m}:outer/0 > {m}:add/1",
        ]
        assert [e.parent_seq for e in events] == [None, 0, 0]
        assert [e.kind for e in events] == ["agent", "tool", "tool"]
        (root,) = build_tree(events)
        assert [c.seq for c in root.children] == [1, 2]

    def test_inputs_bound_to_names_with_defaults(self) -> None:
        """Arguments are stored by parameter name, defaults filled in."""
        with rp.record() as run:
            outer(2)
        inputs = [e.input for e in run.events()]
        assert inputs == [{"n": 2}, {"a": 2, "b": 10}, {"a": 2, "b": 1}]

    def test_methods_leave_self_out(self) -> None:
        """self is not part of a method's recorded input."""
        with rp.record() as run:
            Service().lookup(7)
        (ev,) = list(run.events())
        assert ev.input == {"user_id": 7}
        assert ev.boundary == f"{__name__}:Service.lookup"

    def test_input_snapshotted_at_call_time(self) -> None:
        """A list mutated after the call is recorded as the call saw it."""

        @rp.boundary(kind="llm")
        def model(messages: list[dict[str, str]]) -> str:
            return "ok"

        messages = [{"role": "user", "content": "hi"}]
        with rp.record() as run:
            model(messages)
            messages.append({"role": "assistant", "content": "ok"})
        (ev,) = list(run.events())
        assert ev.input == {"messages": [{"role": "user", "content": "hi"}]}

    def test_run_environment_and_metadata(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A run records versions, code version (build id), host, tags and user metadata."""
        monkeypatch.setenv("REPLAYABLE_BUILD_ID", "build-42")
        with rp.record(name="env", tags={"env": "prod"}, metadata={"ticket": 7}) as run:
            add(1)
        stored = rp.open_store().get_run(run.id)
        env = stored.environment
        assert env["code_version"] == "build-42"
        assert env["replayable"] == rp.__version__
        assert env["python"].count(".") == 2
        assert env["host"]
        assert env["platform"]
        assert stored.tags == {"env": "prod"}
        assert stored.metadata == {"ticket": 7}
        assert stored.status == "ok"
        assert stored.event_count == 1
        assert stored.ended_at is not None
        assert stored.ended_at >= stored.started_at

    def test_annotate_adds_step_metadata(self) -> None:
        """rp.annotate inside a boundary lands in that step's meta."""

        @rp.boundary(kind="llm")
        def model() -> str:
            rp.annotate(model="m-1", usage={"input_tokens": 3})
            return "x"

        with rp.record() as run:
            model()
        (ev,) = list(run.events())
        assert ev.meta == {"model": "m-1", "usage": {"input_tokens": 3}}

    def test_hash_chain_verifies(self) -> None:
        """Events chain their hashes in write order, and the run keeps the head."""
        from replayable.trace import verify_run

        with rp.record() as run:
            outer(3)
        stored = rp.open_store().get_run(run.id)
        result = verify_run(stored, run.events())
        assert result.ok, result.problem
        assert stored.head_hash == result.head_hash


class TestErrors:
    def test_exception_recorded_and_run_marked_error(self) -> None:
        """An exception inside a boundary is recorded; the run still lands, status error."""

        @rp.boundary(kind="tool")
        def boom(x: int) -> None:
            raise ValueError("bad value", x)

        with pytest.raises(ValueError, match="bad value"), rp.record() as run:
            boom(3)
        stored = rp.open_store().get_run(run.id)
        assert stored.status == "error"
        assert stored.error is not None
        assert stored.error["type"] == "builtins:ValueError"
        (ev,) = list(run.events())
        assert ev.error == {
            "type": "builtins:ValueError",
            "message": "('bad value', 3)",
            "args": ["bad value", 3],
        }

    def test_unserializable_argument_is_a_marked_placeholder(self) -> None:
        """An argument with no JSON form records a placeholder and the path, with one warning."""
        with pytest.warns(rp.ReplayableWarning, match="thing") as warned, rp.record() as run:
            results = [takes_anything({"x": Opaque()}) for _ in range(2)]
        assert results == ["fine", "fine"]
        assert len(warned) == 1
        assert warned[0].filename == __file__  # the user's line, not one of replayable's
        first = next(iter(run.events()))
        marker = {"$unserializable": "thing.x", "type": f"{__name__}.Opaque"}
        assert first.input == {"thing": {"x": marker}}
        assert first.meta["unserializable_input"] == "thing.x"

    def test_unserializable_field_keeps_the_others(self) -> None:
        """Only the bad field becomes a marker: the other fields are stored and keyed."""

        @rp.boundary(kind="tool", ignore=["session"], name="lookup_user")
        def lookup_user(uid: int, session: Any) -> str:
            return f"user{uid}"

        @rp.boundary(kind="agent", name="two_lookups")
        def two_lookups(order: list[int]) -> list[str]:
            return [lookup_user(uid, Opaque()) for uid in order]

        with pytest.warns(rp.ReplayableWarning), rp.record() as run:
            two_lookups([1, 7])
        inputs = [e.input for e in run.events() if e.boundary == "lookup_user"]
        assert [i["uid"] for i in inputs] == [1, 7]
        with rp.replay(run.id, strict=False) as r:
            assert two_lookups([1, 7]) == ["user1", "user7"]
        assert r.ok

    def test_annotate_with_non_json_values_keeps_the_event(self) -> None:
        """A Decimal in step metadata is stored in its canonical form, not lost."""
        from decimal import Decimal

        @rp.boundary(kind="llm")
        def priced() -> str:
            rp.annotate(cost=Decimal("0.01"), weird=Opaque())
            return "x"

        with rp.record() as run:
            priced()
        (ev,) = list(run.events())
        assert ev.meta["cost"] == "0.01"
        assert ev.meta["weird"]["$unserializable"] == "weird"

    def test_run_error_is_redacted(self) -> None:
        """An exception ending the run is stored without the credentials in its message."""
        with pytest.raises(RuntimeError), rp.record() as run:
            raise RuntimeError("call failed: Authorization: Bearer abcdefghijklmnop")
        stored = rp.open_store().get_run(run.id)
        assert stored.error is not None
        assert "abcdefghijklmnop" not in str(stored.error)

    def test_custom_exception_attributes_round_trip(self) -> None:
        """Attributes a custom exception sets in __init__ are there in replay."""

        @rp.boundary(kind="tool", name="coded_failure")
        def coded_failure() -> None:
            raise CodeError(429)

        @rp.boundary(kind="agent", name="handles_codes")
        def handles_codes() -> int:
            try:
                coded_failure()
            except CodeError as exc:
                return exc.code
            return 0

        with rp.record() as run:
            assert handles_codes() == 429
        with rp.replay(run.id):
            assert handles_codes() == 429

    def test_unserializable_output_is_not_served_silently(self) -> None:
        """Replay refuses to serve an output that was only recorded as a placeholder."""

        @rp.boundary(kind="tool", name="make_opaque")
        def make_opaque() -> Opaque:
            return Opaque()

        @rp.boundary(kind="agent", name="uses_opaque")
        def uses_opaque() -> None:
            make_opaque()

        with pytest.warns(rp.ReplayableWarning), rp.record() as run:
            uses_opaque()
        with pytest.raises(rp.ReplayableError, match="give the boundary a codec"):
            with rp.replay(run.id):
                uses_opaque()

    def test_strict_recording_raises_on_unserializable(self) -> None:
        """strict=True turns an unserializable argument into an error."""
        with pytest.raises(rp.Unserializable), rp.record(strict=True):
            takes_anything(Opaque())

    def test_store_failure_is_fail_open(
        self, store_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """If the store rejects writes, the agent keeps its results; one warning is logged."""
        rp.open_store()  # creates the schema
        with sqlite3.connect(store_path) as db:
            db.execute("DROP TABLE events")
        caplog.set_level(logging.WARNING, logger="replayable")
        with rp.record() as run:
            results = [add(i) for i in range(50)]
        assert results == [i + 10 for i in range(50)]
        assert run.status == "ok"
        assert rp.flush() is False  # the store refused: the writer keeps the events
        warnings = [r for r in caplog.records if "cannot write to store" in r.getMessage()]
        assert len(warnings) == 1

    def test_strict_store_failure_raises(self, store_path: Path) -> None:
        """With strict=True a store that cannot be written fails the recording."""
        rp.open_store()
        with sqlite3.connect(store_path) as db:
            db.execute("DROP TABLE events")
        with pytest.raises(rp.StoreUnavailable), rp.record(strict=True):
            add(1)


class TestContexts:
    def test_async_record_context(self) -> None:
        """record() works as an async context manager."""

        @rp.boundary(kind="tool")
        async def fetch(x: int) -> int:
            await asyncio.sleep(0)
            return x

        async def main() -> rp.Run:
            async with rp.record() as run:
                await fetch(1)
            return run

        run = asyncio.run(main())
        assert [e.output for e in run.events()] == [1]

    def test_outside_a_run_calls_straight_through(self) -> None:
        """With no active run a boundary is a plain call and records nothing."""
        assert add(1) == 11
        assert rp.open_store().list_runs() == []

    def test_nested_record_is_refused(self) -> None:
        """Starting a record inside a record is an error, not a silent mix of two runs."""
        with rp.record(), pytest.raises(rp.ReplayableError, match="already active"):
            with rp.record():
                pass

    def test_bind_carries_context_into_thread_pool(self) -> None:
        """rp.bind makes a raw ThreadPoolExecutor call nest under the current step."""
        from concurrent.futures import ThreadPoolExecutor

        @rp.boundary(kind="agent")
        def fan_out() -> list[int]:
            with ThreadPoolExecutor(4) as pool:
                return list(pool.map(rp.bind(add), range(4)))

        with rp.record() as run:
            fan_out()
        events = list(run.events())
        assert len(events) == 5
        assert all(e.parent_seq == 0 for e in events[1:])


class TestLifecycleEdges:
    def test_stream_error_keeps_its_chunks(self) -> None:
        """A stream that fails after some chunks replays those chunks, then the error."""

        @rp.boundary(kind="llm", name="flaky_stream")
        def flaky_stream() -> Iterator[str]:
            yield "a"
            yield "b"
            raise ValueError("connection reset")

        @rp.boundary(kind="agent", name="reads_stream")
        def reads_stream() -> list[str]:
            got: list[str] = []
            try:
                got.extend(flaky_stream())
            except ValueError as exc:
                got.append(f"error: {exc}")
            return got

        with rp.record() as run:
            first = reads_stream()
        assert first == ["a", "b", "error: connection reset"]
        with rp.replay(run.id) as r:
            assert reads_stream() == first
        assert r.ok

    def test_a_call_finishing_after_the_run_is_not_recorded(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A generator drained after the block: recorded as never started, the late chunks
        dropped with a warning; the run verifies."""
        from replayable.trace import verify_run

        @rp.boundary(kind="tool", name="late_gen")
        def late_gen() -> Iterator[int]:
            yield 1

        caplog.set_level(logging.WARNING, logger="replayable")
        with rp.record() as run:
            add(1)
            g = late_gen()
        assert list(g) == [1]
        stored = rp.open_store().get_run(run.id)
        events = list(stored.events())
        assert [e.boundary.rsplit(":", 1)[-1] for e in events] == ["add", "late_gen"]
        assert events[1].meta["never_started"] is True
        assert events[1].output == []
        result = verify_run(stored, events)
        assert result.ok, result.problem
        assert result.head_hash == stored.head_hash
        assert any("after run" in r.getMessage() for r in caplog.records)

    def test_a_stream_never_iterated_still_replays(self) -> None:
        """A generator created and dropped unread is part of the recording; replay matches."""

        @rp.boundary(kind="llm", name="maybe_stream")
        def maybe_stream(n: int) -> Iterator[int]:
            yield from range(n)

        @rp.boundary(kind="agent", name="uses_second")
        def uses_second() -> list[int]:
            maybe_stream(1)  # created, never read
            return list(maybe_stream(3))

        with rp.record() as run:
            assert uses_second() == [0, 1, 2]
        with rp.replay(run.id) as r:
            assert uses_second() == [0, 1, 2]
        assert r.ok

    def test_generator_send_and_throw_reach_the_function(self) -> None:
        """send() and throw() pass through a recorded generator as through the plain one."""

        @rp.boundary(kind="tool", name="echo_gen")
        def echo_gen() -> Iterator[str]:
            got = yield "ready"
            while True:
                try:
                    got = yield f"echo {got}"
                except KeyError:
                    yield "handled"
                    return

        def drive() -> list[str]:
            g = echo_gen()
            return [next(g), g.send(1), g.send(2), g.throw(KeyError("k"))]

        plain = drive()
        with rp.record() as run:
            assert drive() == plain == ["ready", "echo 1", "echo 2", "handled"]
        (ev,) = list(run.events())
        assert ev.output == plain

    def test_exit_in_another_task_still_finishes_the_run(self) -> None:
        """An async record entered in one task and exited in another is still finished."""

        async def main() -> rp.Run:
            cm = rp.record()
            run = await asyncio.create_task(cm.__aenter__())
            with pytest.warns(rp.ReplayableWarning, match=r"rp\.bind"):
                add(1)  # this task never saw the run: not recorded, and said so
            await asyncio.create_task(cm.__aexit__(None, None, None))
            return run

        run = asyncio.run(main())
        assert rp.open_store().get_run(run.id).status == "ok"

    def test_recording_in_a_forked_child(self, store_path: Path) -> None:
        """After fork, the child records with a writer of its own (no stall, run stored)."""
        import multiprocessing

        with rp.record() as parent_run:
            add(1)
        ctx = multiprocessing.get_context("fork")
        child = ctx.Process(target=_record_in_child, args=(str(store_path),))
        child.start()
        child.join(20)
        assert child.exitcode == 0
        names = {r.name for r in rp.open_store().list_runs()}
        assert {"child"} <= names
        assert parent_run.status == "ok"


def _record_in_child(store: str) -> None:
    with rp.record(store, name="child"):
        add(2)


class TestInvisibleToTheAgent:
    def test_recording_leaves_the_agents_random_sequence_alone(self) -> None:
        """Starting runs draws nothing from the global ``random``: a seeded agent sees the
        same numbers recorded or not."""
        random.seed(7)
        plain = [random.random() for _ in range(3)]
        random.seed(7)
        seen = []
        for _ in range(3):
            with rp.record():
                seen.append(random.random())
        assert seen == plain

    def test_an_agent_that_seeds_random_still_gets_distinct_run_ids(self) -> None:
        """Run ids do not repeat when the agent reseeds the global generator before each run."""
        ids = set()
        for _ in range(20):
            random.seed(0)
            with rp.record() as run:
                pass
            ids.add(run.id)
        assert len(ids) == 20
