"""Testing a fix with replay: a fallback cassette for calls a fix changed, a sandbox for tools."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

import replayable as rp

LIVE_CALLS: list[str] = []
WORLD: dict[str, list[int]] = {"real": [], "scratch": []}
ACTIVE = ["real"]
FIX = {"agent": False}


@rp.boundary(kind="llm", name="tests.fallback:model")
def model(prompt: str) -> str:
    """A model that answers from its prompt (each live call is counted)."""
    LIVE_CALLS.append(prompt)
    return f"reply to: {prompt}"


@rp.boundary(kind="tool", side_effects=True, name="tests.fallback:refund")
def refund(amount: int) -> dict[str, Any]:
    """Writes to whichever world is active; blocks large amounts once fixed."""
    if FIX.get("tool") and amount > 100:
        return {"status": "blocked", "amount": amount}
    WORLD[ACTIVE[-1]].append(amount)
    return {"status": "refunded", "amount": amount}


@rp.boundary(kind="agent", name="tests.fallback:agent")
def agent(amount: int) -> str:
    """Model, tool (unless the agent's own guard stops it), model."""
    if FIX.get("extra"):
        model("is this refund sane?")
    model(f"refund {amount}?")
    guarded = FIX["agent"] and amount > 100
    outcome = "blocked by the agent" if guarded else refund(amount)["status"]
    return model(f"tell the user: {outcome}")


@contextmanager
def scratch() -> Iterator[None]:
    """The test's world: refunds land in WORLD['scratch'] while it is open."""
    ACTIVE.append("scratch")
    try:
        yield
    finally:
        ACTIVE.pop()


@pytest.fixture
def incident(tmp_path: Path) -> Iterator[rp.Run]:
    """A recorded incident: a refund of 5000 went through."""
    FIX.clear()
    FIX["agent"] = False
    WORLD["real"].clear()
    WORLD["scratch"].clear()
    with rp.record(tmp_path / "store.db", name="incident") as run:
        agent(5000)
    LIVE_CALLS.clear()
    yield run
    FIX.clear()
    FIX["agent"] = False


class TestFallback:
    def test_changed_model_call_is_recorded_once_then_served(
        self, incident: rp.Run, tmp_path: Path
    ) -> None:
        """A fix changes the model's input: one live call the first time, none after."""
        FIX["agent"] = True
        tape = tmp_path / "fallback.jsonl"
        for _ in range(2):
            with rp.replay(incident, fallback=rp.cassette(tape), strict=False) as r:
                reply = agent(5000)
            assert reply == "reply to: tell the user: blocked by the agent"
        assert LIVE_CALLS == ["tell the user: blocked by the agent"]
        assert [d.boundary for d in r.fallback_calls] == ["tests.fallback:model"]
        assert all(d.boundary != "tests.fallback:model" for d in r.divergences)
        assert WORLD["real"] == [5000]  # only the recording's own refund, never a replay's

    def test_an_extra_model_call_is_recorded_once_then_served(
        self, incident: rp.Run, tmp_path: Path
    ) -> None:
        """A fix that adds a model turn: the calls the recording no longer matches go to the
        fallback (live the first time, served after), the tool still matches the recording."""
        FIX["extra"] = True
        tape = tmp_path / "fallback.jsonl"
        with rp.replay(incident, fallback=rp.cassette(tape), strict=False) as first:
            agent(5000)
        recorded_live = list(LIVE_CALLS)
        assert "is this refund sane?" in recorded_live
        with rp.replay(incident, fallback=rp.cassette(tape), strict=False) as second:
            agent(5000)
        assert recorded_live == LIVE_CALLS  # nothing new: all served
        assert len(second.fallback_calls) == len(first.fallback_calls) >= 1
        assert not second.divergences  # the refund matched the recording, served
        assert WORLD["real"] == [5000]

    def test_replay_mode_makes_a_miss_fail(
        self, incident: rp.Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """REPLAYABLE_MODE=replay (CI): a changed call the cassette lacks raises FixtureMiss."""
        FIX["agent"] = True
        monkeypatch.setenv("REPLAYABLE_MODE", "replay")
        with (
            pytest.raises(rp.FixtureMiss),
            rp.replay(incident, fallback=rp.cassette(tmp_path / "empty.jsonl"), strict=False),
        ):
            agent(5000)
        assert LIVE_CALLS == []

    def test_a_changed_side_effect_never_goes_to_the_fallback(
        self, incident: rp.Run, tmp_path: Path
    ) -> None:
        """A changed call to a side-effecting tool still diverges: a miss would fire it."""
        tape = tmp_path / "fallback.jsonl"
        with (
            pytest.raises(rp.Divergence, match="refund"),
            rp.replay(incident, fallback=rp.cassette(tape), strict=False),
        ):
            agent(7000)
        assert WORLD["real"] == [5000]

    def test_fallback_must_be_a_cassette(self, incident: rp.Run, tmp_path: Path) -> None:
        """Anything else is refused before the replay starts, and so is a what-if with it."""
        with pytest.raises(TypeError, match="fallback must be a cassette"):
            rp.replay(incident, fallback="tape.jsonl")  # type: ignore[arg-type]
        tape = rp.cassette(tmp_path / "t.jsonl")
        with pytest.raises(TypeError, match="does not combine"):
            rp.replay(incident, fallback=tape, live_kinds=("llm",))

    def test_works_in_async_agents(self, incident: rp.Run, tmp_path: Path) -> None:
        """The fallback is consulted by the engine for every call shape (here: async)."""

        @rp.boundary(kind="llm", name="tests.fallback:amodel")
        async def amodel(prompt: str) -> str:
            LIVE_CALLS.append(prompt)
            return prompt.upper()

        @rp.boundary(kind="agent", name="tests.fallback:aagent")
        async def aagent(prompt: str) -> str:
            return await amodel(prompt)

        with rp.record(tmp_path / "a.db") as run:
            asyncio.run(aagent("old"))
        tape = tmp_path / "async.jsonl"
        for _ in range(2):
            with rp.replay(run, fallback=rp.cassette(tape), strict=False):
                assert asyncio.run(aagent("new")) == "NEW"
        assert LIVE_CALLS == ["old", "new"]


class TestSandbox:
    def test_side_effect_runs_live_in_the_sandbox_only(
        self, incident: rp.Run, tmp_path: Path
    ) -> None:
        """live=[tool] with sandbox=: the fixed tool runs against the test's world."""
        FIX["tool"] = True
        with rp.replay(
            incident,
            live=["refund"],
            sandbox=scratch(),
            fallback=rp.cassette(tmp_path / "f.jsonl"),
            strict=False,
        ) as r:
            agent(5000)
            assert ACTIVE[-1] == "scratch"
        assert ACTIVE == ["real"]
        out = [e.output for e in r.run.events() if e.boundary == "tests.fallback:refund"]
        assert out == [{"status": "blocked", "amount": 5000}]
        assert WORLD == {"real": [5000], "scratch": []}

    def test_buggy_tool_acts_on_the_sandbox_not_the_world(self, incident: rp.Run) -> None:
        """The unfixed tool really runs: its effect lands in the sandbox."""
        with rp.replay(incident, live=["refund"], sandbox=scratch(), strict=False):
            agent(5000)
        assert WORLD == {"real": [5000], "scratch": [5000]}

    def test_without_sandbox_a_live_side_effect_is_refused(self, incident: rp.Run) -> None:
        """No world given and no allow_side_effects: refused before anything runs."""
        with pytest.raises(rp.SideEffectRefused, match="sandbox="):
            rp.replay(incident, live=["refund"])
        assert LIVE_CALLS == []

    def test_sandbox_is_left_when_the_agent_raises(self, incident: rp.Run) -> None:
        """The world is closed even when the replayed code fails."""
        with (
            pytest.raises(rp.Divergence),
            rp.replay(incident, live=["refund"], sandbox=scratch(), strict=False),
        ):
            agent(1)  # the first model call changed, and there is no fallback
        assert ACTIVE == ["real"]
