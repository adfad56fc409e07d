"""Record and replay the Anthropic SDK at its provider seam.

For example (a sketch, not run as a doctest)::

    import anthropic, replayable as rp
    client = rp.instrument(anthropic.Anthropic())
    with rp.record(name="support"):
        client.messages.create(model="claude-sonnet-4-5", max_tokens=512, messages=[...])

Every path to ``/v1/messages`` becomes a boundary of kind ``llm`` named
``anthropic:messages.create`` (``_stream`` for streams): ``messages.create`` plain and
``stream=True``, ``messages.stream``, ``messages.parse``, ``with_raw_response`` and
``with_streaming_response``. The input is the request body; every field is keyed except those
in :data:`IGNORED`. Metadata (never keyed): response model, usage, stop reason, tool calls and
the request id. Replay returns the SDK's own ``Message``, ``MessageStream`` and raw-response
objects rebuilt from the recording, and never calls out.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from replayable._otlp._conventions import parse_json
from replayable.integrations._auto import after_init
from replayable.integrations._stainless import ClientFamily, Route
from replayable.integrations._steps import ChatShape, Reply, register_shape

__all__ = ["IGNORED", "ROUTES", "instrument", "instrument_library"]

IGNORED = ("stream", "metadata", "service_tier")
"""Request fields stored with the step but left out of its key."""

ROUTES = (Route("/v1/messages", "anthropic:messages.create", "llm", "chat", IGNORED),)
"""The recorded endpoints and their boundary names."""


def _usage(usage: Any) -> dict[str, Any]:
    if not isinstance(usage, dict):
        return {}
    return {k: usage[k] for k in ("input_tokens", "output_tokens") if usage.get(k) is not None}


def describe(msg: Any) -> dict[str, Any]:
    """Metadata of a ``Message`` body: stored with the step, never keyed."""
    if not isinstance(msg, dict):
        return {}
    meta: dict[str, Any] = {
        "response_model": msg.get("model"),
        "response_id": msg.get("id"),
        "usage": _usage(msg.get("usage")) or None,
        "finish_reasons": [msg["stop_reason"]] if msg.get("stop_reason") else None,
    }
    content = msg.get("content")
    content = content if isinstance(content, list) else []
    tools = [str(b.get("name")) for b in content if b.get("type") == "tool_use"]
    if tools:
        meta["tool_calls"] = tools
    return {k: v for k, v in meta.items() if v is not None}


def accumulate(acc: dict[str, Any], event: Any) -> bool:
    """Fold one streamed event (its JSON data) into the step's metadata; True if the metadata
    changed."""
    if not isinstance(event, dict):
        return False
    before = repr(acc)
    kind = event.get("type")
    if kind == "message_start":
        acc.update(describe(event.get("message")))
    elif kind == "content_block_start":
        block = event.get("content_block") or {}
        if block.get("type") == "tool_use":
            acc.setdefault("tool_calls", []).append(block.get("name"))
    elif kind == "message_delta":
        stop = (event.get("delta") or {}).get("stop_reason")
        if stop:
            acc["finish_reasons"] = [stop]
        out = (event.get("usage") or {}).get("output_tokens")
        if out is not None:
            acc.setdefault("usage", {})["output_tokens"] = out
    return repr(acc) != before


def instrument(client: Any, *, side_effects: Iterable[str] = ()) -> Any:
    """Record ``client``'s model calls as ``llm`` boundaries; returns the same client.

    Supports ``anthropic.Anthropic`` and ``anthropic.AsyncAnthropic``.

    For example (a sketch, not run as a doctest)::

        client = instrument(anthropic.Anthropic())
    """
    return _FAMILY.instrument(client, side_effects)


_FAMILY = ClientFamily(
    "anthropic",
    "an Anthropic client",
    "Anthropic",
    "AsyncAnthropic",
    "anthropic.Anthropic and anthropic.AsyncAnthropic",
    ROUTES,
    describe,
    accumulate,
)


def instrument_library(module: ModuleType) -> None:
    """Instrument every client of the SDK constructed from now on (``rp.instrument()``)."""
    for name in ("Anthropic", "AsyncAnthropic"):
        cls = getattr(module, name, None)
        if isinstance(cls, type):
            after_init(cls, instrument)


# -- imported traces: a chat step read from a request, answered as Anthropic would --------------

_STOP = {"tool_calls": "tool_use", "tool_call": "tool_use", "stop": "end_turn"}
_STOP.update({"length": "max_tokens", "content_filter": "refusal"})


def _text(content: Any) -> str | None:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        texts = [b.get("text") for b in content if isinstance(b, dict) and b.get("type") == "text"]
        return "".join(t for t in texts if isinstance(t, str))
    return None


def messages_request(body: Any) -> dict[str, Any]:
    """A Messages request body as a chat step's request: the system prompt as the first
    message, tool uses as tool calls, each tool result as a ``tool`` message."""
    body = body if isinstance(body, dict) else {}
    out: list[dict[str, Any]] = []
    system = _text(body.get("system"))
    if system:
        out.append({"role": "system", "content": system})
    for m in body.get("messages") or ():
        if not isinstance(m, dict):
            continue
        content = m.get("content")
        blocks = content if isinstance(content, list) else []
        for b in blocks:
            if isinstance(b, dict) and b.get("type") == "tool_result":
                result = _text(b.get("content"))
                tool = {"role": "tool", "tool_call_id": b.get("tool_use_id"), "content": result}
                out.append({k: v for k, v in tool.items() if v is not None})
        calls = [
            {"id": b.get("id"), "name": b.get("name"), "arguments": b.get("input")}
            for b in blocks
            if isinstance(b, dict) and b.get("type") == "tool_use"
        ]
        text = (
            content
            if isinstance(content, str)
            else _text([b for b in blocks if isinstance(b, dict) and b.get("type") == "text"])
        )
        if not text and not calls and blocks:
            continue  # only tool results: carried as tool messages above
        msg: dict[str, Any] = {"role": m.get("role", "user")}
        if text:
            msg["content"] = text
        if calls:
            msg["tool_calls"] = calls
        out.append(msg)
    return {"model": body.get("model"), "messages": out}


def _blocks(reply: Reply) -> list[dict[str, Any]]:
    blocks: list[dict[str, Any]] = []
    if reply.text:
        blocks.append({"type": "text", "text": reply.text})
    for c in reply.tool_calls:
        args = c.get("arguments")
        args = parse_json(args) if isinstance(args, str) else args
        blocks.append(
            {
                "type": "tool_use",
                "id": c["id"],
                "name": c.get("name"),
                "input": args if isinstance(args, dict) else {},
            }
        )
    return blocks


def message_answer(reply: Reply, body: Any) -> dict[str, Any]:
    """An imported answer as the ``Message`` body the Anthropic API returns."""
    return {
        "id": reply.id or "msg_imported",
        "type": "message",
        "role": "assistant",
        "model": reply.model or (body.get("model") if isinstance(body, dict) else None),
        "content": _blocks(reply),
        "stop_reason": _STOP.get(reply.finish_reason, reply.finish_reason),
        "stop_sequence": None,
        "usage": {"input_tokens": reply.input_tokens, "output_tokens": reply.output_tokens},
    }


def message_stream_answer(reply: Reply, body: Any) -> list[Any]:
    """An imported answer as the events of a streamed message: message_start, each content
    block (start, one delta, stop), message_delta with the stop reason, message_stop."""
    whole = message_answer(reply, body)
    usage = whole["usage"]
    start = {**whole, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 0}}
    events: list[Any] = [
        {"$open": {"status": 200, "headers": {"content-type": "text/event-stream"}}},
        {"type": "message_start", "message": start},
    ]
    for i, block in enumerate(whole["content"]):
        if block["type"] == "text":
            empty: dict[str, Any] = {"type": "text", "text": ""}
            delta = {"type": "text_delta", "text": block["text"]}
        else:
            empty = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        events += [
            {"type": "content_block_start", "index": i, "content_block": empty},
            {"type": "content_block_delta", "index": i, "delta": delta},
            {"type": "content_block_stop", "index": i},
        ]
    events += [
        {
            "type": "message_delta",
            "delta": {"stop_reason": whole["stop_reason"], "stop_sequence": None},
            "usage": {"output_tokens": usage["output_tokens"]},
        },
        {"type": "message_stop"},
    ]
    return events


register_shape("anthropic:messages.create", ChatShape(messages_request, message_answer))
register_shape(
    "anthropic:messages.create_stream", ChatShape(messages_request, message_stream_answer)
)
