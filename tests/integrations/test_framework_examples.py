"""The framework examples (LangChain, Pydantic AI, MCP): recorded against the loopback model
server, replayed offline with the server stopped."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from tests.integrations.conftest import API_KEY
from tests.integrations.fakeserver import FakeLLMServer

import replayable as rp

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


class TestLangChainExample:
    def test_the_agent_replays_offline_and_orders_once(
        self, server: FakeLLMServer, tmp_path: Path
    ) -> None:
        """create_agent: same answer from the recording, no request, one order in the database."""
        example = load("langchain_agent")
        db = example.orders_db(tmp_path / "orders.db")
        agent = example.build(db, base_url=server.openai_url, api_key=API_KEY)
        with rp.record() as run:
            answer = example.ask(agent)
        assert example.count_orders(db) == 1
        server.stop()
        seen = len(server.requests)
        with rp.replay(run.id) as r:
            again = example.ask(agent)
        assert again == answer
        assert len(server.requests) == seen
        assert example.count_orders(db) == 1
        assert r.ok


class TestPydanticAIExample:
    @pytest.fixture
    def client(self, server: FakeLLMServer) -> Iterator[Any]:
        import openai
        from pydantic_ai._utils import get_event_loop

        client = openai.AsyncOpenAI(base_url=server.openai_url, api_key=API_KEY)
        yield client
        loop = get_event_loop()  # the loop run_sync used: close the client there, then it
        loop.run_until_complete(client.close())
        loop.close()
        asyncio.set_event_loop(None)

    def test_the_agent_replays_offline_and_orders_once(
        self, server: FakeLLMServer, client: Any, tmp_path: Path
    ) -> None:
        """run_sync: same answer from the recording, no request, one order in the database."""
        example = load("pydantic_ai_agent")
        db = example.orders_db(tmp_path / "orders.db")
        agent = example.build(db, openai_client=client)
        with rp.record() as run:
            answer = agent.run_sync(example.QUESTION).output
        assert example.count_orders(db) == 1
        server.stop()
        seen = len(server.requests)
        with rp.replay(run.id) as r:
            again = agent.run_sync(example.QUESTION).output
        assert again == answer
        assert len(server.requests) == seen
        assert example.count_orders(db) == 1
        assert r.ok


class TestMCPExample:
    @pytest.fixture
    async def llm(self, server: FakeLLMServer) -> AsyncIterator[Any]:
        import openai

        client = openai.AsyncOpenAI(base_url=server.openai_url, api_key=API_KEY, max_retries=0)
        yield rp.instrument(client)
        await client.close()

    async def test_the_agent_replays_without_model_or_mcp_server(
        self, server: FakeLLMServer, llm: Any, tmp_path: Path
    ) -> None:
        """The replay gives the same answer; neither the model nor the MCP server is reached."""
        from tests.integrations.orders import Orders

        example = load("mcp_agent")
        orders = Orders(tmp_path / "orders.db")
        marker = tmp_path / "started.txt"
        marker.write_text("")
        params = example.server_params({"SHOP_DB": str(orders.path), "SHOP_MARKER": str(marker)})
        async with rp.record() as run:
            answer = await example.ask(llm, params)
        assert orders.count() == 1
        assert len(marker.read_text().split()) == 1
        kinds = [e.boundary for e in rp.open_store(None).iter_events(run.id)]
        assert "mcp:tools/call.place_order" in kinds
        server.stop()
        seen = len(server.requests)
        async with rp.replay(run.id) as r:
            again = await example.ask(llm, params)
        assert again == answer
        assert len(server.requests) == seen
        assert len(marker.read_text().split()) == 1
        assert orders.count() == 1
        assert r.ok
