"""Record and replay the Anthropic SDK at its provider seam.

>>> import anthropic, replayable as rp
>>> from replayable.integrations.anthropic import instrument
>>> client = instrument(anthropic.Anthropic())
>>> with rp.record(name="support"):
...     client.messages.create(model="claude-sonnet-4-5", max_tokens=512, messages=[...])

``messages.create`` (plain and ``stream=True``) and ``messages.stream`` become boundaries of
kind ``llm``. Keyed: model, system, messages, tools, tool choice, max tokens, sampling settings,
thinking and output config. Stored, never keyed: everything else, plus response model, usage,
stop reason and the request id in the step's metadata. Replay returns ``Message`` objects and
``MessageStream`` streams rebuilt from the recording, and never calls out.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from typing import Any

from replayable.context import current_session
from replayable.errors import UnsupportedClient
from replayable.integrations._stainless import (
    SDK,
    Endpoint,
    instrument_client,
    load_sdk,
    no_tools,
)

__all__ = ["MESSAGES_KEY", "instrument"]

MESSAGES_KEY = (
    "model",
    "system",
    "messages",
    "max_tokens",
    "tools",
    "tool_choice",
    "temperature",
    "top_p",
    "top_k",
    "stop_sequences",
    "thinking",
    "output_config",
    "container",
    "extra_body",
)
"""The Messages API fields that decide the answer; every other argument is stored only."""

ENDPOINTS = (
    Endpoint(
        path=("messages",),
        name="anthropic:messages.create",
        operation="chat",
        response_type="anthropic.types:Message",
        chunk_type="anthropic.types:RawMessageStreamEvent",
        key=MESSAGES_KEY,
    ),
)


def _usage(usage: Any) -> dict[str, Any]:
    if usage is None:
        return {}
    return {
        "input_tokens": getattr(usage, "input_tokens", None),
        "output_tokens": getattr(usage, "output_tokens", None),
    }


def describe(msg: Any) -> dict[str, Any]:
    """Metadata of a ``Message``: stored with the step, never keyed."""
    meta: dict[str, Any] = {
        "response_model": getattr(msg, "model", None),
        "response_id": getattr(msg, "id", None),
        "request_id": getattr(msg, "_request_id", None),
        "usage": _usage(getattr(msg, "usage", None)),
        "finish_reasons": [msg.stop_reason] if getattr(msg, "stop_reason", None) else None,
    }
    tools = [b.name for b in getattr(msg, "content", None) or () if b.type == "tool_use"]
    if tools:
        meta["tool_calls"] = tools
    return {k: v for k, v in meta.items() if v is not None}


def accumulate(acc: dict[str, Any], event: Any) -> None:
    """Fold one streamed event into the step's metadata."""
    kind = getattr(event, "type", None)
    if kind == "message_start":
        acc.update(describe(event.message))
    elif kind == "content_block_start" and event.content_block.type == "tool_use":
        acc.setdefault("tool_calls", []).append(event.content_block.name)
    elif kind == "message_delta":
        if event.delta.stop_reason:
            acc["finish_reasons"] = [event.delta.stop_reason]
        out = getattr(event.usage, "output_tokens", None)
        if out is not None:
            acc.setdefault("usage", {})["output_tokens"] = out


_SDK: SDK | None = None


def _sdk(module: Any) -> SDK:
    global _SDK
    if _SDK is None:
        _SDK = SDK(module=module, provider="anthropic", describe=describe, accumulate=accumulate)
    return _SDK


def _patch_stream(client: Any, sdk: Any, is_async: bool) -> None:
    """``messages.stream(...)`` posts directly; route it through the patched ``create``."""
    from anthropic.lib.streaming import AsyncMessageStreamManager, MessageStreamManager

    resource = client.messages
    original = resource.stream
    if hasattr(original, "__replayable_original__"):
        return

    def stream(*args: Any, **kwargs: Any) -> Any:
        fmt = kwargs.get("output_format", sdk.NOT_GIVEN)
        if current_session() is None or args or fmt not in (None, sdk.NOT_GIVEN, sdk.omit):
            return original(*args, **kwargs)
        kwargs.pop("output_format", None)
        if is_async:
            return AsyncMessageStreamManager(resource.create(**kwargs, stream=True))
        return MessageStreamManager(
            functools.partial(resource.create, **kwargs, stream=True), output_format=sdk.NOT_GIVEN
        )

    stream.__replayable_original__ = original  # type: ignore[attr-defined]
    resource.stream = stream


def instrument(client: Any, *, side_effects: Iterable[str] = ()) -> Any:
    """Record ``client``'s model calls as ``llm`` boundaries; returns the same client.

    Supports ``anthropic.Anthropic`` and ``anthropic.AsyncAnthropic``.

    >>> client = instrument(anthropic.Anthropic())
    """
    no_tools(side_effects, "an Anthropic client")
    sdk = load_sdk("anthropic", "anthropic")
    if isinstance(client, sdk.AsyncAnthropic):
        is_async = True
    elif isinstance(client, sdk.Anthropic):
        is_async = False
    else:
        raise UnsupportedClient(
            f"cannot instrument {type(client).__module__}.{type(client).__qualname__}: "
            "replayable.integrations.anthropic supports anthropic.Anthropic and "
            "anthropic.AsyncAnthropic (for OpenAI clients use replayable.integrations.openai)"
        )
    instrument_client(client, _sdk(sdk), ENDPOINTS, is_async)
    _patch_stream(client, sdk, is_async)
    return client
