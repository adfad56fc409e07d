"""Record and replay the OpenAI SDK at its provider seam.

For example (a sketch, not run as a doctest)::

    import openai, replayable as rp
    client = rp.instrument(openai.OpenAI())
    with rp.record(name="support"):
        client.chat.completions.create(model="gpt-4o", messages=[...])

Every path an agent takes to ``/chat/completions`` and ``/responses`` becomes a boundary of kind
``llm`` (``openai:chat.completions.create``, ``openai:responses.create``; streams add
``_stream``): ``create`` plain and ``stream=True``, ``.parse()`` / structured outputs,
``with_raw_response``, ``with_streaming_response``, ``chat.completions.stream`` and
``responses.stream``. ``embeddings.create`` becomes ``openai:embeddings.create`` of kind
``retrieval``. The input is the request body the SDK sends; every field decides the key except
the ones in :data:`IGNORED` (stored, never keyed). Metadata (never keyed): response model,
system fingerprint, usage, finish reasons, tool calls and the provider request id. Replay hands
the recorded answer to the SDK, so each path returns the SDK's own objects (``ChatCompletion``,
``ParsedChatCompletion``, ``LegacyAPIResponse``, ``Stream[ChatCompletionChunk]``...) with the
recorded headers, and never calls out. ``client.copy()`` / ``with_options()`` stay instrumented.
"""

from __future__ import annotations

from collections.abc import Iterable
from types import ModuleType
from typing import Any

from replayable._otlp._conventions import openai_message
from replayable.integrations._auto import after_init
from replayable.integrations._stainless import ClientFamily, Route
from replayable.integrations._steps import ChatShape, Reply, register_shape

__all__ = ["IGNORED", "ROUTES", "instrument", "instrument_library"]

IGNORED = (
    "stream",
    "stream_options",
    "user",
    "metadata",
    "store",
    "service_tier",
    "safety_identifier",
    "prompt_cache_key",
    "prompt_cache_retention",
    "background",
)
"""Request fields stored with the step but left out of its key: they do not change the answer."""

ROUTES = (
    Route("/chat/completions", "openai:chat.completions.create", "llm", "chat", IGNORED),
    Route("/responses", "openai:responses.create", "llm", "chat", IGNORED),
    Route("/embeddings", "openai:embeddings.create", "retrieval", "embeddings", ("user",)),
)
"""The recorded endpoints (a POST whose path ends so) and their boundary names."""


def _usage(usage: Any) -> dict[str, Any]:
    if not isinstance(usage, dict):
        return {}
    inp = usage.get("prompt_tokens", usage.get("input_tokens"))
    out = usage.get("completion_tokens", usage.get("output_tokens"))
    return {k: v for k, v in (("input_tokens", inp), ("output_tokens", out)) if v is not None}


def describe(body: Any) -> dict[str, Any]:
    """Metadata of a chat completion, response or embedding list: stored, never keyed."""
    if not isinstance(body, dict):
        return {}
    meta: dict[str, Any] = {
        "response_model": body.get("model"),
        "response_id": body.get("id"),
        "usage": _usage(body.get("usage")) or None,
        "system_fingerprint": body.get("system_fingerprint"),
    }
    choices = body.get("choices")
    if isinstance(choices, list):
        meta["finish_reasons"] = [c.get("finish_reason") for c in choices]
    elif body.get("object") == "response":
        meta["finish_reasons"] = [body.get("status")]
    tools = _tool_names(body)
    if tools:
        meta["tool_calls"] = tools
    return {k: v for k, v in meta.items() if v is not None}


def _tool_names(body: dict[str, Any]) -> list[str]:
    names = []
    for c in body.get("choices") or ():
        for tc in (c.get("message") or {}).get("tool_calls") or ():
            fn = tc.get("function")
            if isinstance(fn, dict):
                names.append(str(fn.get("name")))
    if body.get("object") == "response":
        for item in body.get("output") or ():
            if item.get("type") == "function_call":
                names.append(str(item.get("name")))
    return names


def accumulate(acc: dict[str, Any], event: Any) -> bool:
    """Fold one streamed chunk or event (its JSON data) into the step's metadata; True if the
    metadata changed."""
    if not isinstance(event, dict):
        return False
    before = repr(acc)
    if event.get("object") == "chat.completion.chunk":
        acc["response_model"] = event.get("model")
        acc["response_id"] = event.get("id")
        if event.get("system_fingerprint"):
            acc["system_fingerprint"] = event["system_fingerprint"]
        for c in event.get("choices") or ():
            if c.get("finish_reason"):
                acc.setdefault("finish_reasons", []).append(c["finish_reason"])
            for tc in (c.get("delta") or {}).get("tool_calls") or ():
                name = (tc.get("function") or {}).get("name")
                if name:
                    acc.setdefault("tool_calls", []).append(name)
        if event.get("usage"):
            acc["usage"] = _usage(event["usage"])
    elif event.get("type") in ("response.completed", "response.incomplete", "response.failed"):
        acc.update(describe(event.get("response")))
    return repr(acc) != before


def instrument(client: Any, *, side_effects: Iterable[str] = ()) -> Any:
    """Record ``client``'s model and embedding calls; returns the same client.

    Supports ``openai.OpenAI``, ``openai.AsyncOpenAI`` and their Azure subclasses.

    For example (a sketch, not run as a doctest)::

        client = instrument(openai.OpenAI())
    """
    return _FAMILY.instrument(client, side_effects)


_FAMILY = ClientFamily(
    "openai",
    "an OpenAI client",
    "OpenAI",
    "AsyncOpenAI",
    "openai.OpenAI, openai.AsyncOpenAI, openai.AzureOpenAI and openai.AsyncAzureOpenAI",
    ROUTES,
    describe,
    accumulate,
)


def instrument_library(module: ModuleType) -> None:
    """Instrument every client of the SDK constructed from now on (``rp.instrument()``)."""
    for name in ("OpenAI", "AsyncOpenAI", "AzureOpenAI", "AsyncAzureOpenAI"):
        cls = getattr(module, name, None)
        if isinstance(cls, type):
            after_init(cls, instrument)


# -- imported traces: a chat step read from a request, answered as OpenAI would -----------------

_FINISH = {"tool_call": "tool_calls", "tool_use": "tool_calls", "end_turn": "stop"}
_FINISH.update({"max_tokens": "length", "stop_sequence": "stop"})
_STREAM_OPEN = {"$open": {"status": 200, "headers": {"content-type": "text/event-stream"}}}


def chat_request(body: Any) -> dict[str, Any]:
    """A chat-completions request body as a chat step's request (model and messages)."""
    body = body if isinstance(body, dict) else {}
    messages = body.get("messages")
    return {
        "model": body.get("model"),
        "messages": [openai_message(m) for m in messages] if isinstance(messages, list) else [],
    }


def _finish(reply: Reply) -> str:
    return _FINISH.get(reply.finish_reason, reply.finish_reason)


def _model(reply: Reply, body: Any) -> Any:
    return reply.model or (body.get("model") if isinstance(body, dict) else None)


def chat_answer(reply: Reply, body: Any) -> dict[str, Any]:
    """An imported answer as the chat completion body the OpenAI API returns."""
    message: dict[str, Any] = {"role": "assistant", "content": reply.text, "refusal": None}
    if reply.tool_calls:
        message["tool_calls"] = [
            {
                "id": c["id"],
                "type": "function",
                "function": {"name": c.get("name"), "arguments": reply.arguments_json(c)},
            }
            for c in reply.tool_calls
        ]
    return {
        "id": reply.id or "chatcmpl-imported",
        "object": "chat.completion",
        "created": 0,
        "model": _model(reply, body),
        "choices": [{"index": 0, "message": message, "finish_reason": _finish(reply)}],
        "usage": {
            "prompt_tokens": reply.input_tokens,
            "completion_tokens": reply.output_tokens,
            "total_tokens": reply.input_tokens + reply.output_tokens,
        },
    }


def chat_stream_answer(reply: Reply, body: Any) -> list[Any]:
    """An imported answer as the chunks of a streamed chat completion (one delta for the
    text, one per tool call), ``[DONE]`` last."""
    whole = chat_answer(reply, body)
    base = {k: whole[k] for k in ("id", "created", "model")} | {"object": "chat.completion.chunk"}

    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {**base, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}

    chunks: list[Any] = [_STREAM_OPEN, chunk({"role": "assistant", "content": ""})]
    if reply.text:
        chunks.append(chunk({"content": reply.text}))
    for i, call in enumerate(whole["choices"][0]["message"].get("tool_calls") or ()):
        chunks.append(chunk({"tool_calls": [{"index": i, **call}]}))
    chunks.append(chunk({}, _finish(reply)))
    options = body.get("stream_options") if isinstance(body, dict) else None
    if isinstance(options, dict) and options.get("include_usage"):
        chunks.append({**base, "choices": [], "usage": whole["usage"]})
    chunks.append({"$data": "[DONE]"})
    return chunks


def responses_request(body: Any) -> dict[str, Any]:
    """A Responses request body as a chat step's request: instructions as the system
    message, input items (messages, function calls and their outputs) as chat messages."""
    body = body if isinstance(body, dict) else {}
    messages: list[dict[str, Any]] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "system", "content": body["instructions"]})
    items = body.get("input")
    if isinstance(items, str):
        items = [{"role": "user", "content": items}]
    for item in items if isinstance(items, list) else ():
        if not isinstance(item, dict):
            continue
        kind = item.get("type", "message")
        if kind == "function_call":
            fn = {"name": item.get("name"), "arguments": item.get("arguments")}
            msg = openai_message({"role": "assistant", "tool_calls": [{"function": fn}]})
            call = {"id": item.get("call_id"), **msg["tool_calls"][0]}
            last = messages[-1] if messages else None
            if last is not None and last.get("role") == "assistant":
                last.setdefault("tool_calls", []).append(call)  # one turn's items, one message
            else:
                messages.append({"role": "assistant", "tool_calls": [call]})
        elif kind == "function_call_output":
            out = item.get("output")
            messages.append(
                openai_message(
                    {"role": "tool", "tool_call_id": item.get("call_id"), "content": out}
                )
            )
        elif kind == "message":
            content = item.get("content")
            if isinstance(content, list):
                content = [
                    {**p, "type": "text"}
                    if isinstance(p, dict) and p.get("type") in ("input_text", "output_text")
                    else p
                    for p in content
                ]
            messages.append(openai_message({**item, "content": content}))
    return {"model": body.get("model"), "messages": messages}


def _response_items(reply: Reply) -> list[dict[str, Any]]:
    items: list[dict[str, Any]] = []
    if reply.text:
        items.append(
            {
                "type": "message",
                "id": "msg_imported",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": reply.text, "annotations": []}],
            }
        )
    for i, c in enumerate(reply.tool_calls):
        items.append(
            {
                "type": "function_call",
                "id": f"fc_imported_{i}",
                "call_id": c["id"],
                "name": c.get("name"),
                "arguments": reply.arguments_json(c),
                "status": "completed",
            }
        )
    return items


def responses_answer(reply: Reply, body: Any) -> dict[str, Any]:
    """An imported answer as the response body the Responses API returns."""
    body = body if isinstance(body, dict) else {}
    return {
        "id": reply.id or "resp_imported",
        "object": "response",
        "created_at": 0,
        "status": "incomplete" if _finish(reply) == "length" else "completed",
        "model": _model(reply, body),
        "output": _response_items(reply),
        "parallel_tool_calls": True,
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "metadata": {},
        "usage": {
            "input_tokens": reply.input_tokens,
            "output_tokens": reply.output_tokens,
            "total_tokens": reply.input_tokens + reply.output_tokens,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens_details": {"reasoning_tokens": 0},
        },
    }


def responses_stream_answer(reply: Reply, body: Any) -> list[Any]:
    """An imported answer as the events of a streamed response: created, each output item
    added, its text or arguments, done, then completed."""
    whole = responses_answer(reply, body)
    pending = {**whole, "status": "in_progress", "output": [], "usage": None}
    events: list[dict[str, Any]] = [{"type": "response.created", "response": pending}]
    for n, item in enumerate(whole["output"]):
        at = {"output_index": n, "item_id": item["id"]}
        if item["type"] == "message":
            text = item["content"][0]["text"]
            part = {"type": "output_text", "text": "", "annotations": []}
            empty = {**item, "status": "in_progress", "content": []}
            events += [
                {"type": "response.output_item.added", "output_index": n, "item": empty},
                {"type": "response.content_part.added", **at, "content_index": 0, "part": part},
                {"type": "response.output_text.delta", **at, "content_index": 0, "delta": text}
                | {"logprobs": []},
                {"type": "response.output_text.done", **at, "content_index": 0, "text": text}
                | {"logprobs": []},
                {"type": "response.content_part.done", **at, "content_index": 0}
                | {"part": {**part, "text": text}},
            ]
        else:
            empty = {**item, "status": "in_progress", "arguments": ""}
            events += [
                {"type": "response.output_item.added", "output_index": n, "item": empty},
                {"type": "response.function_call_arguments.delta", **at}
                | {"delta": item["arguments"]},
                {"type": "response.function_call_arguments.done", **at}
                | {"name": item["name"], "arguments": item["arguments"]},
            ]
        events.append({"type": "response.output_item.done", "output_index": n, "item": item})
    events.append({"type": "response.completed", "response": whole})
    return [_STREAM_OPEN, *({**e, "sequence_number": i} for i, e in enumerate(events))]


register_shape("openai:chat.completions.create", ChatShape(chat_request, chat_answer))
register_shape("openai:chat.completions.create_stream", ChatShape(chat_request, chat_stream_answer))
register_shape("openai:responses.create", ChatShape(responses_request, responses_answer))
register_shape(
    "openai:responses.create_stream", ChatShape(responses_request, responses_stream_answer)
)
