"""The seam between imported traces and the SDK integrations: how an integration's model call
reads as a chat step, and how it is answered from one.

A run imported from OpenTelemetry (:mod:`replayable._otlp`) keeps each model call in one shape
whatever SDK made it and whichever convention traced it::

    request = {"model": ..., "messages": [{"role", "content", "tool_calls"?, "tool_call_id"?}]}
    answer  = {"choices": [{"message": {"role", "content", "tool_calls"?}, "finish_reason"}],
               "model", "id", "usage": {"input_tokens", "output_tokens"}}

with tool calls as ``{"id", "name", "arguments"}``. Each integration registers a
:class:`ChatShape` for its ``llm`` boundaries (by boundary name): ``request`` reads the live
call's input (as the boundary records it) in that shape, so the replay compares what the trace
carries; ``answer`` turns an imported answer into the output the boundary records (a stream:
its chunk list), which the boundary's own codec then rebuilds as the SDK's types.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

__all__ = ["ChatShape", "Reply", "register_shape", "reply_of", "shape_of"]


@dataclass(frozen=True, slots=True)
class ChatShape:
    """How one ``llm`` boundary reads as a chat step and answers from one."""

    request: Callable[[Any], dict[str, Any]]
    """The live call's recorded input in the common request shape."""
    answer: Callable[[Reply, Any], Any]
    """The boundary's recorded output (a stream: its chunks) for an imported answer, given the
    live call's recorded input."""


@dataclass(frozen=True, slots=True)
class Reply:
    """An imported answer's first choice, flattened for the SDK builders."""

    text: str | None
    tool_calls: list[dict[str, Any]]
    """``{"id", "name", "arguments"}``, arguments as a JSON object (or text)."""
    finish_reason: str
    """As the trace says, else derived: ``tool_calls`` when the answer calls tools, ``stop``."""
    model: str | None
    id: str | None
    input_tokens: int
    output_tokens: int

    def arguments_json(self, call: dict[str, Any]) -> str:
        """A tool call's arguments as the JSON text an SDK carries."""
        args = call.get("arguments")
        if isinstance(args, str):
            return args
        return json.dumps(args if args is not None else {}, ensure_ascii=False)


_SHAPES: dict[str, ChatShape] = {}


def register_shape(name: str, shape: ChatShape) -> None:
    """Register how the ``llm`` boundary ``name`` reads as and answers from a chat step."""
    _SHAPES[name] = shape


def shape_of(name: str) -> ChatShape | None:
    """The chat shape of the boundary ``name``, if an integration registered one."""
    return _SHAPES.get(name)


def _int(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def reply_of(answer: Any) -> Reply:
    """The first choice of an imported answer, with its model, id and usage."""
    answer = answer if isinstance(answer, dict) else {}
    choices = answer.get("choices")
    choice = choices[0] if isinstance(choices, list) and choices else None
    choice = choice if isinstance(choice, dict) else {}
    message = choice.get("message")
    message = message if isinstance(message, dict) else {}
    content = message.get("content")
    text = content if isinstance(content, str) else None
    if content is not None and text is None:
        text = json.dumps(content, ensure_ascii=False)
    calls = [
        {**c, "id": c.get("id") or f"call_{i}"}
        for i, c in enumerate(message.get("tool_calls") or ())
        if isinstance(c, dict)
    ]
    finish = choice.get("finish_reason")
    if not isinstance(finish, str) or not finish:
        finish = "tool_calls" if calls else "stop"
    usage = answer.get("usage")
    usage = usage if isinstance(usage, dict) else {}
    return Reply(
        text=text,
        tool_calls=calls,
        finish_reason=finish,
        model=answer.get("model") if isinstance(answer.get("model"), str) else None,
        id=answer.get("id") if isinstance(answer.get("id"), str) else None,
        input_tokens=_int(usage.get("input_tokens")),
        output_tokens=_int(usage.get("output_tokens")),
    )
