"""AutoGen AgentChat 0.7.5: an ``AssistantAgent`` on ``OpenAIChatCompletionClient`` with sync and
async tools (one a SQLite side effect), recorded against the loopback model server and replayed
with it stopped."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from autogen_agentchat.agents import AssistantAgent
from autogen_ext.models.openai import OpenAIChatCompletionClient
from tests.integrations.conftest import API_KEY
from tests.integrations.fakeserver import FakeLLMServer
from tests.integrations.orders import Orders

import replayable as rp
from replayable.errors import Divergence, UnsupportedClient

TASK = "Two mugs to Paris, please."

# The loopback server names its model "<requested>-2025"; AutoGen warns about the mismatch.
pytestmark = pytest.mark.filterwarnings("ignore:Resolved model mismatch:UserWarning")


@pytest.fixture
def orders(tmp_path: Path) -> Orders:
    return Orders(tmp_path / "orders.db")


CLIENTS: list[Any] = []


@pytest.fixture(autouse=True)
async def _close_clients() -> AsyncIterator[None]:
    """Close every model client a test opened, on the test's own event loop."""
    yield
    clients, CLIENTS[:] = list(CLIENTS), []
    for c in clients:
        await c.close()


def client(server: FakeLLMServer) -> Any:
    """The client as AutoGen documents it for an OpenAI-compatible server (its model info
    given, since the server names its own model)."""
    made = OpenAIChatCompletionClient(
        model="shop-model",
        base_url=server.openai_url,
        api_key=API_KEY,
        max_retries=0,
        model_info={
            "vision": False,
            "function_calling": True,
            "json_output": True,
            "family": "unknown",
            "structured_output": True,
        },
    )
    CLIENTS.append(made)
    return made


def sync_tools(orders: Orders) -> list[Callable[..., Any]]:
    def place_order(item: str, quantity: int) -> str:
        """Order `quantity` of `item`."""
        return orders.place(item, quantity)

    def get_price(item: str) -> float:
        """The unit price of `item`."""
        return 4.5

    return [place_order, get_price]


def async_tools(orders: Orders) -> list[Callable[..., Any]]:
    async def place_order(item: str, quantity: int) -> str:
        """Order `quantity` of `item`."""
        return orders.place(item, quantity)

    async def get_price(item: str) -> float:
        """The unit price of `item`."""
        return 4.5

    return [place_order, get_price]


TOOLSETS = {"sync": sync_tools, "async": async_tools}


def agent(server: FakeLLMServer, orders: Orders, tools: str, **options: Any) -> Any:
    """The agent as AgentChat's docs build it, instrumented with one line."""
    built = AssistantAgent(
        "shop",
        model_client=client(server),
        tools=TOOLSETS[tools](orders),
        reflect_on_tool_use=True,
        **options,
    )
    return rp.instrument(built, side_effects=["place_order"])


async def final(a: Any, task: str = TASK) -> str:
    result = await a.run(task=task)
    return str(result.messages[-1].content)


class TestRecordThenReplayOffline:
    @pytest.mark.parametrize("tools", ["sync", "async"])
    async def test_the_agent_replays_with_the_model_stopped(
        self, server: FakeLLMServer, orders: Orders, tools: str
    ) -> None:
        """Model calls and tools are steps; the replay sends no request, places no order and
        ends with the recorded answer."""
        async with rp.record() as run:
            answer = await final(agent(server, orders, tools))
        names = [e.boundary for e in run.events()]
        assert names == ["autogen:create", "autogen.tool:place_order", "autogen:create"]
        assert orders.count() == 1
        seen = len(server.requests)
        assert seen == 2
        server.stop()
        async with rp.replay(run.id) as r:
            again = await final(agent(server, orders, tools))
        assert again == answer
        assert r.ok
        assert orders.count() == 1
        assert len(server.requests) == seen

    async def test_a_changed_prompt_diverges_at_the_first_model_call(
        self, server: FakeLLMServer, orders: Orders
    ) -> None:
        """A changed system message is a divergence at the first model call."""
        async with rp.record() as run:
            await final(agent(server, orders, "sync"))
        server.stop()
        with pytest.raises(Divergence) as info:
            async with rp.replay(run.id):
                await final(agent(server, orders, "sync", system_message="Be terse."))
        assert info.value.boundary == "autogen:create"
        assert orders.count() == 1

    async def test_streaming_replays_the_chunks_and_the_result(
        self, server: FakeLLMServer, orders: Orders
    ) -> None:
        """model_client_stream=True: create_stream is one streamed step, replayed in order."""
        async with rp.record() as run:
            answer = await final(agent(server, orders, "async", model_client_stream=True))
        assert "autogen:create_stream" in [e.boundary for e in run.events()]
        server.stop()
        async with rp.replay(run.id) as r:
            again = await final(agent(server, orders, "async", model_client_stream=True))
        assert again == answer
        assert r.ok


class TestSyncToolsKeepTheContext:
    async def test_a_user_boundary_in_a_sync_tool_is_recorded_without_bind(
        self, server: FakeLLMServer, orders: Orders
    ) -> None:
        """AgentChat runs sync tools through run_in_executor: a tool the user marked with
        @rp.boundary (the agent not instrumented, only its client) is still recorded and, in
        replay, served instead of firing."""

        @rp.boundary(kind="tool", side_effects=True, name="shop:place_order")
        def place_order(item: str, quantity: int) -> str:
            """Order `quantity` of `item`."""
            return orders.place(item, quantity)

        def build() -> Any:
            return AssistantAgent(
                "shop",
                model_client=rp.instrument(client(server)),
                tools=[place_order],
                reflect_on_tool_use=True,
            )

        async with rp.record() as run:
            answer = await final(build())
        assert [e.boundary for e in run.events()] == [
            "autogen:create",
            "shop:place_order",
            "autogen:create",
        ]
        server.stop()
        async with rp.replay(run.id) as r:
            assert await final(build()) == answer
        assert r.ok
        assert orders.count() == 1


class TestRefusals:
    def test_side_effects_must_name_held_tools(self, server: FakeLLMServer, orders: Orders) -> None:
        """A side_effects name the agent does not hold is an error, not ignored."""
        built = AssistantAgent("shop", model_client=client(server), tools=sync_tools(orders))
        with pytest.raises(UnsupportedClient, match="not hold"):
            rp.instrument(built, side_effects=["refund"])

    def test_a_model_client_takes_no_side_effects(self, server: FakeLLMServer) -> None:
        """side_effects on a model client is a mistake, said clearly."""
        with pytest.raises(UnsupportedClient, match="no tools"):
            rp.instrument(client(server), side_effects=["place_order"])
