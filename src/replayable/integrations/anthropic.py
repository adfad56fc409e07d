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

from collections.abc import Iterable
from types import ModuleType
from typing import Any

from replayable.integrations._auto import after_init
from replayable.integrations._stainless import ClientFamily, Route

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
