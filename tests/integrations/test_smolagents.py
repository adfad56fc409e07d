"""smolagents 1.26: a ``ToolCallingAgent`` on ``OpenAIServerModel`` and on ``LiteLLMModel`` with a
SQLite side-effect tool, recorded against the loopback model server, replayed with it stopped."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import pytest
from tests.integrations.conftest import API_KEY
from tests.integrations.fakeserver import FakeLLMServer
from tests.integrations.orders import Orders

import replayable as rp
from replayable.errors import Divergence, UnsupportedClient

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no model-price download

from smolagents import LiteLLMModel, OpenAIServerModel, ToolCallingAgent, tool

TASK = "Two mugs, please."
MODELS = ["openai", "litellm"]
LLM_STEP = {"openai": "openai:chat.completions.create", "litellm": "litellm:completion"}


@pytest.fixture
def orders(tmp_path: Path) -> Orders:
    return Orders(tmp_path / "orders.db")


def model(server: FakeLLMServer, kind: str) -> Any:
    if kind == "openai":
        return OpenAIServerModel("gpt-4o-mini", api_base=server.openai_url, api_key=API_KEY)
    return LiteLLMModel("openai/gpt-4o-mini", api_base=server.openai_url, api_key=API_KEY)


def build(server: FakeLLMServer, orders: Orders, kind: str, **options: Any) -> Any:
    @tool
    def place_order(item: str, quantity: int) -> str:
        """Order `quantity` of `item`.

        Args:
            item: what to order
            quantity: how many
        """
        return orders.place(item, quantity)

    agent = ToolCallingAgent(
        tools=[place_order], model=model(server, kind), max_steps=2, verbosity_level=0, **options
    )
    return rp.instrument(agent, side_effects=["place_order"])


class TestRecordThenReplayOffline:
    @pytest.mark.parametrize("kind", MODELS)
    def test_the_agent_replays_with_the_model_stopped(
        self, server: FakeLLMServer, orders: Orders, kind: str
    ) -> None:
        """Model calls and tool calls are steps; the replay sends no request, places no order
        and returns the recorded answer."""
        with rp.record() as run:
            answer = build(server, orders, kind).run(TASK)
        names = [e.boundary for e in run.events() if e.parent_seq is None]
        assert names[:2] == [LLM_STEP[kind], "smolagents.tool:place_order"]
        placed, seen = orders.count(), len(server.requests)
        assert placed == names.count("smolagents.tool:place_order") >= 1
        server.stop()
        with rp.replay(run.id) as r:
            assert build(server, orders, kind).run(TASK) == answer
        assert r.ok
        assert orders.count() == placed
        assert len(server.requests) == seen

    def test_a_changed_prompt_diverges_at_the_first_model_call(
        self, server: FakeLLMServer, orders: Orders
    ) -> None:
        """A different task is a divergence at the first model call, before any tool runs."""
        with rp.record() as run:
            build(server, orders, "openai").run(TASK)
        placed = orders.count()
        server.stop()
        with pytest.raises(Divergence) as info:
            with rp.replay(run.id):
                build(server, orders, "openai").run("Three mugs, please.")
        assert info.value.boundary == LLM_STEP["openai"]
        assert orders.count() == placed


class TestRefusals:
    def test_side_effects_must_name_held_tools(self, server: FakeLLMServer, orders: Orders) -> None:
        """A side_effects name the agent does not hold is an error, not ignored."""
        agent = ToolCallingAgent(tools=[], model=model(server, "openai"), verbosity_level=0)
        with pytest.raises(UnsupportedClient, match="not hold"):
            rp.instrument(agent, side_effects=["refund"])
