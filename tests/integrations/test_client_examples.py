"""The LiteLLM and Agents SDK examples: recorded against the loopback server, replayed offline
with the server stopped, without placing an order again."""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from types import ModuleType

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import openai
import pytest
from tests.integrations.conftest import API_KEY
from tests.integrations.fakeserver import FakeLLMServer

import replayable as rp

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"

pytestmark = pytest.mark.filterwarnings("ignore:Item.* `ReadOnly` qualifier:UserWarning")


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def count(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute("SELECT count(*) FROM orders").fetchone()[0])


class TestLiteLLMExample:
    @pytest.fixture
    async def example(self) -> AsyncIterator[ModuleType]:
        module = load("litellm_agent")
        yield module
        cache = module.litellm.in_memory_llm_clients_cache
        for client in list(getattr(cache, "cache_dict", {}).values()):
            close = getattr(client, "close", None)
            if callable(close):
                result = close()
                if hasattr(result, "__await__"):
                    await result
        cache.flush_cache()

    def test_the_agent_records_and_replays_offline(
        self, example: ModuleType, server: FakeLLMServer, tmp_path: Path
    ) -> None:
        """The order is placed once; the replay returns the same answer with no request."""
        shop = example.Shop(tmp_path / "orders.db")
        agent = example.ShopAgent(
            shop, "openai/gpt-4o", api_base=server.openai_url, api_key=API_KEY
        )
        with rp.record(name="litellm-agent") as run:
            answer = agent.run("Order two mugs.")
        assert shop.count() == 1
        kinds = [e.kind for e in rp.open_store(None).iter_events(run.id)]
        assert kinds.count("llm") == 2
        assert "tool" in kinds
        server.stop()
        seen = len(server.requests)
        with rp.replay(run.id) as r:
            assert agent.run("Order two mugs.") == answer
        assert shop.count() == 1
        assert len(server.requests) == seen
        assert r.ok, r.report()


class TestOpenAIAgentsExample:
    async def test_the_agent_records_and_replays_offline(
        self, server: FakeLLMServer, tmp_path: Path
    ) -> None:
        """Runner.run on the example agent replays offline; place_order runs once."""
        from agents import Runner, set_default_openai_client, set_tracing_disabled
        from agents.models import _openai_shared

        example = load("openai_agents_agent")
        before = _openai_shared.get_default_openai_client()
        client = openai.AsyncOpenAI(base_url=server.openai_url, api_key=API_KEY, max_retries=0)
        set_default_openai_client(client, use_for_tracing=False)
        set_tracing_disabled(True)
        try:
            db = tmp_path / "orders.db"
            agent = example.build(db)
            async with rp.record(name="openai-agents-shop") as run:
                answer = (await Runner.run(agent, example.QUESTION)).final_output
            assert count(db) == 1
            server.stop()
            seen = len(server.requests)
            async with rp.replay(run.id) as r:
                again = (await Runner.run(agent, example.QUESTION)).final_output
            assert again == answer
            assert count(db) == 1
            assert len(server.requests) == seen
            assert r.ok, r.report()
            with pytest.raises(rp.SideEffectRefused):
                async with rp.replay(run.id, live=["place_order"]):
                    pass
        finally:
            await client.close()
            _openai_shared._default_openai_client = before
