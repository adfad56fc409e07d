"""DSPy 3.4: ``dspy.LM`` on both engines (native lm15 and LiteLLM), a tool with a SQLite side
effect, DSPy's cache; recorded against the loopback model server, replayed with it stopped."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integrations.conftest import API_KEY
from tests.integrations.fakeserver import FakeLLMServer
from tests.integrations.orders import Orders

import replayable as rp
from replayable.errors import Divergence, UnsupportedClient

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")  # no model-price download

import dspy

# LiteLLM's TypedDicts make pydantic warn when first validated (as in test_litellm.py).
pytestmark = pytest.mark.filterwarnings("ignore:Item.* `ReadOnly` qualifier:UserWarning")

ENGINES = ["auto", "litellm"]  # auto: DSPy's native lm15 engine for an OpenAI model


@pytest.fixture(autouse=True)
def _fresh_cache() -> Iterator[None]:
    """Each test starts with DSPy's response cache empty and off disk."""
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)
    yield
    dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)


@pytest.fixture
def orders(tmp_path: Path) -> Orders:
    return Orders(tmp_path / "orders.db")


class Shop(dspy.Signature):
    """Serve the customer's request with the tools."""

    request: str = dspy.InputField()
    tools: list[dspy.Tool] = dspy.InputField()
    calls: dspy.ToolCalls = dspy.OutputField()


def make_lm(server: FakeLLMServer, engine: str, **options: Any) -> Any:
    return dspy.LM(
        "openai/gpt-4o-mini", api_base=server.openai_url, api_key=API_KEY, engine=engine, **options
    )


def make_tool(orders: Orders) -> Any:
    def place_order(item: str, quantity: int) -> str:
        """Order `quantity` of `item`."""
        return orders.place(item, quantity)

    return rp.instrument(dspy.Tool(place_order), side_effects=["place_order"])


def shop(lm: Any, tool: Any, request: str) -> str:
    """The program as DSPy's tool docs show it: a predictor proposes tool calls, the program
    executes them, a second predictor answers."""
    with dspy.context(lm=lm, adapter=dspy.ChatAdapter(use_native_function_calling=True)):
        pred = dspy.Predict(Shop)(request=request, tools=[tool])
        results = [str(call.execute(functions=[tool])) for call in pred.calls.tool_calls]
        answer = dspy.Predict("request, results -> answer")(
            request=request, results="; ".join(results)
        )
    return str(answer.answer)


class TestRecordThenReplayOffline:
    @pytest.mark.parametrize("engine", ENGINES)
    def test_the_program_replays_with_the_model_stopped(
        self, server: FakeLLMServer, orders: Orders, engine: str
    ) -> None:
        """Every LM call and the tool are steps; replay sends no request, places no order and
        returns the recorded answer."""
        lm = rp.instrument(make_lm(server, engine))
        tool = make_tool(orders)
        with rp.record() as run:
            answer = shop(lm, tool, "Two mugs, please.")
        names = [e.boundary for e in run.events()]
        assert names[0] == "dspy:lm.call"
        assert "dspy.tool:place_order" in names
        assert orders.count() == 1
        seen = len(server.requests)
        assert seen == names.count("dspy:lm.call")
        server.stop()
        dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)
        with rp.replay(run.id) as r:
            again = shop(
                rp.instrument(make_lm(server, engine)), make_tool(orders), "Two mugs, please."
            )
        assert again == answer
        assert r.ok
        assert orders.count() == 1
        assert len(server.requests) == seen

    @pytest.mark.parametrize("engine", ENGINES)
    def test_a_changed_prompt_diverges_at_that_call(
        self, server: FakeLLMServer, orders: Orders, engine: str
    ) -> None:
        """A different request is a divergence at the first LM call, before anything runs."""
        lm = rp.instrument(make_lm(server, engine))
        tool = make_tool(orders)
        with rp.record() as run:
            shop(lm, tool, "Two mugs, please.")
        server.stop()
        with pytest.raises(Divergence) as info:
            with rp.replay(run.id):
                shop(lm, tool, "Three mugs, please.")
        assert info.value.boundary == "dspy:lm.call"
        assert orders.count() == 1

    async def test_async_calls_record_and_replay(self, server: FakeLLMServer) -> None:
        """lm.acall and Predict.acall are steps of their own, replayed offline."""
        lm = rp.instrument(make_lm(server, "auto"))
        with rp.record() as run:
            with dspy.context(lm=lm):
                first = await dspy.Predict("question -> answer").acall(question="Where?")
        assert next(e.boundary for e in run.events()) == "dspy:lm.acall"
        seen = len(server.requests)
        server.stop()
        dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)
        with rp.replay(run.id):
            with dspy.context(lm=lm):
                again = await dspy.Predict("question -> answer").acall(question="Where?")
        assert again.answer == first.answer
        assert len(server.requests) == seen


class TestCache:
    def test_a_cache_hit_is_a_step_and_replay_neither_hides_nor_duplicates_it(
        self, server: FakeLLMServer
    ) -> None:
        """Two identical calls: one request, two steps (the second a cache hit); the replay
        serves both from the recording, with the cache emptied and the model stopped."""
        lm = rp.instrument(make_lm(server, "auto", cache=True))
        with rp.record() as run:
            first, second = lm("hi"), lm("hi")
        events = list(run.events())
        assert [e.meta["cache_hit"] for e in events] == [False, True]
        assert len(server.requests) == 1
        server.stop()
        dspy.configure_cache(enable_disk_cache=False, enable_memory_cache=True)
        with rp.replay(run.id) as r:
            assert [lm("hi"), lm("hi")] == [first, second]
        assert r.ok
        assert len(server.requests) == 1


class TestMissedInstrumentation:
    def test_an_uninstrumented_lm_is_flagged_then_refused(self, server: FakeLLMServer) -> None:
        """DSPy's native engine talks HTTP through its own bundled transport: a recording
        warns about the unrecorded call, the replay refuses it before any request."""
        lm = make_lm(server, "auto", cache=False)
        with pytest.warns(rp.ReplayableWarning, match="dspy"):
            with rp.record() as run:
                lm("hi")
        seen = len(server.requests)
        with pytest.raises(rp.NetworkRefused, match=r"dspy\.LM"):
            with rp.replay(run.id):
                lm("hi")
        assert len(server.requests) == seen

    def test_other_objects_are_refused(self) -> None:
        """A DSPy object that is neither an LM, a tool nor a module is refused clearly."""
        with pytest.raises(UnsupportedClient, match=r"dspy\.LM"):
            rp.instrument(dspy.Example(question="q"))

    def test_side_effects_must_name_held_tools(self, orders: Orders) -> None:
        """side_effects naming a tool the object does not hold is an error, not ignored."""
        with pytest.raises(UnsupportedClient, match="not hold"):
            rp.instrument(dspy.ReAct("q -> a", tools=[lambda x: x]), side_effects=["nope"])
