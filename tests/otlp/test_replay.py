"""The replay half of the producer tests: an agent traced by a real producer (OpenTelemetry's
openai-v2, OpenInference for OpenAI and LangChain, Logfire, Langfuse) is collected, then the same
agent code, instrumented with replayable, replays the imported run offline: no request reaches
the model, the side effect does not happen again, the answer is the recorded one."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import openai
import pytest
from tests.integrations.fakeserver import FakeLLMServer

import replayable as rp
from replayable.store import Store, open_store

from . import producer_agent
from .conftest import LiveCollector
from .test_producers import PRODUCERS, kept_events, run_producer

PROMPT = "Refund order 7"


@dataclass
class Traced:
    """One producer's traced incident: the imported run, its store, the model server it used
    and the side-effect database it wrote to."""

    producer: str
    run_id: str
    answer: str
    store: Store
    model: FakeLLMServer
    db: Path

    def refunds(self) -> list[tuple[int]]:
        with sqlite3.connect(self.db) as conn:
            return conn.execute("SELECT order_id FROM refunds").fetchall()


def trace(
    producer: str,
    tmp: Path,
    start: Callable[..., LiveCollector],
    **env: str,
) -> Traced:
    """Run the agent live under ``producer`` and collect its trace into a store of its own."""
    store = open_store(tmp / "traces.db")
    model = FakeLLMServer(seed=3).start()
    collector = start(store, settle=0.5)
    db = tmp / "effects.db"
    answer = run_producer(producer, model, collector, db, **env)
    run, _ = kept_events(store, collector)
    return Traced(producer, run.id, answer, store, model, db)


@pytest.fixture
def traced(
    tmp_path: Path,
    live_collector: Callable[..., LiveCollector],
) -> Iterator[Callable[..., Traced]]:
    """Trace the agent under a producer (servers stopped after the test)."""
    made: list[Traced] = []

    def make(producer: str, **env: str) -> Traced:
        where = tmp_path / f"{producer}-{len(made)}"
        where.mkdir()
        t = trace(producer, where, live_collector, **env)
        made.append(t)
        return t

    yield make
    for t in made:
        t.model.stop()


def replay_agent(t: Traced, prompt: str = PROMPT, **options: Any) -> tuple[str, rp.Replay]:
    """The same agent code, instrumented with replayable, replaying ``t``'s imported run."""
    if t.producer == "openinference-langchain":
        model, tool = producer_agent.langchain_parts(t.model.openai_url)
        rp.instrument(model)
        rp.instrument([tool], side_effects=["refund"])
        with rp.replay(t.run_id, store=t.store, **options) as r:
            answer = producer_agent.langchain_agent(model, tool, prompt)
        return answer, r
    client = rp.instrument(openai.OpenAI(base_url=t.model.openai_url, api_key="sk-test"))
    refund = rp.boundary(kind="tool", side_effects=True)(producer_agent.refund)
    with rp.replay(t.run_id, store=t.store, **options) as r:
        answer = producer_agent.openai_agent(client, prompt, refund)
    return answer, r


class TestReplayImported:
    @pytest.mark.parametrize("producer", PRODUCERS)
    def test_agent_replays_its_trace_offline(
        self, producer: str, traced: Callable[..., Traced]
    ) -> None:
        """The agent's own code replays the imported run: the recorded answer, no request to
        the model, the refund not made again, and the report says what was not compared."""
        t = traced(producer)
        seen = len(t.model.requests)
        assert len(t.refunds()) == 1
        answer, r = replay_agent(t)
        assert answer == t.answer
        assert len(t.model.requests) == seen
        assert len(t.refunds()) == 1
        assert r.ok, r.report()
        report = r.report()
        assert report.count("imported llm steps compared on") == 1
        assert report.count("imported tool steps compared on") == 1
        rp.flush()
        steps = list(t.store.iter_events(r.run.id))
        assert [s.kind for s in steps if s.meta.get("served")] == ["llm", "tool", "llm"]

    @pytest.mark.parametrize("producer", PRODUCERS)
    def test_a_changed_prompt_diverges_at_the_first_model_call(
        self, producer: str, traced: Callable[..., Traced]
    ) -> None:
        """Another prompt is a divergence at the first llm step, naming the changed message."""
        t = traced(producer)
        with pytest.raises(rp.Divergence) as info:
            replay_agent(t, prompt="Refund order 8")
        div = info.value
        assert div.reason == "changed"
        assert div.address.endswith("/0")
        assert " > llm:" in div.address
        assert [c.path for c in div.changes] == ["messages[1].content"]
        assert len(t.refunds()) == 1


NOT_CAPTURED = {
    "openai-v2": ({"OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT": "false"}, "llm"),
    "openinference-openai": (
        {"OPENINFERENCE_HIDE_INPUTS": "true", "OPENINFERENCE_HIDE_OUTPUTS": "true"},
        "llm",
    ),
    "openinference-langchain": ({"OPENINFERENCE_HIDE_OUTPUT_TEXT": "true"}, "llm"),
    "langfuse": ({"LANGFUSE_OBSERVE_DECORATOR_IO_CAPTURE_ENABLED": "false"}, "tool"),
}
SETTING = {
    "openai-v2": "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true",
    "openinference-openai": "OPENINFERENCE_HIDE_INPUTS",
    "openinference-langchain": "OPENINFERENCE_HIDE_OUTPUT_TEXT",
    "langfuse": "LANGFUSE_OBSERVE_DECORATOR_IO_CAPTURE_ENABLED",
}


class TestContentNotCaptured:
    @pytest.mark.parametrize("producer", sorted(NOT_CAPTURED))
    def test_a_step_without_content_fails_naming_the_setting(
        self, producer: str, traced: Callable[..., Traced]
    ) -> None:
        """Traced without content, the step cannot be served: NotCaptured names the producer's
        setting that captures it, and nothing reaches the model or fires again."""
        env, kind = NOT_CAPTURED[producer]
        t = traced(producer, **env)
        seen = len(t.model.requests)
        with pytest.raises(rp.NotCaptured) as info:
            replay_agent(t)
        message = str(info.value)
        assert SETTING[producer] in message
        assert f"this {kind} step" in message
        assert t.run_id in message
        assert len(t.model.requests) == seen
        assert len(t.refunds()) == 1
