"""LangChain: ``create_agent`` with an instrumented chat model and tools, against the loopback
server; replayed with the server stopped."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest
from tests.integrations.conftest import API_KEY
from tests.integrations.fakeserver import FakeLLMServer
from tests.integrations.orders import Orders

import replayable as rp
from replayable.errors import Divergence, SideEffectRefused, UnsupportedClient
from replayable.integrations import langchain as rp_langchain

QUESTION = {"messages": [{"role": "user", "content": "Two mugs to Paris, please."}]}


@pytest.fixture
def orders(tmp_path: Path) -> Orders:
    return Orders(tmp_path / "orders.db")


@pytest.fixture
def tools(orders: Orders) -> list[Any]:
    """place_order (a side effect, called first by the server) and check_stock."""
    from langchain_core.tools import tool

    @tool
    def place_order(item: str, quantity: int) -> str:
        """Order `quantity` of `item`."""
        return orders.place(item, quantity)

    @tool
    def check_stock(item: str) -> str:
        """How many of `item` are in stock."""
        return f"{item}: 12 in stock"

    return rp.instrument([place_order, check_stock], side_effects=["place_order"])


@pytest.fixture
def model(server: FakeLLMServer) -> Any:
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(
        model="gpt-4o-mini", base_url=server.openai_url, api_key=API_KEY, max_retries=0
    )
    return rp.instrument(chat)


def build(model: Any, tools: list[Any], *, prompt: str = "Be brief.", middleware: Any = ()) -> Any:
    from langchain.agents import create_agent

    return create_agent(model, tools, system_prompt=prompt, middleware=list(middleware))


def double_quantity() -> Any:
    """A middleware that changes the tool's arguments (the kind of fix a replay should catch)."""
    from langchain.agents.middleware import wrap_tool_call

    @wrap_tool_call
    def doubled(request: Any, handler: Any) -> Any:
        args = {**request.tool_call["args"], "quantity": request.tool_call["args"]["quantity"] * 2}
        return handler(request.override(tool_call={**request.tool_call, "args": args}))

    return doubled


def catch_tool_errors() -> Any:
    """The LangChain docs' tool-error handler: any exception becomes an error ToolMessage."""
    from langchain.agents.middleware import wrap_tool_call
    from langchain_core.messages import ToolMessage

    @wrap_tool_call
    def handle(request: Any, handler: Any) -> Any:
        try:
            return handler(request)
        except Exception as exc:
            return ToolMessage(f"tool error: {exc}", tool_call_id=request.tool_call["id"])

    return handle


@pytest.fixture
def agent(model: Any, tools: list[Any]) -> Any:
    return build(model, tools)


def answer(state: dict[str, Any]) -> str:
    return str(state["messages"][-1].content)


class TestCreateAgent:
    def test_invoke_replays_offline_without_reordering(
        self, agent: Any, server: FakeLLMServer, orders: Orders
    ) -> None:
        """invoke: the same final answer with the server stopped, no request, no second order."""
        with rp.record() as run:
            final = agent.invoke(QUESTION)
        assert orders.count() == 1
        kinds = [(e.kind, e.boundary) for e in rp.open_store(None).iter_events(run.id)]
        assert kinds == [
            ("llm", "langchain:ChatOpenAI"),
            ("tool", "langchain:tool.place_order"),
            ("llm", "langchain:ChatOpenAI"),
        ]
        server.stop()
        seen = len(server.requests)
        with rp.replay(run.id) as r:
            again = agent.invoke(QUESTION)
        assert answer(again) == answer(final)
        assert again["messages"][1].tool_calls == final["messages"][1].tool_calls
        assert again["messages"][1].usage_metadata == final["messages"][1].usage_metadata
        assert len(server.requests) == seen
        assert orders.count() == 1
        assert r.ok

    def test_streamed_tokens_replay_in_order(
        self, agent: Any, server: FakeLLMServer, orders: Orders
    ) -> None:
        """stream(stream_mode="messages"): the replay streams the recorded tokens."""
        with rp.record() as run:
            tokens = [m.content for m, _ in agent.stream(QUESTION, stream_mode="messages")]
        assert len([t for t in tokens if t]) > 3
        server.stop()
        with rp.replay(run.id) as r:
            again = [m.content for m, _ in agent.stream(QUESTION, stream_mode="messages")]
        assert again == tokens
        assert orders.count() == 1
        assert r.ok

    def test_an_unstreamed_recording_serves_a_streamed_replay(
        self, agent: Any, server: FakeLLMServer
    ) -> None:
        """Recorded with invoke, replayed with stream: the answer comes back as a chunk."""
        with rp.record() as run:
            final = agent.invoke(QUESTION)
        server.stop()
        with rp.replay(run.id) as r:
            tokens = [m.content for m, _ in agent.stream(QUESTION, stream_mode="messages")]
        assert tokens[-1] == answer(final)
        assert r.ok

    def test_a_streamed_recording_serves_an_unstreamed_replay(
        self, agent: Any, server: FakeLLMServer
    ) -> None:
        """Recorded with stream, replayed with invoke: the chunks are merged into the answer."""
        with rp.record() as run:
            tokens = [m.content for m, _ in agent.stream(QUESTION, stream_mode="messages")]
        server.stop()
        with rp.replay(run.id) as r:
            final = agent.invoke(QUESTION)
        assert answer(final) == "".join(tokens[tokens.index(final["messages"][2].content) + 1 :])
        assert r.ok

    def test_batch_calls_are_served_from_worker_threads(
        self, model: Any, server: FakeLLMServer
    ) -> None:
        """model.batch runs each call in a thread pool; each is recorded and served."""
        prompts = ["one", "two", "three"]
        with rp.record() as run:
            first = [m.content for m in model.batch(prompts)]
        server.stop()
        with rp.replay(run.id) as r:
            again = [m.content for m in model.batch(prompts)]
        assert again == first
        assert r.ok

    async def test_ainvoke_and_astream_replay_offline(
        self, agent: Any, server: FakeLLMServer, orders: Orders
    ) -> None:
        """ainvoke and astream go through the same boundaries."""
        async with rp.record() as run:
            final = await agent.ainvoke(QUESTION)
        async with rp.record() as streamed:
            tokens = [m.content async for m, _ in agent.astream(QUESTION, stream_mode="messages")]
        assert orders.count() == 2
        server.stop()
        seen = len(server.requests)
        async with rp.replay(run.id) as r:
            again = await agent.ainvoke(QUESTION)
        async with rp.replay(streamed.id) as r2:
            again_tokens = [
                m.content async for m, _ in agent.astream(QUESTION, stream_mode="messages")
            ]
        assert answer(again) == answer(final)
        assert again_tokens == tokens
        assert len(server.requests) == seen
        assert orders.count() == 2
        assert r.ok
        assert r2.ok

    def test_a_changed_prompt_diverges_at_the_model_call(
        self, model: Any, tools: list[Any], server: FakeLLMServer, orders: Orders
    ) -> None:
        """A new system prompt: the divergence names the model call and the message field."""
        with rp.record() as run:
            build(model, tools).invoke(QUESTION)
        server.stop()
        fixed = build(model, tools, prompt="Be brief. Never order more than one.")
        with pytest.raises(Divergence) as exc, rp.replay(run.id):
            fixed.invoke(QUESTION)
        assert exc.value.boundary == "langchain:ChatOpenAI"
        assert [c.path for c in exc.value.changes] == ["messages[0].content"]
        assert orders.count() == 1

    def test_a_changed_tool_argument_diverges_even_when_tool_errors_are_caught(
        self, model: Any, tools: list[Any], server: FakeLLMServer, orders: Orders
    ) -> None:
        """The agent catches tool errors; the replay still reports the tool call first."""
        with rp.record() as run:
            build(model, tools, middleware=[catch_tool_errors()]).invoke(QUESTION)
        server.stop()
        changed = build(model, tools, middleware=[catch_tool_errors(), double_quantity()])
        with pytest.raises(Divergence) as exc, rp.replay(run.id) as r:
            changed.invoke(QUESTION)
        assert exc.value is r.divergences[0]  # the first one, though the agent caught it
        assert exc.value.boundary == "langchain:tool.place_order"
        assert [c.path for c in exc.value.changes] == ["quantity"]
        assert orders.count() == 1

    def test_a_side_effect_tool_cannot_run_live(self, agent: Any) -> None:
        """live=["place_order"] is refused: it was instrumented with side_effects."""
        with rp.record() as run:
            agent.invoke(QUESTION)
        with pytest.raises(SideEffectRefused, match="place_order"):
            rp.replay(run.id, live=["place_order"])

    def test_a_safe_tool_can_run_live(
        self, model: Any, tools: list[Any], server: FakeLLMServer, orders: Orders
    ) -> None:
        """A tool not named in side_effects runs live on request; the model stays served."""
        with rp.record() as run:
            final = build(model, tools[::-1]).invoke(QUESTION)  # check_stock is called
        server.stop()
        with rp.replay(run.id, live=["check_stock"]) as r:
            again = build(model, tools[::-1]).invoke(QUESTION)
        assert answer(again) == answer(final)
        assert r.ok


class TestGraphLevel:
    def test_create_agent_graph_replays_its_commands(
        self, model: Any, tools: list[Any], server: FakeLLMServer, orders: Orders
    ) -> None:
        """rp.instrument(graph): nodes return Command; replay rebuilds it, no InvalidUpdateError."""
        from langgraph.types import Command

        graph = rp.instrument(build(model, tools), side_effects=["place_order"])
        with rp.record() as run:
            final = graph.invoke(QUESTION)
        events = list(rp.open_store(None).iter_events(run.id))
        assert "$command" in events[0].output[0]
        assert rp_langchain.CODEC.decode(events[0].output)[0].__class__ is Command
        server.stop()
        with rp.replay(run.id) as r:
            again = graph.invoke(QUESTION)
        assert answer(again) == answer(final)
        assert orders.count() == 1
        assert r.ok

    def test_create_react_agent_graph_replays(
        self, model: Any, tools: list[Any], server: FakeLLMServer, orders: Orders
    ) -> None:
        """langgraph.prebuilt.create_react_agent (deprecated, still shipped) replays too."""
        import warnings

        from langgraph.prebuilt import create_react_agent

        from replayable.integrations.langgraph import instrument

        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            graph = instrument(create_react_agent(model, tools), side_effects=["place_order"])
        with rp.record() as run:
            final = graph.invoke(QUESTION)
        server.stop()
        with rp.replay(run.id) as r:
            again = graph.invoke(QUESTION)
        assert answer(again) == answer(final)
        assert orders.count() == 1
        assert r.ok

    def test_instrumenting_the_graph_keeps_a_tool_marked_as_side_effect(
        self, model: Any, tools: list[Any]
    ) -> None:
        """Tools marked when instrumented stay marked when their graph is instrumented too."""
        graph = rp.instrument(build(model, tools))
        with rp.record() as run:
            graph.invoke(QUESTION)
        with pytest.raises(SideEffectRefused, match="place_order"):
            rp.replay(run.id, live=["place_order"])

    def test_side_effects_must_name_a_tool_of_the_graph(self, model: Any, tools: list[Any]) -> None:
        """A typo in side_effects is an error naming the graph's tools."""
        from replayable.integrations.langgraph import instrument

        with pytest.raises(UnsupportedClient, match=r"plaec_order.*check_stock, place_order"):
            instrument(build(model, tools), side_effects=["plaec_order"])


class TestCodec:
    def test_send_and_command_round_trip(self) -> None:
        """Command(goto=[Send...], update=messages) comes back as the same objects."""
        from langchain_core.messages import AIMessage
        from langgraph.types import Command, Overwrite, Send

        cmd = Command(
            update={"messages": [AIMessage("hi", id="m1")], "n": Overwrite(3)},
            goto=[Send("worker", {"job": 1}), Send("worker", {"job": 2})],
        )
        codec = rp_langchain.CODEC
        back = codec.decode(rp.canonicalize(codec.encode(cmd)))
        assert back == cmd

    def test_token_usage_survives_redaction(self, model: Any, server: FakeLLMServer) -> None:
        """response_metadata.token_usage is not taken for a secret: replay rebuilds it."""
        with rp.record() as run:
            msg = model.invoke("hello")
        server.stop()
        with rp.replay(run.id):
            again = model.invoke("hello")
        assert again.response_metadata["token_usage"] == msg.response_metadata["token_usage"]
        assert again.content == msg.content
        stored = orjson.dumps([e.output for e in rp.open_store().iter_events(run.id)])
        assert b'"token_usage":{' in stored  # kept under its own name, as a count
        assert b"REDACTED" not in stored


class TestBadInput:
    def test_side_effects_on_a_model_is_refused(self, model: Any) -> None:
        """side_effects names tools, so passing it with a model says where it goes."""
        with pytest.raises(UnsupportedClient, match="names tools"):
            rp_langchain.instrument(model, side_effects=["place_order"])

    def test_unknown_side_effect_tool_is_refused(self, tools: list[Any]) -> None:
        """A tool name that is not among the tools is an error listing them."""
        with pytest.raises(UnsupportedClient, match="nope"):
            rp_langchain.instrument(tools, side_effects=["nope"])

    def test_a_non_langchain_object_is_refused(self) -> None:
        """Anything else names what is supported."""
        with pytest.raises(UnsupportedClient, match="BaseChatModel"):
            rp_langchain.instrument([object()])
