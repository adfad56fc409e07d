"""OTLP fixtures: export requests built by the real OpenTelemetry SDK and its OTLP encoder, the
Collector file exporter's JSON form of them, and a collector served on loopback."""

from __future__ import annotations

import base64
import json
import socket
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import uvicorn
from google.protobuf import json_format
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

from replayable._otlp._collect import Collector, Kept, create_collector_app
from replayable.store import Store, open_store

SECRET = "sk-proj-" + "Ab3dEf6hIj9kLm2nOp5qRs8t"


def genai_messages(text: str) -> str:
    """A GenAI ``gen_ai.input.messages`` value: one user message."""
    return json.dumps([{"role": "user", "parts": [{"type": "text", "content": text}]}])


def agent_trace(
    *, prompt: str = "Refund order 7", with_content: bool = True, fail: bool = False
) -> Any:
    """An agent traced with the GenAI conventions by the real SDK: invoke_agent > chat (asks
    for a tool) > execute_tool > chat (answers). Returns the ExportTraceServiceRequest."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "support"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("opentelemetry.instrumentation.openai_v2", "2.4b0")
    content = with_content

    def chat(messages: str, out: list[dict[str, Any]]) -> dict[str, Any]:
        attrs: dict[str, Any] = {
            "gen_ai.operation.name": "chat",
            "gen_ai.provider.name": "openai",
            "gen_ai.request.model": "gpt-4o-mini",
            "gen_ai.request.temperature": 0.0,
            "gen_ai.response.model": "gpt-4o-mini-2024-07-18",
            "gen_ai.response.id": "chatcmpl-1",
            "gen_ai.response.finish_reasons": [out[0].get("finish_reason", "stop")],
            "gen_ai.usage.input_tokens": 12,
            "gen_ai.usage.output_tokens": 5,
        }
        if content:
            attrs["gen_ai.input.messages"] = messages
            attrs["gen_ai.output.messages"] = json.dumps(out)
        return attrs

    call = {"type": "tool_call", "id": "call_1", "name": "refund", "arguments": {"order": 7}}
    with tracer.start_as_current_span(
        "invoke_agent support",
        attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "support"},
    ) as root:
        with tracer.start_as_current_span(
            "chat gpt-4o-mini",
            attributes=chat(
                genai_messages(f"{prompt} (my key is {SECRET})"),
                [{"role": "assistant", "parts": [call], "finish_reason": "tool_call"}],
            ),
        ):
            pass
        with tracer.start_as_current_span(
            "execute_tool refund",
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "refund",
                "gen_ai.tool.call.id": "call_1",
                **(
                    {
                        "gen_ai.tool.call.arguments": '{"order": 7}',
                        "gen_ai.tool.call.result": '{"refunded": true}',
                    }
                    if content
                    else {}
                ),
            },
        ):
            pass
        with tracer.start_as_current_span(
            "chat gpt-4o-mini",
            attributes=chat(
                genai_messages(prompt),
                [
                    {
                        "role": "assistant",
                        "parts": [{"type": "text", "content": "Refunded order 7."}],
                        "finish_reason": "stop",
                    }
                ],
            ),
        ):
            pass
        if fail:
            root.set_status(Status(StatusCode.ERROR, "refund service down"))
    provider.shutdown()
    return encode_spans(exporter.get_finished_spans())


def many_spans(n: int) -> bytes:
    """A protobuf export request of ``n`` bare spans of one trace, built with opentelemetry-proto
    (small in memory: a JSON form of 100,000 spans would take hundreds of MB to build)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest

    request = ExportTraceServiceRequest()
    ss = request.resource_spans.add().scope_spans.add()
    trace_id = bytes.fromhex("0af7651916cd43dd8448eb211c80319c")
    for i in range(n):
        ss.spans.add(trace_id=trace_id, span_id=(i + 1).to_bytes(8, "big"), name="s")
    data: bytes = request.SerializeToString()
    return data


def to_json(request: Any) -> dict[str, Any]:
    """An export request as OTLP/JSON (as the Collector's file exporter writes it): the protobuf
    JSON mapping with trace and span ids in hex."""
    data: dict[str, Any] = json_format.MessageToDict(request)
    for rs in data.get("resourceSpans", []):
        for ss in rs.get("scopeSpans", []):
            for span in ss.get("spans", []):
                for k in ("traceId", "spanId", "parentSpanId"):
                    if k in span:
                        span[k] = base64.b64decode(span[k]).hex()
    return data


class LiveCollector:
    """A collector app served by uvicorn on 127.0.0.1 (a free port), lifespan on, in a thread."""

    def __init__(self, store: Store, **options: Any) -> None:
        self.kept: list[Kept] = []
        token = options.pop("token", None)
        local_only = options.pop("local_only", True)
        report = options.pop("on_kept", self.kept.append)  # another report: kept stays empty
        self.collector = Collector(store, on_kept=report, **options)
        app = create_collector_app(self.collector, token=token, local_only=local_only, tick=0.02)
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})

    def __enter__(self) -> LiveCollector:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("collector did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()

    def wait_kept(self, n: int = 1, timeout: float = 10.0) -> list[Kept]:
        """The traces kept so far, once there are ``n``."""
        deadline = time.monotonic() + timeout
        while len(self.kept) < n:
            if time.monotonic() > deadline:
                raise AssertionError(f"{len(self.kept)} traces kept, waited for {n}")
            time.sleep(0.02)
        return self.kept


@pytest.fixture
def store() -> Store:
    """The test's own SQLite store."""
    return open_store(None)


@pytest.fixture
def live_collector(store: Store) -> Iterator[Callable[..., LiveCollector]]:
    """Start collectors over the test's store (options as for Collector); stopped after."""
    started: list[LiveCollector] = []

    def start(target: Store | None = None, **options: Any) -> LiveCollector:
        options.setdefault("settle", 0.05)
        c = LiveCollector(target or store, **options).__enter__()
        started.append(c)
        return c

    yield start
    for c in started:
        c.__exit__()
