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

from replayable.integrations._auto import after_init
from replayable.integrations._stainless import ClientFamily, Route

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
