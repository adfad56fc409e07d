"""A2A: a message to a remote agent is a remote step; the agent's executor links its run; the
caller replays alone (agent not contacted) or follows into the agent's own replay."""

from __future__ import annotations

import base64
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from tests.integrations import a2a_services as booking
from tests.integrations.services import Sentinel, Uvicorn, free_port

import replayable as rp
from replayable import _propagation as prop
from replayable.cli import main
from replayable.store import Store

STEP = "a2a:message/send booking"


@pytest.fixture
def agent_store(tmp_path: Path) -> Store:
    """The booking agent's own store."""
    return rp.open_store(tmp_path / "booking-traces.db")


@pytest.fixture
def db(tmp_path: Path) -> str:
    """The booking agent's business database."""
    return str(tmp_path / "booking.db")


@pytest.fixture(autouse=True)
def _fresh() -> Iterator[None]:
    booking.BOOKING["version"] = 1
    booking.SEEN.clear()
    yield
    booking.BOOKING["version"] = 1


async def _record(db: str, store: Store, **kw: Any) -> tuple[rp.Run, int, str]:
    port = free_port()
    with Uvicorn(booking.booking_app(db, store, port, **kw), port):
        async with rp.record(name="agent") as run:
            answer = await booking.book(port, "bob", 2)
    return run, port, answer


def _callee(store: Store) -> rp.Run:
    (run,) = [r for r in store.list_runs() if r.parent_run is None]
    return run


class TestRecord:
    """A message sent inside a run is a remote step; the remote agent's run links to it."""

    async def test_the_agents_run_links_to_the_step(self, db: str, agent_store: Store) -> None:
        """The executor's run names the caller's run and step; its side effect records there."""
        run, _, answer = await _record(db, agent_store)
        assert answer == "booked 2 for bob as #1"
        (step,) = run.events()
        assert (step.boundary, step.kind) == (STEP, "remote")
        callee = _callee(agent_store)
        assert callee.parent == prop.Link(run.id, step.address)
        assert callee.trace_id == run.trace_id
        assert [e.boundary for e in callee.events()] == ["booking:insert_booking"]
        assert step.meta["linked"] == {"run": callee.id, "service": "booking"}

    async def test_the_context_stays_out_of_the_recording(
        self, db: str, agent_store: Store
    ) -> None:
        """Neither the caller's context nor the agent's answer entries reach the step."""
        run, _, _ = await _record(db, agent_store)
        (step,) = run.events()
        text = orjson.dumps([step.input, step.output]).decode()
        for marker in ("traceparent", "baggage", "replayable-linked", "replayable-follow"):
            assert marker not in text
        assert "messageId" not in orjson.dumps(step.input).decode()  # a new id every call
        assert step.meta["a2a"]["message_id"]

    async def test_show_is_one_tree(self, tmp_path: Path, db: str) -> None:
        """replayable show with both stores nests the agent's run under the A2A step."""
        caller_db, callee_db = tmp_path / "agent.db", tmp_path / "booking-traces.db"
        port = free_port()
        with Uvicorn(booking.booking_app(db, rp.open_store(callee_db), port), port):
            async with rp.record(caller_db, name="agent") as run:
                await booking.book(port, "bob", 2)
        rp.flush()
        result = CliRunner().invoke(
            main,
            ["show", run.id, "--store", str(caller_db), "--store", str(callee_db)],
            terminal_width=200,
        )
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        order = [
            next(i for i, line in enumerate(lines) if text in line)
            for text in (STEP, "booking: run ", "insert_booking")
        ]
        assert order == sorted(order)


class TestReplay:
    """The caller's replay serves the message, or follows it into the agent's own replay."""

    async def test_the_caller_alone_contacts_nobody(self, db: str, agent_store: Store) -> None:
        """Agent down: the events are served as the SDK's types; no connection reaches it."""
        run, port, answer = await _record(db, agent_store)
        with Sentinel(port) as sentinel:
            async with rp.replay(run.id) as r:
                again = await booking.book(port, "bob", 2)
            assert sentinel.connections() == 0
        assert again == answer
        assert r.ok, r.report()

    async def test_follow_replays_the_agent_with_nothing_refired(
        self, db: str, agent_store: Store
    ) -> None:
        """follow=True: the agent replays its linked run; its bookings stay as they were."""
        run, port, answer = await _record(db, agent_store)
        rows = booking.bookings(db)
        with Uvicorn(booking.booking_app(db, agent_store, port, follow=True), port):
            async with rp.replay(run.id, live=[STEP], follow=True) as r:
                again = await booking.book(port, "bob", 2)
        assert again == answer
        assert booking.bookings(db) == rows
        assert r.ok, r.report()
        (replayed,) = [x for x in agent_store.list_runs() if x.parent_run is not None]
        assert replayed.parent is not None
        assert replayed.parent.run == r.run.id
        assert next(replayed.events()).meta.get("served")

    async def test_a_change_in_the_agent_is_reported_in_the_caller(
        self, db: str, agent_store: Store
    ) -> None:
        """The agent's code changed: the caller's replay names it and its step address."""
        run, port, _ = await _record(db, agent_store)
        rows = booking.bookings(db)
        booking.BOOKING["version"] = 2
        with Uvicorn(booking.booking_app(db, agent_store, port, follow=True), port):
            async with rp.replay(run.id, live=[STEP], follow=True, strict=False) as r:
                await booking.book(port, "bob", 2)
        assert booking.bookings(db) == rows
        (div,) = r.divergences
        assert div.address == f"{STEP}/0 > booking: booking:insert_booking/0"
        assert "in service booking" in (div.detail or "")


class TestFollowSafety:
    """A message goes live under follow only to an agent that replays it."""

    async def test_an_agent_without_replayable_is_never_contacted(
        self, db: str, agent_store: Store
    ) -> None:
        """Recorded against a plain executor: refused before the replay starts."""
        run, port, _ = await _record(db, agent_store, linked=False)
        booking.SEEN.clear()
        with Uvicorn(booking.booking_app(db, agent_store, port, follow=True), port):
            with pytest.raises(rp.SideEffectRefused, match=f"{STEP} at {STEP}/0"):
                rp.replay(run.id, live=[STEP], follow=True)
        assert booking.SEEN == []

    async def test_a_production_agent_refuses_to_follow(self, db: str, agent_store: Store) -> None:
        """An executor served without follow=True refuses the follow message and does not run."""
        run, port, _ = await _record(db, agent_store)
        rows = booking.bookings(db)
        booking.SEEN.clear()
        with Uvicorn(booking.booking_app(db, agent_store, port), port):
            async with rp.replay(run.id, live=[STEP], follow=True, strict=False):
                with pytest.raises(Exception):  # noqa: B017 (the SDK's error for a failed task)
                    await booking.book(port, "bob", 2)
        assert booking.SEEN == []
        assert booking.bookings(db) == rows


def _raw(port: int, metadata: dict[str, Any]) -> dict[str, Any]:
    """A message/send JSON-RPC call made by hand (a forged caller), its answer's JSON."""
    import httpx

    body = {
        "jsonrpc": "2.0",
        "id": "1",
        "method": "SendMessage",
        "params": {
            "message": {
                "role": "ROLE_USER",
                "messageId": "m1",
                "parts": [{"text": "eve:1"}],
                "metadata": metadata,
            }
        },
    }
    reply = httpx.post(
        f"http://127.0.0.1:{port}/a2a/jsonrpc", json=body, headers={"A2A-Version": "1.0"}
    )
    return dict(reply.json())


FORGED = {
    "bad traceparent": {"traceparent": "00-zz", "baggage": "replayable=1!r1!record!a"},
    "huge baggage": {
        "traceparent": f"00-{'a' * 32}-{'1' * 16}-01",
        "baggage": "replayable=1!r1!record!" + "a" * 9000,
    },
    "path run id": {
        "traceparent": f"00-{'a' * 32}-{'1' * 16}-01",
        "baggage": "replayable=1!..%2F..%2Fetc!record!a",
    },
    "not a string": {"traceparent": 7, "baggage": ["replayable=1!r1!record!a"]},
}


class TestForgedMetadata:
    """Context in message metadata is untrusted: malformed context links nothing."""

    @pytest.mark.parametrize("case", sorted(FORGED))
    def test_ignored(
        self, case: str, db: str, agent_store: Store, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The message is handled as one without context: no linked run, no answer entries."""
        caplog.set_level(logging.WARNING, "replayable")
        port = free_port()
        with Uvicorn(booking.booking_app(db, agent_store, port), port):
            answer = _raw(port, FORGED[case])
        assert "result" in answer, answer
        assert "replayable-linked" not in orjson.dumps(answer).decode()
        assert [r for r in agent_store.list_runs() if r.parent is not None] == []
        assert booking.SEEN == ["eve:1"]

    def test_a_forged_follow_is_refused_not_trusted(self, db: str, agent_store: Store) -> None:
        """A follow naming another caller's recorded step replays nothing and runs nothing."""
        port = free_port()
        metadata = {
            "traceparent": f"00-{'a' * 32}-{'1' * 16}-01",
            "baggage": prop.baggage_entry("r2", "x/0", "follow", prop.Link("victim", "y/0")),
        }
        with Uvicorn(booking.booking_app(db, agent_store, port, follow=True), port):
            answer = _raw(port, metadata)
        assert "replayable-follow" not in orjson.dumps(answer).decode()
        assert booking.SEEN == []
        assert booking.bookings(db) == []

    def test_an_unasked_follow_report_is_ignored(self) -> None:
        """A report in an answer to a request that did not ask to follow adds no divergence."""
        from replayable.integrations.a2a import _take_markers

        forged = base64.urlsafe_b64encode(
            orjson.dumps({"run": "x", "divergences": [{"reason": "changed", "address": "a"}]})
        ).decode()
        event = {"message": {"metadata": {"replayable-follow": forged}, "parts": []}}
        _take_markers(event, False, "booking")
        assert event == {"message": {"parts": []}}
