"""The OpenAI Agents SDK: ``rp.instrument(agent)`` + ``Runner.run*`` record and replay offline,
against the sampling loopback server and a real stdio MCP server subprocess."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import openai
import pytest
from agents import (
    Agent,
    OpenAIChatCompletionsModel,
    Runner,
    function_tool,
    set_default_openai_client,
    set_tracing_disabled,
)
from agents.models import _openai_shared
from tests.integrations.conftest import API_KEY
from tests.integrations.fakeserver import FakeLLMServer
from tests.integrations.orders import Orders

import replayable as rp
from replayable.errors import Divergence, SideEffectRefused, UnsupportedClient

SHOP_SERVER = Path(__file__).with_name("mcp_shop_server.py")
QUESTION = "Order some mugs for the office, please."


@pytest.fixture
def orders(tmp_path: Path) -> Orders:
    return Orders(tmp_path / "orders.db")


def use_default_client(server: FakeLLMServer) -> openai.AsyncOpenAI:
    """The agents SDK's documented setup, pointed at the loopback server."""
    client = openai.AsyncOpenAI(base_url=server.openai_url, api_key=API_KEY, max_retries=0)
    set_default_openai_client(client, use_for_tracing=False)
    set_tracing_disabled(True)
    return client


@pytest.fixture
async def default_client(server: FakeLLMServer) -> AsyncIterator[openai.AsyncOpenAI]:
    """The default client for the test, closed and unset afterwards."""
    before = _openai_shared.get_default_openai_client()
    client = use_default_client(server)
    yield client
    await client.close()
    _openai_shared._default_openai_client = before


def shop_agent(orders: Orders, **agent_options: Any) -> Agent[Any]:
    """The quick-start shape: an Agent with a function tool that writes a SQLite row."""

    @function_tool
    def place_order(item: str, quantity: int) -> str:
        """Order `quantity` of `item` for the customer."""
        return orders.place(item, quantity)

    agent = Agent(
        name="shop",
        instructions="You order what the customer asks for.",
        tools=[place_order],
        **agent_options,
    )
    return rp.instrument(agent, side_effects=["place_order"])  # type: ignore[no-any-return]


def kinds(run: rp.Run) -> list[tuple[str, str]]:
    return [(e.kind, e.boundary) for e in rp.open_store(None).iter_events(run.id)]


class TestResponsesModel:
    async def test_run_records_and_replays_offline_without_the_side_effect(
        self, default_client: Any, server: FakeLLMServer, orders: Orders
    ) -> None:
        """Runner.run: model calls and the tool are served; no request, no new order row."""
        agent = shop_agent(orders)
        async with rp.record(name="shop") as run:
            result = await Runner.run(agent, QUESTION)
        assert orders.count() == 1
        assert kinds(run) == [
            ("llm", "openai:responses.create"),
            ("tool", "agents:function_tool.place_order"),
            ("llm", "openai:responses.create"),
        ]
        server.stop()
        seen = len(server.requests)
        async with rp.replay(run.id) as r:
            replayed = await Runner.run(agent, QUESTION)
        assert replayed.final_output == result.final_output != ""
        assert orders.count() == 1
        assert len(server.requests) == seen
        assert r.ok, r.report()

    async def test_run_streamed_records_and_replays_the_same_events(
        self, default_client: Any, server: FakeLLMServer, orders: Orders
    ) -> None:
        """Runner.run_streamed (with_streaming_response underneath) replays the same stream."""
        agent = shop_agent(orders)

        async def run_streamed() -> tuple[Any, list[str]]:
            result = Runner.run_streamed(agent, QUESTION)
            events = [e.type async for e in result.stream_events()]
            return result.final_output, events

        async with rp.record() as run:
            final, events = await run_streamed()
        assert ("llm", "openai:responses.create_stream") in kinds(run)
        server.stop()
        seen = len(server.requests)
        async with rp.replay(run.id) as r:
            assert await run_streamed() == (final, events)
        assert orders.count() == 1
        assert len(server.requests) == seen
        assert r.ok, r.report()

    def test_run_sync_records_and_replays(self, server: FakeLLMServer, orders: Orders) -> None:
        """Runner.run_sync inside a sync record/replay."""
        before = _openai_shared.get_default_openai_client()
        client = use_default_client(server)
        try:
            agent = shop_agent(orders)
            with rp.record() as run:
                final = Runner.run_sync(agent, QUESTION).final_output
            server.stop()
            with rp.replay(run.id) as r:
                assert Runner.run_sync(agent, QUESTION).final_output == final
            assert orders.count() == 1
            assert r.ok, r.report()
        finally:
            # run_sync runs on the thread's default loop and leaves it open: close both here.
            loop = asyncio.get_event_loop_policy().get_event_loop()
            loop.run_until_complete(client.close())
            loop.close()
            asyncio.set_event_loop(None)
            _openai_shared._default_openai_client = before

    async def test_a_handoff_agent_is_instrumented_with_its_parent(
        self, default_client: Any, server: FakeLLMServer, orders: Orders
    ) -> None:
        """Instrumenting the triage agent covers the agent it hands off to, tools included."""
        from agents import handoff
        from agents.extensions.handoff_filters import remove_all_tools

        @function_tool
        def place_order(item: str, quantity: int) -> str:
            """Order `quantity` of `item`."""
            return orders.place(item, quantity)

        clerk = Agent(name="clerk", instructions="Order.", tools=[place_order])
        triage = rp.instrument(
            Agent(
                name="triage",
                instructions="Hand off to the clerk.",
                handoffs=[handoff(clerk, input_filter=remove_all_tools)],
            ),
            side_effects=["place_order"],
        )
        async with rp.record() as run:
            final = (await Runner.run(triage, QUESTION)).final_output
        assert orders.count() == 1
        assert ("tool", "agents:function_tool.place_order") in kinds(run)
        server.stop()
        async with rp.replay(run.id) as r:
            assert (await Runner.run(triage, QUESTION)).final_output == final
        assert orders.count() == 1
        assert r.ok, r.report()

    async def test_a_clone_stays_instrumented(
        self, default_client: Any, server: FakeLLMServer, orders: Orders
    ) -> None:
        """agent.clone(...) records and replays like the agent it came from, a tool it adds
        (named in side_effects) included: model calls served, the order not placed again."""

        @function_tool
        def place_order(item: str, quantity: int) -> str:
            """Order `quantity` of `item` (the clone's own tool)."""
            return orders.place(item, quantity)

        clone = shop_agent(orders).clone(instructions="Order mugs.", tools=[place_order])
        async with rp.record() as run:
            final = (await Runner.run(clone, QUESTION)).final_output
        assert orders.count() == 1
        assert kinds(run) == [
            ("llm", "openai:responses.create"),
            ("tool", "agents:function_tool.place_order"),
            ("llm", "openai:responses.create"),
        ]
        server.stop()
        seen = len(server.requests)
        async with rp.replay(run.id) as r:
            assert (await Runner.run(clone, QUESTION)).final_output == final
        assert orders.count() == 1
        assert len(server.requests) == seen
        assert r.ok, r.report()


class TestChatCompletionsModel:
    @pytest.mark.parametrize("streamed", [False, True])
    async def test_the_chat_completions_model_records_and_replays(
        self, server: FakeLLMServer, orders: Orders, streamed: bool
    ) -> None:
        """An agent on OpenAIChatCompletionsModel (its own client) replays offline, both ways."""
        set_tracing_disabled(True)
        client = openai.AsyncOpenAI(base_url=server.openai_url, api_key=API_KEY, max_retries=0)
        model = OpenAIChatCompletionsModel(model="gpt-4o", openai_client=client)
        agent = shop_agent(orders, model=model)

        async def go() -> Any:
            if not streamed:
                return (await Runner.run(agent, QUESTION)).final_output
            result = Runner.run_streamed(agent, QUESTION)
            async for _ in result.stream_events():
                pass
            return result.final_output

        async with rp.record() as run:
            final = await go()
        name = "openai:chat.completions.create" + ("_stream" if streamed else "")
        assert ("llm", name) in kinds(run)
        server.stop()
        seen = len(server.requests)
        async with rp.replay(run.id) as r:
            assert await go() == final
        await client.close()
        assert orders.count() == 1
        assert len(server.requests) == seen
        assert r.ok, r.report()


class TestDivergence:
    async def test_a_changed_prompt_names_the_model_call_and_field(
        self, default_client: Any, server: FakeLLMServer, orders: Orders
    ) -> None:
        """Another question: the first model call diverges on its input."""
        agent = shop_agent(orders)
        async with rp.record() as run:
            await Runner.run(agent, QUESTION)
        server.stop()
        with pytest.raises(Divergence) as info:
            async with rp.replay(run.id):
                await Runner.run(agent, "Order one teapot.")
        assert info.value.boundary == "openai:responses.create"
        assert any(c.path.startswith("input") for c in info.value.changes)
        assert orders.count() == 1

    async def test_a_changed_tool_argument_diverges_though_the_sdk_catches_tool_errors(
        self, default_client: Any, server: FakeLLMServer, orders: Orders
    ) -> None:
        """The model runs live and asks for other arguments: the tool call diverges on them, and
        the strict replay raises it although the SDK turned it into a tool message."""
        agent = shop_agent(orders)
        async with rp.record() as run:
            await Runner.run(agent, QUESTION)
        server.steer = lambda prompt, tools: ("place_order", {"item": "teapot", "quantity": 9})
        with pytest.raises(Divergence) as info:
            async with rp.replay(run.id, live=["openai:responses.create"]):
                await Runner.run(agent, QUESTION)
        assert info.value.boundary == "agents:function_tool.place_order"
        assert {c.path for c in info.value.changes} >= {"item", "quantity"}
        assert orders.count() == 1
        async with rp.replay(run.id, live=["openai:responses.create"], strict=False) as r:
            result = await Runner.run(agent, QUESTION)
        assert result.final_output  # the SDK turned the divergence into a tool message
        assert r.divergences[0].boundary == "agents:function_tool.place_order"
        assert orders.count() == 1


class TestSideEffects:
    async def test_a_side_effect_tool_named_live_is_refused_before_anything_runs(
        self, default_client: Any, server: FakeLLMServer, orders: Orders
    ) -> None:
        """side_effects=["place_order"] makes live=["place_order"] a clear refusal."""
        agent = shop_agent(orders)
        async with rp.record() as run:
            await Runner.run(agent, QUESTION)
        server.stop()
        with pytest.raises(SideEffectRefused, match="place_order"):
            async with rp.replay(run.id, live=["place_order"]):
                await Runner.run(agent, QUESTION)
        assert orders.count() == 1


class Shop:
    """The stdio MCP shop: its start marker file and its orders database."""

    def __init__(self, tmp_path: Path) -> None:
        self.marker = tmp_path / "started.txt"
        self.marker.write_text("")
        self.orders = Orders(tmp_path / "shop.db")

    def server(self) -> Any:
        from agents.mcp import MCPServerStdio

        env = {**os.environ, "SHOP_MARKER": str(self.marker), "SHOP_DB": str(self.orders.path)}
        params = {"command": sys.executable, "args": [str(SHOP_SERVER)], "env": env}
        return MCPServerStdio(params=params, name="shop", client_session_timeout_seconds=30)

    @property
    def starts(self) -> int:
        return len(self.marker.read_text().split())


class TestMCPServers:
    async def test_an_mcp_server_is_never_spawned_in_replay(
        self, default_client: Any, server: FakeLLMServer, tmp_path: Path
    ) -> None:
        """MCPServerStdio: the tool call is recorded; replay serves it without starting the
        server process (its start marker stays unwritten) and places no order."""
        shop = Shop(tmp_path)
        mcp_server = shop.server()

        async def go() -> Any:
            async with mcp_server:
                agent = Agent(name="shop", instructions="Order.", mcp_servers=[mcp_server])
                return (await Runner.run(rp.instrument(agent), QUESTION)).final_output

        rp.instrument(mcp_server)
        async with rp.record() as run:
            final = await go()
        assert shop.starts == 1
        assert shop.orders.count() == 1
        names = [b for _, b in kinds(run)]
        assert "mcp:tools/list" in names
        assert "mcp:tools/call.place_order" in names
        server.stop()
        async with rp.replay(run.id) as r:
            assert await go() == final
        assert shop.starts == 1
        assert shop.orders.count() == 1
        assert r.ok, r.report()

    async def test_mcp_tool_annotations_set_side_effects(
        self, default_client: Any, server: FakeLLMServer, tmp_path: Path
    ) -> None:
        """place_order is not readOnlyHint: naming it live is refused; safe= overrides."""
        shop = Shop(tmp_path)
        mcp_server = rp.instrument(shop.server())
        async with rp.record() as run, mcp_server:
            agent = rp.instrument(Agent(name="s", instructions="Order.", mcp_servers=[mcp_server]))
            await Runner.run(agent, QUESTION)
        server.stop()
        with pytest.raises(SideEffectRefused, match="place_order"):
            async with rp.replay(run.id, live=["mcp:tools/call.place_order"]):
                pass
        assert shop.starts == 1


class TestBadInput:
    def test_an_unsupported_agents_object_is_refused(self) -> None:
        """Only agents, function tools and MCP servers are supported, and it says so."""
        from agents import RunConfig

        with pytest.raises(UnsupportedClient, match=r"agents\.Agent"):
            rp.instrument(RunConfig())

    def test_a_tool_both_side_effect_and_safe_is_refused(self, orders: Orders) -> None:
        """A tool cannot be both changing the world and safe."""
        with pytest.raises(UnsupportedClient, match="both"):
            rp.instrument(Agent(name="a"), side_effects=["x"], safe=["x"])
