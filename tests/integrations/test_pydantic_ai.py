"""Pydantic AI: a tool-using ``Agent`` on an OpenAI model served by the loopback server;
replayed with the server stopped."""

from __future__ import annotations

import asyncio
import inspect
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integrations.conftest import API_KEY
from tests.integrations.fakeserver import FakeLLMServer
from tests.integrations.orders import Orders

import replayable as rp
from replayable.errors import Divergence, SideEffectRefused, UnsupportedClient

PROMPT = "Two mugs to Paris, please."


@pytest.fixture
def orders(tmp_path: Path) -> Orders:
    return Orders(tmp_path / "orders.db")


CLIENTS: list[Any] = []


@pytest.fixture(autouse=True)
def _close_sync_clients(request: pytest.FixtureRequest) -> Iterator[None]:
    """Close the SDK clients a sync test opened, on the event loop run_sync ran them on."""
    yield
    if not inspect.iscoroutinefunction(request.function):
        from pydantic_ai._utils import get_event_loop

        clients, CLIENTS[:] = list(CLIENTS), []
        loop = get_event_loop()
        for client in clients:
            loop.run_until_complete(client.close())
        loop.close()
        asyncio.set_event_loop(None)


@pytest.fixture
async def aclose() -> AsyncIterator[None]:
    """Close the SDK clients an async test opened, on the test's own event loop."""
    yield
    clients, CLIENTS[:] = list(CLIENTS), []
    for client in clients:
        await client.close()


def model(server: FakeLLMServer) -> Any:
    """An OpenAI chat model on the loopback server."""
    import openai
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    client = openai.AsyncOpenAI(base_url=server.openai_url, api_key=API_KEY)
    CLIENTS.append(client)
    return OpenAIChatModel("gpt-4o-mini", provider=OpenAIProvider(openai_client=client))


def toolset(orders: Orders) -> Any:
    """place_order (a side effect, called first by the server) and check_stock."""
    from pydantic_ai import FunctionToolset

    def place_order(item: str, quantity: int) -> str:
        """Order `quantity` of `item`."""
        return orders.place(item, quantity)

    def check_stock(item: str) -> str:
        """How many of `item` are in stock."""
        return f"{item}: 12 in stock"

    return FunctionToolset([place_order, check_stock])


def double_quantity(tools: Any) -> Any:
    """A toolset wrapper that changes the tool's arguments (a fix a replay should catch)."""
    from pydantic_ai.toolsets import WrapperToolset

    class Doubled(WrapperToolset[Any]):
        async def call_tool(self, name: str, tool_args: dict[str, Any], ctx: Any, tool: Any) -> Any:
            args = {**tool_args, "quantity": tool_args["quantity"] * 2}
            return await super().call_tool(name, args, ctx, tool)

    return Doubled(tools)


def build(
    server: FakeLLMServer,
    orders: Orders,
    *,
    instructions: str = "Be brief.",
    wrap: Any = None,
    **options: Any,
) -> Any:
    from pydantic_ai import Agent

    tools = toolset(orders)
    agent = Agent(
        model(server),
        instructions=instructions,
        toolsets=[wrap(tools) if wrap else tools],
        **options,
    )
    return rp.instrument(agent, side_effects=["place_order"])


@pytest.fixture
def agent(server: FakeLLMServer, orders: Orders) -> Any:
    return build(server, orders)


async def streamed(agent: Any) -> list[str]:
    async with agent.run_stream(PROMPT) as result:
        return [t async for t in result.stream_text(delta=True, debounce_by=None)]


class TestAgent:
    def test_run_sync_replays_offline_without_reordering(
        self, agent: Any, server: FakeLLMServer, orders: Orders
    ) -> None:
        """run_sync: the same output with the server stopped, no request, no second order."""
        with rp.record() as run:
            result = agent.run_sync(PROMPT)
        assert orders.count() == 1
        names = [(e.kind, e.boundary) for e in rp.open_store(None).iter_events(run.id)]
        assert names == [
            ("llm", "pydantic_ai:model.request"),
            ("tool", "pydantic_ai:tool.place_order"),
            ("llm", "pydantic_ai:model.request"),
        ]
        server.stop()
        seen = len(server.requests)
        with rp.replay(run.id) as r:
            again = agent.run_sync(PROMPT)
        assert again.output == result.output
        assert again.usage == result.usage
        assert len(server.requests) == seen
        assert orders.count() == 1
        assert r.ok

    async def test_run_stream_replays_the_recorded_tokens(
        self, agent: Any, server: FakeLLMServer, orders: Orders, aclose: None
    ) -> None:
        """run_stream: the replay streams the same text deltas, event by event."""
        async with rp.record() as run:
            tokens = await streamed(agent)
        assert len(tokens) > 2
        server.stop()
        async with rp.replay(run.id) as r:
            again = await streamed(agent)
        assert again == tokens
        assert orders.count() == 1
        assert r.ok

    async def test_iter_and_async_run_replay_offline(
        self, agent: Any, server: FakeLLMServer, orders: Orders, aclose: None
    ) -> None:
        """agent.iter (node by node) and agent.run go through the same boundaries."""
        async with rp.record() as run:
            async with agent.iter(PROMPT) as agent_run:
                nodes = [type(node).__name__ async for node in agent_run]
            output = agent_run.result.output
        server.stop()
        async with rp.replay(run.id) as r:
            async with agent.iter(PROMPT) as agent_run:
                again = [type(node).__name__ async for node in agent_run]
        assert again == nodes
        assert agent_run.result.output == output
        async with rp.replay(run.id) as r2:
            result = await agent.run(PROMPT)
        assert result.output == output
        assert orders.count() == 1
        assert r.ok
        assert r2.ok

    async def test_an_unstreamed_recording_serves_a_streamed_replay(
        self, agent: Any, server: FakeLLMServer, aclose: None
    ) -> None:
        """Recorded with run, replayed with run_stream: the same text arrives."""
        async with rp.record() as run:
            result = await agent.run(PROMPT)
        server.stop()
        async with rp.replay(run.id) as r:
            tokens = await streamed(agent)
        assert "".join(tokens) == result.output
        assert r.ok

    def test_max_retries_copies_of_the_sdk_client_are_still_served(
        self, server: FakeLLMServer, orders: Orders
    ) -> None:
        """model_settings max_retries makes Pydantic AI use a with_options copy of the OpenAI
        client; recording at the Model level does not care."""
        agent = build(server, orders, model_settings={"max_retries": 1})
        with rp.record() as run:
            result = agent.run_sync(PROMPT)
        server.stop()
        seen = len(server.requests)
        with rp.replay(run.id) as r:
            again = agent.run_sync(PROMPT)
        assert again.output == result.output
        assert len(server.requests) == seen
        assert r.ok

    def test_changed_instructions_diverge_at_the_model_request(
        self, server: FakeLLMServer, orders: Orders
    ) -> None:
        """New instructions: the divergence names the model request and the field."""
        with rp.record() as run:
            build(server, orders).run_sync(PROMPT)
        fixed = build(server, orders, instructions="Be brief. One item per order.")
        server.stop()
        with pytest.raises(Divergence) as exc, rp.replay(run.id):
            fixed.run_sync(PROMPT)
        assert exc.value.boundary == "pydantic_ai:model.request"
        assert [c.path for c in exc.value.changes] == [
            "messages[0].instructions",
            "parameters.instruction_parts[0].content",
        ]
        assert orders.count() == 1

    def test_a_changed_tool_argument_diverges_at_the_tool(
        self, server: FakeLLMServer, orders: Orders
    ) -> None:
        """A toolset wrapper that changes the arguments: the tool call diverges on `quantity`."""
        with rp.record() as run:
            build(server, orders).run_sync(PROMPT)
        changed = build(server, orders, wrap=double_quantity)
        server.stop()
        with pytest.raises(Divergence) as exc, rp.replay(run.id):
            changed.run_sync(PROMPT)
        assert exc.value.boundary == "pydantic_ai:tool.place_order"
        assert [c.path for c in exc.value.changes] == ["quantity"]
        assert orders.count() == 1

    def test_a_side_effect_tool_cannot_run_live(self, agent: Any) -> None:
        """live=["place_order"] is refused; check_stock is not a side effect and may run."""
        with rp.record() as run:
            agent.run_sync(PROMPT)
        with pytest.raises(SideEffectRefused, match="place_order"):
            rp.replay(run.id, live=["place_order"])


class TestBadInput:
    def test_an_unknown_side_effect_tool_is_refused(
        self, server: FakeLLMServer, orders: Orders
    ) -> None:
        """A tool name the agent does not have is an error listing its tools."""
        from pydantic_ai import Agent

        agent = Agent(model(server), toolsets=[toolset(orders)])
        with pytest.raises(UnsupportedClient, match=r"plaec_order.*check_stock, place_order"):
            rp.instrument(agent, side_effects=["plaec_order"])

    def test_an_agent_without_a_model_is_refused(self) -> None:
        """The model is where requests are recorded: an agent without one says so."""
        from pydantic_ai import Agent

        with pytest.raises(UnsupportedClient, match="no model"):
            rp.instrument(Agent())

    def test_a_model_is_wrapped(self, server: FakeLLMServer) -> None:
        """rp.instrument(model) returns a wrapper model recording its requests."""
        from pydantic_ai.models.wrapper import WrapperModel

        wrapped = rp.instrument(model(server))
        assert isinstance(wrapped, WrapperModel)
        assert rp.instrument(wrapped) is wrapped
