"""Comparing a recorded answer with today's: what is read out of a model's output (model,
fingerprint, tools and arguments, text, structured shape) for the chat-completion, Responses and
Anthropic formats, streamed or not, and a function's own answer; then field by field, text by a
judge."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from replayable._diff import diff_values
from replayable._drift._report import DriftChange

if TYPE_CHECKING:
    from replayable.testing._judges import Judge


@dataclass(slots=True)
class Answer:
    model: Any = None
    fingerprint: Any = None
    tools: list[tuple[str, Any]] = field(default_factory=list)
    text: str = ""
    shape: Any = None
    error: str | None = None
    value: Any = None
    """The answer itself, for outputs that are not a model SDK's response (a number, a list, a
    function's own dict): compared whole, so a change no field above names still shows."""


def _json_or(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _shape(value: Any) -> Any:
    """The JSON type skeleton of a value: keys and types, not contents."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        shapes = []
        for item in value:
            s = _shape(item)
            if s not in shapes:
                shapes.append(s)
        return shapes
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "null"


def _stream_text(chunks: list[Any]) -> tuple[str, list[tuple[str, Any]]]:
    """Text and tool calls folded from streamed chat-completion or Anthropic chunks."""
    text: list[str] = []
    calls: dict[int, list[str]] = {}
    for chunk in chunks:
        if not isinstance(chunk, dict):
            continue
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                text.append(delta["content"])
            for tc in delta.get("tool_calls") or ():
                fn = tc.get("function") or {}
                slot = calls.setdefault(int(tc.get("index", 0)), ["", ""])
                slot[0] += fn.get("name") or ""
                slot[1] += fn.get("arguments") or ""
        delta = chunk.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("text"), str):
            text.append(delta["text"])
        if chunk.get("type") == "response.output_text.delta" and isinstance(
            chunk.get("delta"), str
        ):
            text.append(chunk["delta"])
    return "".join(text), [(n, _json_or(a)) for n, a in calls.values()]


_TEXT_KEYS = ("text", "content", "answer", "reason", "message")


_WHOLE = "(value)"
"""The path :func:`diff_values` gives the value itself."""
_NAMED = frozenset({*_TEXT_KEYS, "tool", "arguments"})


def _top(path: str) -> str:
    """The top-level field a diff path starts with (``""`` for the value itself)."""
    return path.split(".", 1)[0].split("[", 1)[0]


def _chat_answer(out: dict[str, Any], ans: Answer, texts: list[str]) -> None:
    """An OpenAI chat completion's texts and tool calls."""
    for choice in out.get("choices") or ():
        msg = choice.get("message") or {}
        if isinstance(msg.get("content"), str):
            texts.append(msg["content"])
        for tc in msg.get("tool_calls") or ():
            fn = tc.get("function") or {}
            ans.tools.append((str(fn.get("name")), _json_or(fn.get("arguments"))))


def _responses_answer(out: dict[str, Any], ans: Answer, texts: list[str]) -> None:
    """An OpenAI Responses answer's texts and function calls."""
    for item in out["output"]:
        if item.get("type") == "function_call":
            ans.tools.append((str(item.get("name")), _json_or(item.get("arguments"))))
        for part in item.get("content") or ():
            if isinstance(part, dict) and isinstance(part.get("text"), str):
                texts.append(part["text"])


def _anthropic_answer(out: dict[str, Any], ans: Answer, texts: list[str]) -> None:
    """An Anthropic message's texts and tool uses."""
    for part in out["content"]:
        if part.get("type") == "tool_use":
            ans.tools.append((str(part.get("name")), part.get("input")))
        elif isinstance(part.get("text"), str):
            texts.append(part["text"])


def answer_of(output: Any, meta: Mapping[str, Any], error: Mapping[str, Any] | None) -> Answer:
    """What is compared: model, fingerprint, tools chosen, text and structured shape."""
    out = output if isinstance(output, dict) else {}
    ans = Answer(
        model=meta.get("response_model") or meta.get("model") or out.get("model"),
        fingerprint=meta.get("system_fingerprint") or out.get("system_fingerprint"),
    )
    if error is not None:
        ans.error = str(error.get("type", "error"))
        return ans
    texts: list[str] = []
    structured = True
    if isinstance(output, list):  # a stream, or a plain list answer
        text, ans.tools = _stream_text(output)
        texts.append(text)
        if not text and not ans.tools:
            ans.value = output
    elif "choices" in out:  # OpenAI chat completion
        _chat_answer(out, ans, texts)
    elif isinstance(out.get("output"), list):  # OpenAI Responses
        _responses_answer(out, ans, texts)
    elif isinstance(out.get("content"), list):  # Anthropic message
        _anthropic_answer(out, ans, texts)
    elif isinstance(output, str):
        texts.append(output)
    elif out:  # a function's own answer: a tool choice and/or text fields
        structured = False
        if isinstance(out.get("tool"), str):
            ans.tools.append((out["tool"], out.get("arguments")))
        texts.extend(str(out[k]) for k in _TEXT_KEYS if isinstance(out.get(k), str))
        ans.shape = _shape(out)
        ans.value = out
    elif not isinstance(output, dict):  # a number, a boolean, None
        structured = False
        ans.value = output
    ans.text = "\n".join(t for t in texts if t)
    if structured:
        parsed = _json_or(ans.text.strip())
        if isinstance(parsed, dict | list):
            ans.shape = _shape(parsed)
    return ans


def compare_answers(
    recorded: Answer, live: Answer, judge: Judge | None
) -> tuple[list[DriftChange], float | None]:
    changes: list[DriftChange] = []
    if recorded.error != live.error:
        changes.append(DriftChange("error", recorded.error, live.error))
    if recorded.model != live.model:
        changes.append(DriftChange("model", recorded.model, live.model))
    if recorded.fingerprint != live.fingerprint:
        changes.append(DriftChange("system_fingerprint", recorded.fingerprint, live.fingerprint))
    names_r = [n for n, _ in recorded.tools]
    names_l = [n for n, _ in live.tools]
    if names_r != names_l:
        changes.append(DriftChange("tool", names_r, names_l))
    else:
        for (name, a), (_, b) in zip(recorded.tools, live.tools, strict=True):
            diff = diff_values(a, b)
            if diff:
                detail = f"{name}: " + "; ".join(str(c).lstrip("~+- ") for c in diff[:5])
                changes.append(DriftChange("arguments", a, b, detail))
    if recorded.shape != live.shape:
        changes.append(DriftChange("shape", recorded.shape, live.shape))
    if recorded.value != live.value:
        # What the fields above did not already name (text fields, the tool and its arguments).
        rest = [c for c in diff_values(recorded.value, live.value) if _top(c.path) not in _NAMED]
        if rest:
            whole = rest[0].path == _WHOLE  # a bare value: "value: 12 -> 13" says it all
            detail = "" if whole else "; ".join(str(c).lstrip("~+- ") for c in rest[:5])
            changes.append(DriftChange("value", recorded.value, live.value, detail))
    similarity = None
    if recorded.text != live.text:
        if recorded.text and live.text and judge is not None:
            verdict = judge.judge(live.text, recorded.text)
            similarity = verdict.score
            if not verdict.passed:
                changes.append(
                    DriftChange(
                        "text",
                        recorded.text,
                        live.text,
                        f"similarity {verdict.score:.2f} ({verdict.reason})",
                    )
                )
        else:
            similarity = 0.0 if (recorded.text or live.text) else None
            changes.append(DriftChange("text", recorded.text, live.text))
    elif recorded.text:
        similarity = 1.0
    return changes, similarity
