"""Google ADK 2.13: an ``LlmAgent`` on ``LiteLlm`` with a SQLite side-effect tool, run by
``InMemoryRunner`` against the loopback model server and replayed with it stopped, whichever
order instrumenting and the first model call happen in."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest
from tests.integrations.conftest import API_KEY
from tests.integrations.fakeserver import FakeLLMServer
from tests.integrations.orders import Orders

import replayable as rp
from replayable.errors import Divergence, UnsupportedClient

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no model-price download

from google.adk.agents import LlmAgent
from google.adk.models.lite_llm import LiteLlm
from google.adk.runners import InMemoryRunner
from google.genai import types

TASK = "Two mugs, please."

# Importing ADK's auth stack for the first time in a process warns about a TypedDict (pydantic).
pytestmark = pytest.mark.filterwarnings("ignore:Items .* on TypedDict class:UserWarning")


@pytest.fixture
def orders(tmp_path: Path) -> Orders:
    return Orders(tmp_path / "orders.db")


def build(server: FakeLLMServer, orders: Orders, instruction: str = "Be brief.") -> Any:
    def place_order(item: str, quantity: int) -> str:
        """Order `quantity` of `item`."""
        return orders.place(item, quantity)

    model = LiteLlm(model="openai/gpt-4o-mini", api_base=server.openai_url, api_key=API_KEY)
    return LlmAgent(name="shop", model=model, instruction=instruction, tools=[place_order])


async def run_agent(agent: Any, task: str = TASK) -> str:
    """The agent run as ADK's quickstart runs it: an in-memory runner and session."""
    runner = InMemoryRunner(agent=agent, app_name="shop")
    try:
        session = await runner.session_service.create_session(app_name="shop", user_id="u")
        final = ""
        message = types.Content(role="user", parts=[types.Part(text=task)])
        async for event in runner.run_async(
            user_id="u", session_id=session.id, new_message=message
        ):
            if event.is_final_response() and event.content and event.content.parts:
                final = str(event.content.parts[0].text)
        return final
    finally:
        await runner.close()


class TestRecordThenReplayOffline:
    async def test_the_agent_replays_with_the_model_stopped(
        self, server: FakeLLMServer, orders: Orders
    ) -> None:
        """Model calls and the tool are steps; the replay sends no request, places no order
        and ends with the recorded answer."""
        agent = rp.instrument(build(server, orders), side_effects=["place_order"])
        async with rp.record() as run:
            answer = await run_agent(agent)
        names = [e.boundary for e in run.events()]
        assert names == ["litellm:acompletion", "adk.tool:place_order", "litellm:acompletion"]
        assert orders.count() == 1
        seen = len(server.requests)
        server.stop()
        agent = rp.instrument(build(server, orders), side_effects=["place_order"])
        async with rp.replay(run.id) as r:
            assert await run_agent(agent) == answer
        assert r.ok
        assert orders.count() == 1
        assert len(server.requests) == seen

    async def test_a_changed_instruction_diverges_at_the_first_model_call(
        self, server: FakeLLMServer, orders: Orders
    ) -> None:
        """A changed instruction is a divergence at the first model call."""
        async with rp.record() as run:
            await run_agent(rp.instrument(build(server, orders), side_effects=["place_order"]))
        server.stop()
        changed = rp.instrument(build(server, orders, "Be terse."), side_effects=["place_order"])
        with pytest.raises(Divergence) as info:
            async with rp.replay(run.id):
                await run_agent(changed)
        assert info.value.boundary == "litellm:acompletion"
        assert orders.count() == 1


SCRIPT = """
import asyncio, json, os, sys
sys.path.insert(0, os.environ["REPO"])
os.environ["LITELLM_LOCAL_MODEL_COST_MAP"] = "True"
import replayable as rp
from tests.integrations.test_google_adk import build, run_agent
from tests.integrations.fakeserver import FakeLLMServer
from tests.integrations.orders import Orders
from pathlib import Path

async def main():
    server = FakeLLMServer(seed=2).start()
    orders = Orders(Path(os.environ["DB"]))
    await run_agent(build(server, orders))          # ADK's first model call, uninstrumented
    agent = rp.instrument(build(server, orders), side_effects=["place_order"])
    async with rp.record() as run:
        answer = await run_agent(agent)
    seen = len(server.requests)
    server.stop()
    async with rp.replay(run.id):
        again = await run_agent(rp.instrument(build(server, orders), side_effects=["place_order"]))
    print(json.dumps({"names": [e.boundary for e in run.events()], "same": again == answer,
                      "after": len(server.requests) - seen, "orders": orders.count()}))

asyncio.run(main())
"""


class TestOrderDoesNotMatter:
    def test_instrumenting_after_the_first_model_call_still_records(self, tmp_path: Path) -> None:
        """ADK copied LiteLLM's function at its first call, before instrumenting: the run
        still records its model calls and replays offline (a fresh interpreter, so ADK's first
        call really is the first)."""
        script = tmp_path / "order.py"
        script.write_text(textwrap.dedent(SCRIPT))
        repo = str(Path(__file__).resolve().parents[2])
        done = subprocess.run(
            [sys.executable, str(script)],
            capture_output=True,
            text=True,
            env={**os.environ, "REPO": repo, "DB": str(tmp_path / "o.db")},
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        import json

        out = json.loads(done.stdout.strip().splitlines()[-1])
        assert out["names"] == [
            "litellm:acompletion",
            "adk.tool:place_order",
            "litellm:acompletion",
        ]
        assert out["same"] is True
        assert out["after"] == 0
        assert out["orders"] == 2  # the uninstrumented warm-up run and the recorded one


class TestRefusals:
    def test_side_effects_must_name_held_tools(self, server: FakeLLMServer, orders: Orders) -> None:
        """A side_effects name the agent does not hold is an error, not ignored."""
        with pytest.raises(UnsupportedClient, match="not hold"):
            rp.instrument(build(server, orders), side_effects=["refund"])
