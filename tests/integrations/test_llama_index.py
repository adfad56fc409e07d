"""LlamaIndex (core 0.14, llms-openai 0.8): ``FunctionAgent``, ``ReActAgent`` and
``chat_with_tools`` on the OpenAI LLM with a SQLite side-effect tool, recorded against the
loopback model server and replayed with it stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from llama_index.core.agent.workflow import FunctionAgent, ReActAgent
from llama_index.core.tools import FunctionTool
from llama_index.llms.openai import OpenAI
from tests.integrations.conftest import API_KEY
from tests.integrations.fakeserver import FakeLLMServer
from tests.integrations.orders import Orders

import replayable as rp
from replayable.errors import Divergence, UnsupportedClient

TASK = "Two mugs, please."

# LlamaIndex's workflow engine walks agents' attributes, pydantic's deprecated ones included.
pytestmark = [
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince20"),
    pytest.mark.filterwarnings("ignore::pydantic.warnings.PydanticDeprecatedSince211"),
    pytest.mark.filterwarnings("ignore:is_running called from within a step:DeprecationWarning"),
]


@pytest.fixture
def orders(tmp_path: Path) -> Orders:
    return Orders(tmp_path / "orders.db")


def llm(server: FakeLLMServer) -> Any:
    return OpenAI(model="gpt-4o-mini", api_base=server.openai_url, api_key=API_KEY, max_retries=0)


def order_tool(orders: Orders) -> Any:
    def place_order(item: str, quantity: int) -> str:
        """Order `quantity` of `item`."""
        return orders.place(item, quantity)

    return FunctionTool.from_defaults(place_order)


def agent(server: FakeLLMServer, orders: Orders, cls: type = FunctionAgent, **options: Any) -> Any:
    built = cls(tools=[order_tool(orders)], llm=llm(server), **options)
    return rp.instrument(built, side_effects=["place_order"])


class TestAgents:
    async def test_a_function_agent_replays_with_the_model_stopped(
        self, server: FakeLLMServer, orders: Orders
    ) -> None:
        """Model calls (streamed) and the tool are steps; the replay sends no request, places
        no order and ends with the recorded answer."""
        async with rp.record() as run:
            answer = str(await agent(server, orders).run(user_msg=TASK))
        names = [e.boundary for e in run.events() if e.parent_seq is None]
        assert names == [
            "openai:chat.completions.create_stream",
            "llama_index.tool:place_order.async",
            "openai:chat.completions.create_stream",
        ]
        assert orders.count() == 1
        seen = len(server.requests)
        server.stop()
        async with rp.replay(run.id) as r:
            assert str(await agent(server, orders).run(user_msg=TASK)) == answer
        assert r.ok
        assert orders.count() == 1
        assert len(server.requests) == seen

    async def test_a_changed_prompt_diverges_at_the_first_model_call(
        self, server: FakeLLMServer, orders: Orders
    ) -> None:
        """A changed system prompt is a divergence at the first model call."""
        async with rp.record() as run:
            await agent(server, orders).run(user_msg=TASK)
        server.stop()
        with pytest.raises(Divergence) as info:
            async with rp.replay(run.id):
                await agent(server, orders, system_prompt="Be terse.").run(user_msg=TASK)
        assert info.value.boundary == "openai:chat.completions.create_stream"
        assert orders.count() == 1

    async def test_a_react_agent_replays(self, server: FakeLLMServer, orders: Orders) -> None:
        """ReActAgent (text reasoning, no native tool calls) replays the recorded answer."""
        async with rp.record() as run:
            answer = str(await agent(server, orders, ReActAgent).run(user_msg=TASK))
        seen = len(server.requests)
        server.stop()
        async with rp.replay(run.id) as r:
            assert str(await agent(server, orders, ReActAgent).run(user_msg=TASK)) == answer
        assert r.ok
        assert len(server.requests) == seen


class TestChatWithTools:
    def test_chat_with_tools_replays_the_tool_calls(
        self, server: FakeLLMServer, orders: Orders
    ) -> None:
        """llm.chat_with_tools and get_tool_calls_from_response work on the replayed answer;
        calling the tool is a step served in replay."""
        tool = rp.instrument(order_tool(orders), side_effects=["place_order"])

        def once() -> tuple[str, str]:
            model = rp.instrument(llm(server))
            response = model.chat_with_tools([tool], user_msg=TASK)
            (call,) = model.get_tool_calls_from_response(response)
            return call.tool_name, str(tool.call(**call.tool_kwargs))

        with rp.record() as run:
            first = once()
        assert first[0] == "place_order"
        server.stop()
        with rp.replay(run.id) as r:
            assert once() == first
        assert r.ok
        assert orders.count() == 1


class TestRefusals:
    def test_a_client_per_call_is_refused(self, server: FakeLLMServer) -> None:
        """reuse_client=False leaves nothing to instrument: said clearly, with the way out."""
        model = OpenAI(
            model="gpt-4o-mini", api_base=server.openai_url, api_key=API_KEY, reuse_client=False
        )
        with pytest.raises(UnsupportedClient, match="reuse_client"):
            rp.instrument(model)
