"""The examples: recorded against the loopback server, replayed offline."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from tests.integrations.fakeserver import FakeLLMServer

import replayable as rp
from replayable.errors import UnsupportedClient
from replayable.integrations import langgraph as rp_langgraph

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"examples_{name}", EXAMPLES / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def openai_example() -> ModuleType:
    return load("openai_agent")


@pytest.fixture(scope="module")
def langgraph_example() -> ModuleType:
    return load("langgraph_agent")


class TestOpenAIAgentExample:
    def test_the_agent_records_and_replays_offline(
        self, openai_example: ModuleType, openai_client: Any, server: FakeLLMServer
    ) -> None:
        """The tool-using agent replays its answer with the server gone."""
        agent = openai_example.WeatherAgent(openai_client)
        with rp.record(name="openai-agent") as run:
            answer = agent.run("What should I wear in Paris?")
        kinds = [e.kind for e in rp.open_store(None).iter_events(run.id)]
        assert kinds.count("llm") == 2
        assert "tool" in kinds
        server.stop()
        seen = len(server.requests)
        with rp.replay(run.id) as r:
            again = agent.run("What should I wear in Paris?")
        assert again == answer
        assert r.ok
        assert len(server.requests) == seen


class TestLangGraphAgentExample:
    def question(self) -> dict[str, Any]:
        from langchain_core.messages import HumanMessage

        return {"messages": [HumanMessage("Please delete Bob's record.")]}

    def test_nodes_are_recorded_with_llm_and_tool_calls_nested(
        self, langgraph_example: ModuleType, openai_client: Any, tmp_path: Path
    ) -> None:
        """Each node is a `node` step; the model and tool calls inside it are its children."""
        db = tmp_path / "customers.json"
        langgraph_example.seed_db(db)
        app = langgraph_example.build(openai_client, db)
        with rp.record() as run:
            app.invoke(self.question())
        evs = list(rp.open_store(None).iter_events(run.id))
        by_seq = {e.seq: e for e in evs}
        nodes = [e.boundary for e in evs if e.kind == "node"]
        agent, tools = "langgraph:records.agent", "langgraph:records.tools"
        assert nodes == [agent, tools, agent]
        for e in evs:
            if e.kind in ("llm", "tool"):
                assert e.parent_seq is not None
                assert by_seq[e.parent_seq].kind == "node"
        tools_node = next(e for e in evs if e.boundary == "langgraph:records.tools")
        assert tools_node.output["messages"][0]["$message"]["type"] == "tool"

    def test_replay_deletes_nothing_and_returns_the_recorded_state(
        self,
        langgraph_example: ModuleType,
        openai_client: Any,
        server: FakeLLMServer,
        tmp_path: Path,
    ) -> None:
        """The agent deleted a record; its replay serves every node and deletes nothing."""
        db = tmp_path / "customers.json"
        langgraph_example.seed_db(db)
        app = langgraph_example.build(openai_client, db)
        with rp.record() as run:
            final = app.invoke(self.question())
        assert len(json.loads(db.read_text())) == 3
        langgraph_example.seed_db(db)
        server.stop()
        with rp.replay(run.id) as r:
            replayed = app.invoke(self.question())
        assert len(json.loads(db.read_text())) == 4
        assert [m.content for m in replayed["messages"]] == [m.content for m in final["messages"]]
        assert type(replayed["messages"][1]).__name__ == "AIMessage"
        assert r.ok

    def test_a_live_node_runs_with_the_calls_inside_it_served(
        self,
        langgraph_example: ModuleType,
        openai_client: Any,
        server: FakeLLMServer,
        tmp_path: Path,
    ) -> None:
        """Naming the tools node live runs its code; delete_record inside it is still served."""
        db = tmp_path / "customers.json"
        langgraph_example.seed_db(db)
        app = langgraph_example.build(openai_client, db)
        with rp.record() as run:
            final = app.invoke(self.question())
        langgraph_example.seed_db(db)
        server.stop()
        with rp.replay(run.id, live=["langgraph:records.tools"]) as r:
            replayed = app.invoke(self.question())
        assert len(json.loads(db.read_text())) == 4
        assert replayed["messages"][-1].content == final["messages"][-1].content
        assert r.ok

    async def test_async_invoke_records_and_replays(
        self,
        langgraph_example: ModuleType,
        openai_client: Any,
        server: FakeLLMServer,
        tmp_path: Path,
    ) -> None:
        """ainvoke goes through the same node boundaries."""
        db = tmp_path / "customers.json"
        langgraph_example.seed_db(db)
        app = langgraph_example.build(openai_client, db)
        async with rp.record() as run:
            final = await app.ainvoke(self.question())
        langgraph_example.seed_db(db)
        server.stop()
        async with rp.replay(run.id):
            replayed = await app.ainvoke(self.question())
        assert len(json.loads(db.read_text())) == 4
        assert replayed["messages"][-1].content == final["messages"][-1].content


class TestLangGraphBadInput:
    def test_an_unsupported_object_is_refused(self) -> None:
        """instrument() names what it supports."""
        with pytest.raises(UnsupportedClient, match="StateGraph"):
            rp_langgraph.instrument({"not": "a graph"})
