"""An imported model call is served as each SDK's own answer, whichever way the agent makes it:
OpenAI chat completions and Responses, Anthropic messages and LangChain chat models; sync,
async and streamed. The trace is built by the real OpenTelemetry SDK with the GenAI conventions
and imported from the Collector's file format; no model server runs."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anthropic
import openai
import pytest
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

import replayable as rp
from replayable.store import Store

from . import producer_agent
from .conftest import to_json

SYSTEM = producer_agent.SYSTEM
PROMPT = "Refund order 7"
ANSWER = "Refunded order 7."
DEAD = "http://127.0.0.1:9/v1"
"""Nothing listens there: a call that reached the network would fail."""


def _parts(role: str, *parts: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"role": role, "parts": list(parts), **extra}


def _text(text: str) -> dict[str, Any]:
    return {"type": "text", "content": text}


CALL = {"type": "tool_call", "id": "call_1", "name": "refund", "arguments": {"order": 7}}
FIRST_IN = [_parts("system", _text(SYSTEM)), _parts("user", _text(PROMPT))]
FIRST_OUT = [_parts("assistant", CALL, finish_reason="tool_call")]
SECOND_IN = [
    *FIRST_IN,
    _parts("assistant", CALL),
    _parts("tool", {"type": "tool_call_response", "id": "call_1", "response": '{"refunded": 7}'}),
]
SECOND_OUT = [_parts("assistant", _text(ANSWER), finish_reason="stop")]


def conversation(model: str) -> Any:
    """invoke_agent > chat (asks for refund) > execute_tool refund > chat (answers), traced by
    the OpenTelemetry SDK with the GenAI conventions, content captured."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider(resource=Resource.create({"service.name": "refunds"}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("opentelemetry.instrumentation.openai_v2", "2.4b0")

    def chat(inp: list[Any], out: list[Any], n: int) -> dict[str, Any]:
        return {
            "gen_ai.operation.name": "chat",
            "gen_ai.request.model": model,
            "gen_ai.response.model": f"{model}-2024-07-18",
            "gen_ai.response.id": f"chatcmpl-{n}",
            "gen_ai.usage.input_tokens": 10 * n,
            "gen_ai.usage.output_tokens": n,
            "gen_ai.input.messages": json.dumps(inp),
            "gen_ai.output.messages": json.dumps(out),
        }

    with tracer.start_as_current_span(
        "invoke_agent refunds",
        attributes={"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": "refunds"},
    ):
        with tracer.start_as_current_span("chat", attributes=chat(FIRST_IN, FIRST_OUT, 1)):
            pass
        with tracer.start_as_current_span(
            "execute_tool refund",
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "refund",
                "gen_ai.tool.call.id": "call_1",
                "gen_ai.tool.call.arguments": '{"order": 7}',
                "gen_ai.tool.call.result": '{"refunded": 7}',
            },
        ):
            pass
        with tracer.start_as_current_span("chat", attributes=chat(SECOND_IN, SECOND_OUT, 2)):
            pass
    provider.shutdown()
    return encode_spans(exporter.get_finished_spans())


def import_conversation(store: Store, tmp_path: Path, model: str = "gpt-4o-mini") -> str:
    """The conversation imported from a Collector file-exporter line; its run id."""
    path = tmp_path / f"{model}.jsonl"
    path.write_text(json.dumps(to_json(conversation(model))) + "\n")
    ((run, written),) = rp.import_otlp(path, store)
    assert written
    return run.id


@pytest.fixture
def imported(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """The conversation (gpt-4o-mini) imported; the refund tool's database in tmp_path."""
    monkeypatch.setenv("SIDE_EFFECT_DB", str(tmp_path / "effects.db"))
    return import_conversation(store, tmp_path)


def refund_tool() -> Callable[..., Any]:
    return rp.boundary(kind="tool", side_effects=True)(producer_agent.refund)


# -- the agents, one per SDK and call shape ------------------------------------------------------

TOOLS = producer_agent.TOOLS


def openai_chat(stream: bool) -> str:
    client = rp.instrument(openai.OpenAI(base_url=DEAD, api_key="sk-test", max_retries=0))
    tool = refund_tool()
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": PROMPT},
    ]

    def ask() -> Any:
        if not stream:
            return client.chat.completions.create(
                model="gpt-4o-mini", messages=messages, tools=TOOLS
            ).choices[0]
        with client.chat.completions.stream(
            model="gpt-4o-mini", messages=messages, tools=TOOLS
        ) as s:
            return s.get_final_completion().choices[0]

    first = ask()
    assert first.finish_reason == "tool_calls"
    call = first.message.tool_calls[0]
    result = tool(**json.loads(call.function.arguments))
    messages.append(first.message.model_dump(exclude_none=True, exclude={"parsed"}))
    messages.append({"role": "tool", "tool_call_id": call.id, "content": json.dumps(result)})
    second = ask()
    assert second.finish_reason == "stop"
    return str(second.message.content)


async def openai_chat_async(stream: bool) -> str:
    client = rp.instrument(openai.AsyncOpenAI(base_url=DEAD, api_key="sk-test", max_retries=0))
    tool = refund_tool()
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": PROMPT},
    ]

    async def ask() -> tuple[str, list[dict[str, Any]]]:
        if not stream:
            msg = (
                (
                    await client.chat.completions.create(
                        model="gpt-4o-mini", messages=messages, tools=TOOLS
                    )
                )
                .choices[0]
                .message
            )
            calls = [c.model_dump() for c in msg.tool_calls or ()]
            return msg.content or "", calls
        text, calls = "", []
        async for chunk in await client.chat.completions.create(
            model="gpt-4o-mini", messages=messages, tools=TOOLS, stream=True
        ):
            for choice in chunk.choices:
                text += choice.delta.content or ""
                calls += [c.model_dump(exclude={"index"}) for c in choice.delta.tool_calls or ()]
        return text, calls

    _, calls = await ask()
    call = calls[0]
    result = tool(**json.loads(call["function"]["arguments"]))
    messages.append({"role": "assistant", "tool_calls": calls})
    messages.append({"role": "tool", "tool_call_id": call["id"], "content": json.dumps(result)})
    text, _ = await ask()
    return text


def openai_responses(stream: bool) -> str:
    client = rp.instrument(openai.OpenAI(base_url=DEAD, api_key="sk-test", max_retries=0))
    tool = refund_tool()
    tools = [{"type": "function", **TOOLS[0]["function"]}]
    items: list[Any] = [{"role": "user", "content": PROMPT}]

    def ask() -> Any:
        if not stream:
            return client.responses.create(
                model="gpt-4o-mini", instructions=SYSTEM, input=items, tools=tools
            )
        with client.responses.stream(
            model="gpt-4o-mini", instructions=SYSTEM, input=items, tools=tools
        ) as s:
            return s.get_final_response()

    first = ask()
    call = next(i for i in first.output if i.type == "function_call")
    result = tool(**json.loads(call.arguments))
    items.append(
        {
            "type": "function_call",
            "call_id": call.call_id,
            "name": call.name,
            "arguments": call.arguments,
        }
    )
    items.append(
        {"type": "function_call_output", "call_id": call.call_id, "output": json.dumps(result)}
    )
    return str(ask().output_text)


def anthropic_messages(stream: bool) -> str:
    client = rp.instrument(
        anthropic.Anthropic(base_url="http://127.0.0.1:9", api_key="sk-ant-test", max_retries=0)
    )
    tool = refund_tool()
    tools = [
        {
            "name": "refund",
            "description": "Refund an order.",
            "input_schema": TOOLS[0]["function"]["parameters"],
        }
    ]
    messages: list[dict[str, Any]] = [{"role": "user", "content": PROMPT}]

    def ask() -> Any:
        options: dict[str, Any] = {
            "model": "claude-sonnet-4-5",
            "max_tokens": 256,
            "system": SYSTEM,
            "messages": messages,
            "tools": tools,
        }
        if not stream:
            return client.messages.create(**options)
        with client.messages.stream(**options) as s:
            return s.get_final_message()

    first = ask()
    assert first.stop_reason == "tool_use"
    use = next(b for b in first.content if b.type == "tool_use")
    result = tool(**use.input)
    messages.append({"role": "assistant", "content": [b.model_dump() for b in first.content]})
    messages.append(
        {
            "role": "user",
            "content": [
                {"type": "tool_result", "tool_use_id": use.id, "content": json.dumps(result)}
            ],
        }
    )
    second = ask()
    assert second.stop_reason == "end_turn"
    return "".join(b.text for b in second.content if b.type == "text")


def langchain_model(how: str) -> str:
    model, lc_tool = producer_agent.langchain_parts(DEAD)
    model.max_retries = 0
    rp.instrument(model)
    rp.instrument([lc_tool], side_effects=["refund"])
    if how == "invoke":
        return producer_agent.langchain_agent(model, lc_tool, PROMPT)
    from langchain_core.messages import HumanMessage, SystemMessage

    bound = model.bind_tools([lc_tool])
    messages: list[Any] = [SystemMessage(SYSTEM), HumanMessage(PROMPT)]

    def ask() -> Any:
        if how == "ainvoke":
            return asyncio.run(bound.ainvoke(messages))
        chunks = list(bound.stream(messages))
        total = chunks[0]
        for c in chunks[1:]:
            total = total + c
        return total

    first = ask()
    messages.append(first)
    messages.append(lc_tool.invoke(first.tool_calls[0]))
    return str(ask().content)


AGENTS: dict[str, Callable[[], str]] = {
    "openai chat": lambda: openai_chat(stream=False),
    "openai chat stream": lambda: openai_chat(stream=True),
    "openai chat async": lambda: asyncio.run(openai_chat_async(stream=False)),
    "openai chat async stream": lambda: asyncio.run(openai_chat_async(stream=True)),
    "openai responses": lambda: openai_responses(stream=False),
    "openai responses stream": lambda: openai_responses(stream=True),
    "anthropic": lambda: anthropic_messages(stream=False),
    "anthropic stream": lambda: anthropic_messages(stream=True),
    "langchain invoke": lambda: langchain_model("invoke"),
    "langchain ainvoke": lambda: langchain_model("ainvoke"),
    "langchain stream": lambda: langchain_model("stream"),
}


class TestServedAsTheSDKsOwnAnswer:
    @pytest.mark.parametrize("agent", sorted(AGENTS))
    def test_each_sdk_and_shape_replays_the_imported_run(
        self, agent: str, imported: str, store: Store, tmp_path: Path
    ) -> None:
        """The tool call and the final answer come from the trace as the SDK's own types; the
        tool is served, never called, and nothing reaches the network."""
        run_id = (
            import_conversation(store, tmp_path, "claude-sonnet-4-5")
            if "anthropic" in agent
            else imported
        )
        with rp.replay(run_id, store=store) as r:
            answer = AGENTS[agent]()
        assert answer == ANSWER
        assert r.ok, r.report()
        assert not (tmp_path / "effects.db").exists()

    def test_a_changed_tool_result_diverges_at_the_second_model_call(
        self, imported: str, store: Store
    ) -> None:
        """The agent sends the model something the trace never saw (a tool result it edited):
        a divergence at the second llm step, naming the message that changed."""
        client = rp.instrument(openai.OpenAI(base_url=DEAD, api_key="sk-test", max_retries=0))
        messages: list[Any] = [
            {"role": "system", "content": SYSTEM},
            {"role": "user", "content": PROMPT},
        ]

        def agent() -> None:
            first = client.chat.completions.create(model="gpt-4o-mini", messages=messages)
            call = first.choices[0].message.tool_calls[0]
            messages.append(first.choices[0].message.model_dump(exclude_none=True))
            messages.append({"role": "tool", "tool_call_id": call.id, "content": "failed"})
            client.chat.completions.create(model="gpt-4o-mini", messages=messages)

        with pytest.raises(rp.Divergence) as info, rp.replay(imported, store=store):
            agent()
        assert info.value.address.endswith("llm:gpt-4o-mini/1")
        assert [c.path for c in info.value.changes] == ["messages[3].content"]

    def test_another_model_diverges(self, imported: str, store: Store) -> None:
        """The model the trace requested is compared: asking another one is a divergence."""
        client = rp.instrument(openai.OpenAI(base_url=DEAD, api_key="sk-test", max_retries=0))
        with pytest.raises(rp.Divergence) as info, rp.replay(imported, store=store):
            client.chat.completions.create(
                model="gpt-4o",
                messages=[
                    {"role": "system", "content": SYSTEM},
                    {"role": "user", "content": PROMPT},
                ],
            )
        assert [c.path for c in info.value.changes] == ["model"]
