"""OpenTelemetry export: GenAI semantic conventions and OpenInference kinds, in memory."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import openai
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode
from tests.integrations.conftest import API_KEY

import replayable as rp
from replayable.integrations import otel

MESSAGES = [{"role": "user", "content": "weather?"}]
TOOLS = [{"type": "function", "function": {"name": "get_weather", "parameters": {}}}]


@pytest.fixture
def spans() -> Iterator[tuple[TracerProvider, InMemorySpanExporter]]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    yield provider, exporter
    provider.shutdown()


@rp.boundary(kind="tool")
def get_weather(city: str) -> str:
    return f"{city}: sunny"


class Weather:
    def __init__(self, client: Any) -> None:
        self.client = client

    @rp.boundary(kind="agent")
    def agent(self, city: str) -> str:
        resp = self.client.chat.completions.create(
            model="gpt-4o", messages=MESSAGES, tools=TOOLS, temperature=0.2
        )
        get_weather(city)
        return str(resp.id)


def agent(client: Any) -> str:
    return Weather(client).agent("Paris")


def by_name(exporter: InMemorySpanExporter) -> dict[str, Any]:
    return {s.name: s for s in exporter.get_finished_spans()}


class TestExport:
    def test_a_recorded_run_exports_one_span_per_step_with_genai_attributes(
        self, openai_client: Any, spans: tuple[TracerProvider, InMemorySpanExporter]
    ) -> None:
        """LLM, tool and agent steps become spans with GenAI and OpenInference attributes."""
        provider, exporter = spans
        with rp.record(name="weather") as run:
            agent(openai_client)
        assert otel.export(run, provider) == 4
        got = by_name(exporter)
        llm = got["chat gpt-4o"].attributes
        assert llm["gen_ai.operation.name"] == "chat"
        assert llm["gen_ai.provider.name"] == "openai"
        assert llm["gen_ai.request.model"] == "gpt-4o"
        assert llm["gen_ai.response.model"] == "gpt-4o-2025"
        assert llm["gen_ai.request.temperature"] == 0.2
        assert llm["gen_ai.usage.input_tokens"] > 0
        assert llm["gen_ai.usage.output_tokens"] > 0
        assert llm["gen_ai.response.finish_reasons"] == ("tool_calls",)
        assert llm["openinference.span.kind"] == "LLM"
        assert API_KEY not in str(dict(llm))
        tool = got["execute_tool get_weather"].attributes
        assert tool["gen_ai.tool.name"] == "get_weather"
        assert tool["gen_ai.operation.name"] == "execute_tool"
        assert tool["openinference.span.kind"] == "TOOL"
        assert got["invoke_agent agent"].attributes["openinference.span.kind"] == "AGENT"
        root = got["run weather"]
        agent_span = got["invoke_agent agent"]
        assert agent_span.parent.span_id == root.context.span_id
        assert got["chat gpt-4o"].parent.span_id == agent_span.context.span_id
        assert got["chat gpt-4o"].context.trace_id == root.context.trace_id

    def test_an_errored_step_is_an_error_span(
        self, openai_client: Any, spans: tuple[TracerProvider, InMemorySpanExporter]
    ) -> None:
        """A recorded 429 exports as a span with error status and error.type."""
        provider, exporter = spans
        with rp.record() as run, pytest.raises(openai.RateLimitError):
            openai_client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": "[429]"}]
            )
        otel.export(run.id, provider)
        span = by_name(exporter)["chat m"]
        assert span.status.status_code is StatusCode.ERROR
        assert span.attributes["error.type"] == "openai.RateLimitError"


class TestLive:
    def test_live_mode_emits_spans_while_recording(
        self, openai_client: Any, spans: tuple[TracerProvider, InMemorySpanExporter]
    ) -> None:
        """Inside live(), each boundary call ends as a span, nested like the calls."""
        provider, exporter = spans
        with otel.live(provider), rp.record():
            agent(openai_client)
            names = {s.name for s in exporter.get_finished_spans()}
        assert names == {"chat gpt-4o", "execute_tool get_weather", "invoke_agent agent"}
        got = by_name(exporter)
        assert got["chat gpt-4o"].parent.span_id == got["invoke_agent agent"].context.span_id
        assert got["chat gpt-4o"].attributes["gen_ai.usage.output_tokens"] > 0
        assert got["chat gpt-4o"].attributes["gen_ai.response.model"] == "gpt-4o-2025"

    def test_live_spans_carry_no_secret(
        self, spans: tuple[TracerProvider, InMemorySpanExporter]
    ) -> None:
        """Annotations and exception messages are redacted before a live span leaves."""
        provider, exporter = spans
        key = "ghp_" + "a1B2c3D4" * 5

        @rp.boundary(kind="tool")
        def fetch(repo: str) -> None:
            rp.annotate(auth_header=f"token {key}", note=f"using {key}")
            raise PermissionError(f"rejected {key}")

        with otel.live(provider), rp.record(), pytest.raises(PermissionError):
            fetch("acme/agent")
        (span,) = exporter.get_finished_spans()
        dump = str(dict(span.attributes or {})) + str(span.status.description)
        assert span.status.status_code is StatusCode.ERROR
        assert "a1B2c3D4" not in dump
        assert "[REDACTED]" in dump

    def test_outside_live_nothing_is_emitted(
        self, openai_client: Any, spans: tuple[TracerProvider, InMemorySpanExporter]
    ) -> None:
        """After the live block, recording emits no spans."""
        provider, exporter = spans
        with otel.live(provider):
            pass
        with rp.record():
            agent(openai_client)
        assert exporter.get_finished_spans() == ()
