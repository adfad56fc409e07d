"""LangGraph: graphs whose nodes return ``Command`` / ``Send``, and a ``ToolNode`` that catches
tool errors, recorded against the loopback server and replayed with it stopped."""

from __future__ import annotations

import operator
from pathlib import Path
from typing import Annotated, Any, TypedDict

import pytest
from tests.integrations.conftest import API_KEY
from tests.integrations.fakeserver import FakeLLMServer
from tests.integrations.orders import Orders

import replayable as rp
from replayable.errors import Divergence


@pytest.fixture
def orders(tmp_path: Path) -> Orders:
    return Orders(tmp_path / "orders.db")


class Fanout(TypedDict):
    items: list[str]
    shipped: Annotated[list[str], operator.add]


def fanout_graph(orders: Orders) -> Any:
    """plan -> Command(goto=[Send("ship", item)...]) -> ship (a SQLite row each) -> END."""
    from langgraph.graph import END, START, StateGraph
    from langgraph.types import Command, Send

    def plan(state: Fanout) -> Command[Any]:
        items = sorted(state["items"])
        return Command(update={"items": items}, goto=[Send("ship", {"item": i}) for i in items])

    def ship(job: dict[str, str]) -> dict[str, Any]:
        orders.place(job["item"], 1)
        return {"shipped": [job["item"]]}

    graph = StateGraph(Fanout)
    graph.add_node("plan", plan, destinations=("ship",))
    graph.add_node("ship", ship)
    graph.add_edge(START, "plan")
    graph.add_edge("ship", END)
    return rp.instrument(graph.compile(name="shop"))


class TestCommandAndSend:
    def test_command_and_send_updates_replay_as_their_own_types(self, orders: Orders) -> None:
        """The plan node's Command(goto=[Send...]) is rebuilt; the ship nodes are served."""
        app = fanout_graph(orders)
        with rp.record() as run:
            final = app.invoke({"items": ["mug", "cup"], "shipped": []})
        assert orders.count() == 2
        events = list(rp.open_store(None).iter_events(run.id))
        plan = next(e for e in events if e.boundary == "langgraph:shop.plan")
        assert [g["$send"]["node"] for g in plan.output["$command"]["goto"]] == ["ship", "ship"]
        with rp.replay(run.id) as r:
            again = app.invoke({"items": ["mug", "cup"], "shipped": []})
        assert again == final
        assert orders.count() == 2
        assert r.ok

    async def test_async_streamed_updates_replay(self, orders: Orders) -> None:
        """astream(stream_mode="updates") yields the same updates in replay."""
        app = fanout_graph(orders)
        state = {"items": ["mug", "cup"], "shipped": []}
        async with rp.record() as run:
            updates = [u async for u in app.astream(state, stream_mode="updates")]
        async with rp.replay(run.id) as r:
            again = [u async for u in app.astream(state, stream_mode="updates")]
        # the two ship tasks run concurrently: their updates arrive in either order
        assert again[0] == updates[0]
        assert sorted(map(repr, again[1:])) == sorted(map(repr, updates[1:]))
        assert orders.count() == 2
        assert r.ok


class Chat(TypedDict):
    messages: Annotated[list[Any], operator.add]


def tool_graph(server: FakeLLMServer, orders: Orders, *, double: bool = False) -> Any:
    """model -> ToolNode(handle_tool_errors=True) -> model, with the model and tools
    instrumented; ``double`` rewrites the model's tool arguments (a code change)."""
    from langchain_core.messages import AIMessage
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI
    from langgraph.graph import START, StateGraph
    from langgraph.prebuilt import ToolNode, tools_condition

    @tool
    def place_order(item: str, quantity: int) -> str:
        """Order `quantity` of `item`."""
        return orders.place(item, quantity)

    tools = rp.instrument([place_order], side_effects=["place_order"])
    chat = ChatOpenAI(
        model="gpt-4o-mini", base_url=server.openai_url, api_key=API_KEY, max_retries=0
    )
    model = rp.instrument(chat).bind_tools(tools)

    def call_model(state: Chat) -> dict[str, Any]:
        reply = model.invoke(state["messages"])
        if double and isinstance(reply, AIMessage) and reply.tool_calls:
            calls = [
                {**c, "args": {**c["args"], "quantity": 2 * c["args"]["quantity"]}}
                for c in reply.tool_calls
            ]
            reply = reply.model_copy(update={"tool_calls": calls})
        return {"messages": [reply]}

    graph = StateGraph(Chat)
    graph.add_node("model", call_model)
    graph.add_node("tools", ToolNode(tools, handle_tool_errors=True))
    graph.add_edge(START, "model")
    graph.add_conditional_edges("model", tools_condition)
    graph.add_edge("tools", "model")
    return graph.compile()


class TestToolNode:
    def test_a_caught_tool_divergence_is_still_the_one_raised(
        self, server: FakeLLMServer, orders: Orders
    ) -> None:
        """ToolNode turns the tool's Divergence into an error message; the replay still raises
        it (not the model call that diverged after it), naming the tool and field."""
        question = {"messages": [("user", "Two mugs, please.")]}
        with rp.record() as run:
            tool_graph(server, orders).invoke(question)
        changed = tool_graph(server, orders, double=True)
        server.stop()
        with pytest.raises(Divergence) as exc, rp.replay(run.id) as r:
            changed.invoke(question)
        assert exc.value is r.divergences[0]
        assert exc.value.boundary == "langchain:tool.place_order"
        assert [c.path for c in exc.value.changes] == ["quantity"]
        assert orders.count() == 1

    def test_the_unchanged_graph_replays_offline(
        self, server: FakeLLMServer, orders: Orders
    ) -> None:
        """The same graph replays with the server stopped and orders nothing more."""
        question = {"messages": [("user", "Two mugs, please.")]}
        app = tool_graph(server, orders)
        with rp.record() as run:
            final = app.invoke(question)
        server.stop()
        with rp.replay(run.id) as r:
            again = app.invoke(question)
        assert again["messages"][-1].content == final["messages"][-1].content
        assert orders.count() == 1
        assert r.ok
