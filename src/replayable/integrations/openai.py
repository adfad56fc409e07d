"""Record and replay the OpenAI SDK at its provider seam.

>>> import openai, replayable as rp
>>> from replayable.integrations.openai import instrument
>>> client = instrument(openai.OpenAI())
>>> with rp.record(name="support"):
...     client.chat.completions.create(model="gpt-4o", messages=[...])

``chat.completions.create`` and ``responses.create`` (plain and ``stream=True``; the
``chat.completions.stream`` / ``responses.stream`` helpers go through them) become boundaries of
kind ``llm``. Keyed: the fields that decide the answer (model, messages/input, tools, sampling
settings...). Stored, never keyed: everything else, plus response model, system fingerprint,
usage, finish reasons and the provider request id in the step's metadata. Replay returns the
SDK's own objects (``ChatCompletion``, ``Stream[ChatCompletionChunk]``...) and never calls out.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from replayable.errors import UnsupportedClient
from replayable.integrations._stainless import (
    SDK,
    Endpoint,
    instrument_client,
    load_sdk,
    no_tools,
)

__all__ = ["CHAT_KEY", "RESPONSES_KEY", "instrument"]

CHAT_KEY = (
    "model",
    "messages",
    "tools",
    "tool_choice",
    "functions",
    "function_call",
    "parallel_tool_calls",
    "temperature",
    "top_p",
    "max_tokens",
    "max_completion_tokens",
    "seed",
    "response_format",
    "n",
    "stop",
    "frequency_penalty",
    "presence_penalty",
    "logit_bias",
    "logprobs",
    "top_logprobs",
    "reasoning_effort",
    "verbosity",
    "modalities",
    "audio",
    "prediction",
    "web_search_options",
    "extra_body",
)
"""The chat-completion fields that decide the answer; every other argument is stored only."""

RESPONSES_KEY = (
    "model",
    "input",
    "instructions",
    "tools",
    "tool_choice",
    "parallel_tool_calls",
    "max_tool_calls",
    "temperature",
    "top_p",
    "top_logprobs",
    "max_output_tokens",
    "reasoning",
    "text",
    "previous_response_id",
    "conversation",
    "prompt",
    "truncation",
    "include",
    "extra_body",
)
"""The Responses API fields that decide the answer."""

ENDPOINTS = (
    Endpoint(
        path=("chat", "completions"),
        name="openai:chat.completions.create",
        operation="chat",
        response_type="openai.types.chat:ChatCompletion",
        chunk_type="openai.types.chat:ChatCompletionChunk",
        key=CHAT_KEY,
    ),
    Endpoint(
        path=("responses",),
        name="openai:responses.create",
        operation="chat",
        response_type="openai.types.responses:Response",
        chunk_type="openai.types.responses:ResponseStreamEvent",
        key=RESPONSES_KEY,
    ),
)


def _usage(usage: Any) -> dict[str, Any]:
    if usage is None:
        return {}

    def get(name: str) -> Any:
        return usage.get(name) if isinstance(usage, dict) else getattr(usage, name, None)

    inp = get("prompt_tokens") if get("prompt_tokens") is not None else get("input_tokens")
    out = get("completion_tokens") if get("completion_tokens") is not None else get("output_tokens")
    return {"input_tokens": inp, "output_tokens": out}


def describe(resp: Any) -> dict[str, Any]:
    """Metadata of a ``ChatCompletion`` or ``Response``: stored with the step, never keyed."""
    meta: dict[str, Any] = {
        "response_model": getattr(resp, "model", None),
        "response_id": getattr(resp, "id", None),
        "request_id": getattr(resp, "_request_id", None),
        "usage": _usage(getattr(resp, "usage", None)),
    }
    if getattr(resp, "system_fingerprint", None):
        meta["system_fingerprint"] = resp.system_fingerprint
    choices = getattr(resp, "choices", None)
    if choices is not None:
        meta["finish_reasons"] = [c.finish_reason for c in choices]
    elif getattr(resp, "status", None) is not None:
        meta["finish_reasons"] = [resp.status]
    tools = _tool_names(resp)
    if tools:
        meta["tool_calls"] = tools
    return {k: v for k, v in meta.items() if v is not None}


def _tool_names(resp: Any) -> list[str]:
    names = []
    for c in getattr(resp, "choices", None) or ():
        for tc in getattr(c.message, "tool_calls", None) or ():
            fn = getattr(tc, "function", None)
            if fn is not None:
                names.append(fn.name)
    for item in getattr(resp, "output", None) or ():
        if getattr(item, "type", None) == "function_call":
            names.append(item.name)
    return names


def accumulate(acc: dict[str, Any], event: Any) -> None:
    """Fold one streamed chunk or event into the step's metadata."""
    if getattr(event, "object", None) == "chat.completion.chunk":
        acc["response_model"] = event.model
        acc["response_id"] = event.id
        if getattr(event, "system_fingerprint", None):
            acc["system_fingerprint"] = event.system_fingerprint
        for c in event.choices:
            if c.finish_reason:
                acc.setdefault("finish_reasons", []).append(c.finish_reason)
            for tc in c.delta.tool_calls or ():
                if tc.function is not None and tc.function.name:
                    acc.setdefault("tool_calls", []).append(tc.function.name)
        if event.usage is not None:
            acc["usage"] = _usage(event.usage)
    elif getattr(event, "type", None) in ("response.completed", "response.incomplete"):
        acc.update(describe(event.response))


def instrument(client: Any, *, side_effects: Iterable[str] = ()) -> Any:
    """Record ``client``'s model calls as ``llm`` boundaries; returns the same client.

    Supports ``openai.OpenAI`` and ``openai.AsyncOpenAI`` (and their Azure subclasses).

    >>> client = instrument(openai.OpenAI())
    """
    no_tools(side_effects, "an OpenAI client")
    sdk = load_sdk("openai", "openai")
    if isinstance(client, sdk.AsyncOpenAI):
        is_async = True
    elif isinstance(client, sdk.OpenAI):
        is_async = False
    else:
        raise UnsupportedClient(
            f"cannot instrument {type(client).__module__}.{type(client).__qualname__}: "
            "replayable.integrations.openai supports openai.OpenAI and openai.AsyncOpenAI "
            "(for Anthropic clients use replayable.integrations.anthropic)"
        )
    return instrument_client(client, _sdk(sdk), ENDPOINTS, is_async)


_SDK: SDK | None = None


def _sdk(module: Any) -> SDK:
    global _SDK
    if _SDK is None:
        _SDK = SDK(module=module, provider="openai", describe=describe, accumulate=accumulate)
    return _SDK
