"""Real producers (OpenTelemetry's openai-v2, OpenInference for OpenAI and LangChain, Logfire,
Langfuse) trace a small agent against the loopback model server and export OTLP over HTTP to a
collector; the kept run holds the agent's two model turns and its tool call, as it happened."""

from __future__ import annotations

import json
import os
import sqlite3
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from tests.integrations.fakeserver import FakeLLMServer

from replayable.store import Store
from replayable.trace import Event, verify_run

from .conftest import LiveCollector

SCRIPT = Path(__file__).with_name("producer_agent.py")
PRODUCERS = [
    "openai-v2",
    "openinference-openai",
    "openinference-langchain",
    "logfire",
    "langfuse",
]
CONVENTION = {
    "openai-v2": "gen_ai",
    "openinference-openai": "openinference",
    "openinference-langchain": "openinference",
    "logfire": "logfire",
    "langfuse": "langfuse",
}


@pytest.fixture
def model_server() -> Iterator[FakeLLMServer]:
    """The loopback model server (it samples: every answer differs)."""
    server = FakeLLMServer(seed=3).start()
    yield server
    server.stop()


def run_producer(
    producer: str,
    model: FakeLLMServer,
    collector: LiveCollector,
    db: Path,
    **env: str,
) -> str:
    """Run the agent under ``producer`` in its own process; its final answer."""
    full = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("OTEL_", "LANGFUSE_", "LOGFIRE_", "OPENINFERENCE_"))
    }
    full.update(
        MODEL_URL=model.openai_url,
        COLLECTOR_URL=collector.url,
        SIDE_EFFECT_DB=str(db),
        PYTHONPATH=os.pathsep.join(sys.path),
        LANGFUSE_HOST=collector.url,
        LANGFUSE_BASE_URL=collector.url,
        LANGFUSE_PUBLIC_KEY="pk-lf-test",
        LANGFUSE_SECRET_KEY="sk-lf-test",
        LOGFIRE_SEND_TO_LOGFIRE="false",
    )
    full.update(env)
    if producer == "openai-v2" and "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT" not in env:
        full["OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"] = "SPAN_ONLY"
        full["OTEL_SEMCONV_STABILITY_OPT_IN"] = "gen_ai_latest_experimental"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), producer],
        capture_output=True,
        text=True,
        timeout=120,
        env=full,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    answer: str = json.loads(done.stdout.strip().splitlines()[-1])["answer"]
    return answer


def kept_events(store: Store, collector: LiveCollector) -> tuple[Any, list[Event]]:
    """The one run the collector kept, and its events."""
    (kept,) = collector.wait_kept(1, timeout=30)
    assert kept.run is not None, kept.problem
    return kept.run, list(store.iter_events(kept.run.id))


class TestProducers:
    @pytest.mark.parametrize("producer", PRODUCERS)
    def test_agent_trace_becomes_a_run_with_its_turns_and_tool(
        self,
        producer: str,
        store: Store,
        model_server: FakeLLMServer,
        live_collector: Callable[..., LiveCollector],
        tmp_path: Path,
    ) -> None:
        """Two llm steps with messages and answers, one tool step with arguments and result,
        in call order, the convention in the run's metadata, the chain intact."""
        collector = live_collector(settle=0.5)
        db = tmp_path / "effects.db"
        answer = run_producer(producer, model_server, collector, db)
        run, events = kept_events(store, collector)
        llms = [e for e in events if e.kind == "llm"]
        tools = [e for e in events if e.kind == "tool"]
        assert len(llms) == 2, [(e.kind, e.boundary) for e in events]
        assert len(tools) == 1, [(e.kind, e.boundary) for e in events]
        first, second = llms
        assert first.seq < tools[0].seq < second.seq
        assert first.input["messages"][-1] == {"role": "user", "content": "Refund order 7"}
        (call,) = first.output["choices"][0]["message"]["tool_calls"]
        assert call["name"] == "refund"
        order = call["arguments"]["order"]
        assert tools[0].boundary == "tool:refund"
        assert tools[0].input == {"order": order}
        assert tools[0].output == {"refunded": order}
        assert second.output["choices"][0]["message"]["content"] == answer
        assert any(m.get("role") == "tool" for m in second.input["messages"])
        with sqlite3.connect(db) as conn:
            assert conn.execute("SELECT order_id FROM refunds").fetchall() == [(order,)]
        conventions = {c["convention"] for c in run.metadata["source"]["conventions"]}
        assert CONVENTION[producer] in conventions
        assert verify_run(run, events).ok

    def test_langfuse_reaches_a_token_protected_collector_with_its_secret_key(
        self,
        store: Store,
        model_server: FakeLLMServer,
        live_collector: Callable[..., LiveCollector],
        tmp_path: Path,
    ) -> None:
        """Langfuse's SDK authenticates with HTTP Basic (public key, secret key): with the
        collector's token as its secret key its trace is kept; with another key it is not."""
        refused = live_collector(settle=0.5, token="collector-token-1")
        run_producer("langfuse", model_server, refused, tmp_path / "a.db")
        assert refused.collector.sweep(everything=True) == []
        collector = live_collector(settle=0.5, token="collector-token-1")
        run_producer(
            "langfuse",
            model_server,
            collector,
            tmp_path / "b.db",
            LANGFUSE_SECRET_KEY="collector-token-1",
        )
        run, events = kept_events(store, collector)
        assert [e.kind for e in events].count("llm") == 2
        assert verify_run(run, events).ok

    def test_openai_v2_without_content_capture_says_which_setting(
        self,
        store: Store,
        model_server: FakeLLMServer,
        live_collector: Callable[..., LiveCollector],
        tmp_path: Path,
    ) -> None:
        """Traced without message content, the llm steps are marked so, naming the setting."""
        collector = live_collector(settle=0.5)
        run_producer(
            "openai-v2",
            model_server,
            collector,
            tmp_path / "effects.db",
            OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT="false",
        )
        run, events = kept_events(store, collector)
        llms = [e for e in events if e.kind == "llm"]
        assert len(llms) == 2
        for e in llms:
            assert e.meta["otel"]["content_captured"] is False
            assert "CAPTURE_MESSAGE_CONTENT" in e.meta["otel"]["capture_hint"]
        assert run.metadata["source"]["content_not_captured"]["llm"] == ["gen_ai"]
