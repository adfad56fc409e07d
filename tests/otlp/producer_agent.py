"""A small agent traced by one real producer, exporting OTLP to a collector (run as a script).

    python producer_agent.py PRODUCER

PRODUCER is ``openai-v2``, ``openinference-openai``, ``openinference-langchain``, ``logfire``
or ``langfuse``. Environment: ``MODEL_URL`` (the loopback model server's OpenAI base URL),
``COLLECTOR_URL`` (the collector's base URL), ``SIDE_EFFECT_DB`` (a SQLite file the tool writes
to), ``PROMPT``. The agent asks the model, runs the tool it asked for (a refund written to
SQLite), asks again with the result, and prints the final answer as JSON on the last line.

Each producer sets a global tracer provider, so each runs in its own process.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from collections.abc import Callable
from typing import Any

MODEL = "gpt-4o-mini"
SYSTEM = "You handle refunds. Call the refund tool, then confirm."
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "refund",
            "description": "Refund an order.",
            "parameters": {
                "type": "object",
                "properties": {"order": {"type": "integer"}},
                "required": ["order"],
            },
        },
    }
]


def refund_effect(order: int) -> dict[str, Any]:
    """The side effect: one row in SIDE_EFFECT_DB per refund."""
    with sqlite3.connect(os.environ["SIDE_EFFECT_DB"]) as db:
        db.execute("CREATE TABLE IF NOT EXISTS refunds (order_id INTEGER)")
        db.execute("INSERT INTO refunds VALUES (?)", (order,))
    return {"refunded": order}


def refund(order: int) -> dict[str, Any]:
    """The refund tool as the agent's code defines it (replay decorates it)."""
    return refund_effect(order)


def openai_agent(client: Any, prompt: str, tool: Callable[[int], dict[str, Any]]) -> str:
    """Two model turns around one tool call, with the OpenAI SDK."""
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": prompt},
    ]
    first = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    call = first.choices[0].message.tool_calls[0]
    result = tool(**json.loads(call.function.arguments))
    messages.append(first.choices[0].message.model_dump(exclude_none=True))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
    second = client.chat.completions.create(model=MODEL, messages=messages, tools=TOOLS)
    return str(second.choices[0].message.content)


def otel_exporter() -> Any:
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter(endpoint=f"{os.environ['COLLECTOR_URL']}/v1/traces")


def global_provider() -> Any:
    from opentelemetry import trace
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    provider = TracerProvider(resource=Resource.create({"service.name": "refunds"}))
    provider.add_span_processor(BatchSpanProcessor(otel_exporter()))
    trace.set_tracer_provider(provider)
    return provider


def run_openai_v2(prompt: str) -> str:
    import openai
    from opentelemetry.instrumentation.openai_v2 import OpenAIInstrumentor

    provider = global_provider()
    OpenAIInstrumentor().instrument()
    tracer = provider.get_tracer("refunds")

    def tool(order: int) -> dict[str, Any]:
        with tracer.start_as_current_span(
            "execute_tool refund",
            attributes={"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": "refund"},
        ) as span:
            span.set_attribute("gen_ai.tool.call.arguments", json.dumps({"order": order}))
            result = refund_effect(order)
            span.set_attribute("gen_ai.tool.call.result", json.dumps(result))
            return result

    client = openai.OpenAI(base_url=os.environ["MODEL_URL"], api_key="sk-test")
    with tracer.start_as_current_span(
        "invoke_agent refunds",
        attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "refunds"},
    ):
        answer = openai_agent(client, prompt, tool)
    provider.shutdown()
    return answer


def run_openinference_openai(prompt: str) -> str:
    import openai
    from openinference.instrumentation.openai import OpenAIInstrumentor

    provider = global_provider()
    OpenAIInstrumentor().instrument(tracer_provider=provider)
    tracer = provider.get_tracer("refunds")

    def tool(order: int) -> dict[str, Any]:
        with tracer.start_as_current_span(
            "refund",
            attributes={
                "openinference.span.kind": "TOOL",
                "tool.name": "refund",
                "input.value": json.dumps({"order": order}),
                "input.mime_type": "application/json",
            },
        ) as span:
            result = refund_effect(order)
            span.set_attribute("output.value", json.dumps(result))
            return result

    client = openai.OpenAI(base_url=os.environ["MODEL_URL"], api_key="sk-test")
    with tracer.start_as_current_span(
        "refunds", attributes={"openinference.span.kind": "AGENT", "input.value": prompt}
    ) as root:
        answer = openai_agent(client, prompt, tool)
        root.set_attribute("output.value", answer)
    provider.shutdown()
    return answer


def langchain_parts(model_url: str) -> tuple[Any, Any]:
    """The LangChain agent's chat model and refund tool."""
    from langchain_core.tools import tool as lc_tool
    from langchain_openai import ChatOpenAI

    @lc_tool
    def refund(order: int) -> dict[str, Any]:
        """Refund an order."""
        return refund_effect(order)

    return ChatOpenAI(model=MODEL, base_url=model_url, api_key="sk-test"), refund


def langchain_agent(model: Any, refund: Any, prompt: str) -> str:
    """Two model turns around one tool call, with LangChain."""
    from langchain_core.messages import HumanMessage, SystemMessage

    bound = model.bind_tools([refund])
    messages: list[Any] = [SystemMessage(SYSTEM), HumanMessage(prompt)]
    first = bound.invoke(messages)
    messages.append(first)
    messages.append(refund.invoke(first.tool_calls[0]))
    return str(bound.invoke(messages).content)


def run_openinference_langchain(prompt: str) -> str:
    from openinference.instrumentation.langchain import LangChainInstrumentor

    provider = global_provider()
    LangChainInstrumentor().instrument(tracer_provider=provider)
    model, refund = langchain_parts(os.environ["MODEL_URL"])
    tracer = provider.get_tracer("refunds")
    with tracer.start_as_current_span(
        "refunds", attributes={"openinference.span.kind": "AGENT", "input.value": prompt}
    ):
        answer = langchain_agent(model, refund, prompt)
    provider.shutdown()
    return answer


def run_logfire(prompt: str) -> str:
    import logfire
    import openai
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    logfire.configure(
        send_to_logfire=False,
        service_name="refunds",
        console=False,
        additional_span_processors=[BatchSpanProcessor(otel_exporter())],
    )
    client = openai.OpenAI(base_url=os.environ["MODEL_URL"], api_key="sk-test")
    logfire.instrument_openai(client)

    def tool(order: int) -> dict[str, Any]:
        with logfire.span(
            "execute_tool refund",
            **{
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "refund",
                "gen_ai.tool.call.arguments": json.dumps({"order": order}),
            },
        ) as span:
            result = refund_effect(order)
            span.set_attribute("gen_ai.tool.call.result", json.dumps(result))
            return result

    with logfire.span("refunds agent"):
        answer = openai_agent(client, prompt, tool)
    logfire.force_flush()
    logfire.shutdown()
    return answer


def run_langfuse(prompt: str) -> str:
    from langfuse import get_client, observe
    from langfuse.openai import OpenAI

    client = OpenAI(base_url=os.environ["MODEL_URL"], api_key="sk-test")

    @observe(as_type="tool", name="refund")
    def tool(order: int) -> dict[str, Any]:
        return refund_effect(order)

    @observe(name="refunds")
    def agent() -> str:
        return openai_agent(client, prompt, tool)

    answer = agent()
    get_client().flush()
    get_client().shutdown()
    return answer


PRODUCERS = {
    "openai-v2": run_openai_v2,
    "openinference-openai": run_openinference_openai,
    "openinference-langchain": run_openinference_langchain,
    "logfire": run_logfire,
    "langfuse": run_langfuse,
}

if __name__ == "__main__":
    answer = PRODUCERS[sys.argv[1]](os.environ.get("PROMPT", "Refund order 7"))
    print(json.dumps({"answer": answer}))
