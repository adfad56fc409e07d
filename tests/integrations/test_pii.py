"""Personal data pseudonymized while recording real SDK and framework calls (the loopback
model server, a real stdio MCP server); unchanged code replays with no divergence, offline,
served values carry the pseudonyms, and no personal value reaches the store."""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from agents import Runner
from tests.integrations.conftest import API_KEY
from tests.integrations.fakeserver import FakeLLMServer
from tests.integrations.orders import Orders
from tests.integrations.test_langchain import answer, build
from tests.integrations.test_mcp import Shop
from tests.integrations.test_openai_agents import shop_agent, use_default_client

import replayable as rp

KEY = "integration-pii-key-" + "f" * 32
EMAIL = "dana.whitfield@acme.io"
PHONE = "+1 415-867-5309"
ASK = f"I'm Dana Whitfield ({EMAIL}, {PHONE}). Two mugs to Paris, please."
PII = rp.PII(names=["Dana Whitfield"], key=KEY)


@pytest.fixture
def shop_orders(tmp_path: Path) -> Orders:
    return Orders(tmp_path / "orders.db")


@pytest.fixture
def chat_model(server: FakeLLMServer) -> Any:
    """An instrumented ChatOpenAI on the loopback server."""
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(
        model="gpt-4o-mini", base_url=server.openai_url, api_key=API_KEY, max_retries=0
    )
    return rp.instrument(chat)


@pytest.fixture
def order_tools(shop_orders: Orders) -> list[Any]:
    """place_order (a side effect) and check_stock, instrumented."""
    from langchain_core.tools import tool

    @tool
    def place_order(item: str, quantity: int) -> str:
        """Order `quantity` of `item`."""
        return shop_orders.place(item, quantity)

    @tool
    def check_stock(item: str) -> str:
        """How many of `item` are in stock."""
        return f"{item}: 12 in stock"

    return rp.instrument([place_order, check_stock], side_effects=["place_order"])


@pytest.fixture
async def agents_client(server: FakeLLMServer) -> AsyncIterator[Any]:
    """The agents SDK's default client on the loopback server, unset afterwards."""
    from agents.models import _openai_shared

    before = _openai_shared.get_default_openai_client()
    client = use_default_client(server)
    yield client
    await client.close()
    _openai_shared._default_openai_client = before


@pytest.fixture(autouse=True)
def _key(monkeypatch: pytest.MonkeyPatch) -> None:
    """The replays find the key where production would: in the environment."""
    monkeypatch.setenv("REPLAYABLE_PII_KEY", KEY)


def assert_clean_store() -> None:
    """No personal value in the SQLite file or its WAL."""
    rp.flush()  # read behind the store's back
    for f in Path().glob("traces.db*"):
        data = f.read_bytes()
        for part in (EMAIL.encode(), b"867-5309", b"Whitfield"):
            assert part not in data, f"{f.name} holds {part!r}"


class TestOpenAI:
    def test_chat_and_stream_replay_with_no_divergence(
        self, openai_client: Any, server: FakeLLMServer
    ) -> None:
        """A chat completion and a streamed one, asked with personal data, replay offline."""
        messages = [{"role": "user", "content": ASK}]

        def agent() -> tuple[str, str]:
            plain = openai_client.chat.completions.create(model="gpt-4o", messages=messages)
            stream = openai_client.chat.completions.create(
                model="gpt-4o", messages=messages, stream=True
            )
            text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
            return str(plain.choices[0].message.content), text

        with rp.record(pii=PII) as run:
            recorded = agent()
        server.stop()
        seen = len(server.requests)
        with rp.replay(run.id) as r:
            replayed = agent()
        assert r.ok, r.report()
        assert replayed == recorded  # the server's answers hold no personal data
        assert len(server.requests) == seen
        assert_clean_store()


class TestLangChain:
    def test_create_agent_replays_with_no_divergence(
        self,
        chat_model: Any,
        order_tools: list[Any],
        server: FakeLLMServer,
        shop_orders: Orders,
    ) -> None:
        """create_agent with a tool, asked with personal data: replayed offline, no new order."""
        agent = build(chat_model, order_tools)
        question = {"messages": [{"role": "user", "content": ASK}]}
        with rp.record(pii=PII) as run:
            final = agent.invoke(question)
        server.stop()
        with rp.replay(run.id) as r:
            again = agent.invoke(question)
        assert r.ok, r.report()
        assert answer(again) == answer(final)
        assert shop_orders.count() == 1
        assert_clean_store()


class TestAgentsSDK:
    async def test_runner_replays_with_no_divergence(
        self, agents_client: Any, server: FakeLLMServer, shop_orders: Orders
    ) -> None:
        """Runner.run with a function tool, asked with personal data: replayed offline."""
        agent = shop_agent(shop_orders)
        async with rp.record(pii=PII) as run:
            result = await Runner.run(agent, ASK)
        server.stop()
        async with rp.replay(run.id) as r:
            replayed = await Runner.run(agent, ASK)
        assert r.ok, r.report()
        assert replayed.final_output == result.final_output
        assert shop_orders.count() == 1
        assert_clean_store()


class TestMCP:
    async def test_client_session_replays_with_pseudonyms_served(self, tmp_path: Path) -> None:
        """An MCP prompt and tool call carrying an email replay without spawning the server;
        what is served carries the email's pseudonym, the same one in every step."""
        from mcp import Client

        shop = Shop(tmp_path)

        async def session() -> tuple[str, str]:
            async with rp.instrument(Client(shop.params())) as client:
                prompt = await client.get_prompt("greet", {"name": EMAIL})
                order = await client.call_tool("place_order", {"item": "mug", "quantity": 2})
            return prompt.messages[0].content.text, order.content[0].text

        async with rp.record(pii=PII) as run:
            recorded = await session()
        assert EMAIL in recorded[0]
        async with rp.replay(run.id) as r:
            replayed = await session()
        assert r.ok, r.report()
        assert shop.starts == 1
        assert shop.orders.count() == 1
        pseudonym = PII.pseudonymizer().text(EMAIL)
        assert replayed[0] == recorded[0].replace(EMAIL, pseudonym)
        assert_clean_store()
