"""What one span means, by the convention that wrote it: OpenTelemetry GenAI, OpenInference,
Langfuse or Logfire (each from its published attribute names), or none (a plain ``span``).

Every convention is read into one :class:`StepView`: a kind (``llm``, ``tool``, ``agent``,
``chain``, ``retrieval``, ``embedding`` or ``span``), a name, an input and output in one shape
per kind, and what the span did not carry. LLM steps share one shape whatever wrote them::

    input  = {"model": ..., "messages": [{"role", "content", "tool_calls"?, "tool_call_id"?}],
              "parameters": {...}, "tools": [...]}
    output = {"choices": [{"message": {...}, "finish_reason": ...}], "model", "id", "usage"}

with tool calls as ``{"id", "name", "arguments"}`` (arguments parsed from JSON when they are).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import orjson

from replayable._otlp._decode import Span, check_depth

__all__ = ["CAPTURE_HINTS", "StepView", "read_span"]

CAPTURE_HINTS = {
    "gen_ai": "set OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true (with "
    "OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental: SPAN_ONLY) where the traced "
    "app runs",
    "openinference": "unset OpenInference's OPENINFERENCE_HIDE_INPUTS / OPENINFERENCE_HIDE_OUTPUTS "
    "/ OPENINFERENCE_HIDE_INPUT_MESSAGES / OPENINFERENCE_HIDE_OUTPUT_MESSAGES / "
    "OPENINFERENCE_HIDE_INPUT_TEXT / OPENINFERENCE_HIDE_OUTPUT_TEXT (or the same TraceConfig "
    "fields) where the traced app runs",
    "langfuse": "let the Langfuse SDK capture inputs and outputs where the traced app runs: "
    "LANGFUSE_OBSERVE_DECORATOR_IO_CAPTURE_ENABLED unset or true, @observe(capture_input=True, "
    "capture_output=True), and no mask= function that removes message content",
    "logfire": "let Logfire keep message content where the traced app runs: no scrubbing of it "
    "(logfire.configure(scrubbing=False), or a ScrubbingOptions callback that keeps it; a "
    "scrubbed value reads '[Scrubbed due to ...]')",
}
"""Per convention, the setting that makes a producer capture message content."""

_SAMPLING = ("temperature", "top_p", "top_k", "max_tokens", "max_output_tokens", "seed")


@dataclass(slots=True)
class StepView:
    """One span read as a step."""

    kind: str
    name: str
    convention: str
    input: Any = None
    output: Any = None
    meta: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    """Fields the trace did not carry (so replay cannot compare or serve them)."""
    content: bool = True
    """Whether the span carried the message content a replay serves."""


def read_span(span: Span) -> StepView:
    """The step ``span`` stands for, by the first convention whose attributes it carries."""
    a = span.attributes
    if "openinference.span.kind" in a:
        return _openinference(span)
    if any(k.startswith("langfuse.observation.") for k in a):
        return _langfuse(span)
    if "request_data" in a or "response_data" in a:
        return _logfire(span)
    if "gen_ai.operation.name" in a or any(k.startswith("gen_ai.") for k in a):
        return _gen_ai(span)
    return StepView("span", span.name or "span", "none", input=dict(a) or None)


# -- shared ----------------------------------------------------------------------------------


def parse_json(value: Any) -> Any:
    """``value`` parsed when it is a JSON object or array as text, else as it is (a bare
    ``"true"`` stays text: a tool may return it). JSON nested deeper than an attribute value
    may be (:data:`~replayable._otlp._decode.MAX_DEPTH`) is refused: nothing downstream (redaction,
    keys, the store) recurses past it."""
    if isinstance(value, str) and value[:1] in ("{", "["):
        try:
            parsed = orjson.loads(value)
        except orjson.JSONDecodeError:
            return value
        check_depth(parsed, "an attribute's JSON text")
        return parsed
    return value


_REDACTED = "__REDACTED__"  # OpenInference's stand-in for a hidden value
_SCRUBBED = "[Scrubbed due to "  # Logfire's, for a scrubbed one


def hidden(value: Any) -> bool:
    """Whether a producer replaced some of ``value``'s content with its stand-in for a hidden
    or scrubbed value (so the content was not captured)."""
    if isinstance(value, str):
        return value == _REDACTED or value.startswith(_SCRUBBED)
    if isinstance(value, dict):
        return any(hidden(v) for v in value.values())
    if isinstance(value, list):
        return any(hidden(v) for v in value)
    return False


def _clean(d: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in d.items() if v is not None and v not in ([], {})}


def _tool_call(id_: Any, name: Any, arguments: Any) -> dict[str, Any]:
    call = _clean({"id": id_, "name": name})
    if arguments is not None:  # {} is an answer: a call without arguments
        call["arguments"] = parse_json(arguments)
    return call


def openai_message(m: Any) -> dict[str, Any]:
    """An OpenAI-style chat message (as Langfuse and Logfire keep them) in the common shape."""
    if not isinstance(m, dict):
        return {"role": "user", "content": m if isinstance(m, str) else orjson.dumps(m).decode()}
    content = m.get("content")
    if isinstance(content, list):
        texts = [p.get("text") for p in content if isinstance(p, dict) and p.get("type") == "text"]
        if len(texts) == len(content):
            content = "".join(t for t in texts if isinstance(t, str))
    calls = []
    listed = m.get("tool_calls")
    for tc in listed if isinstance(listed, list) else ():
        if isinstance(tc, dict):
            fn: dict[str, Any] = tc["function"] if isinstance(tc.get("function"), dict) else tc
            calls.append(_tool_call(tc.get("id"), fn.get("name"), fn.get("arguments")))
    return _clean(
        {
            "role": m.get("role", "user"),
            "content": content,
            "tool_calls": calls,
            "tool_call_id": m.get("tool_call_id"),
            "name": m.get("name"),
        }
    )


def _usage(inp: Any, out: Any) -> dict[str, Any]:
    return _clean({"input_tokens": _int(inp), "output_tokens": _int(out)})


def _int(v: Any) -> int | None:
    if isinstance(v, bool):
        return None
    if isinstance(v, int):
        return v
    if isinstance(v, float) and v.is_integer():
        return int(v)
    if isinstance(v, str) and v.isascii() and v.isdigit() and len(v) <= _MAX_DIGITS:
        return int(v)  # '\u00b2' is a digit int() cannot read; 5,000 digits are past its limit
    return None


_MAX_DIGITS = 18
"""Digits a token count written as text may have (an int64 has 19)."""


def _llm_view(
    span: Span,
    convention: str,
    *,
    model: Any,
    messages: list[dict[str, Any]] | None,
    choices: list[dict[str, Any]] | None,
    parameters: dict[str, Any],
    tools: list[Any] | None,
    usage: dict[str, Any],
    response_model: Any = None,
    response_id: Any = None,
    kind: str = "llm",
) -> StepView:
    if hidden(messages):
        messages = None
    if hidden(choices):
        choices = None
    missing = [
        name
        for name, value in (
            ("model", model),
            ("messages", messages),
            ("output", choices),
            ("tools", tools),
            ("parameters", parameters),
        )
        if not value
    ]
    inp = _clean({"model": model, "messages": messages, "parameters": parameters, "tools": tools})
    out = (
        _clean({"choices": choices, "model": response_model, "id": response_id, "usage": usage})
        if choices is not None
        else None
    )
    meta: dict[str, Any] = _clean(
        {
            "model": model,
            "response_model": response_model,
            "response_id": response_id,
            "usage": usage,
            "finish_reasons": [c.get("finish_reason") for c in choices or ()] or None,
            "tool_calls": [
                tc.get("name") for c in choices or () for tc in c["message"].get("tool_calls", ())
            ],
        }
    )
    for k in _SAMPLING:
        if k in parameters:
            meta[k] = parameters[k]
    named = model or response_model
    name = f"{named}" if isinstance(named, str) and named else span.name or kind
    return StepView(
        kind,
        name,
        convention,
        inp,
        out,
        meta,
        missing,
        content=messages is not None and choices is not None,
    )


# -- flattened attributes (OpenInference, older GenAI) ----------------------------------------

_INDEX = re.compile(r"[0-9]{1,9}")
"""A list index in a flattened attribute name: ASCII digits, few enough for ``int`` (a longer
run of digits is a key like any other)."""


def unflatten(attrs: dict[str, Any], prefix: str) -> Any:
    """The attributes under ``prefix`` as nested values: ``p.0.message.role`` -> ``[{message:
    {role}}]`` (numeric parts make lists, in index order)."""
    root: dict[str, Any] = {}
    for k, v in attrs.items():
        if not k.startswith(prefix):
            continue
        parts = k[len(prefix) :].split(".")
        node = root
        for part in parts[:-1]:
            nxt = node.get(part)
            if not isinstance(nxt, dict):
                nxt = node[part] = {}
            node = nxt
        node[parts[-1]] = v
    return _lists(root)


def _lists(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    if node and all(_INDEX.fullmatch(k) for k in node):
        return [_lists(node[k]) for k in sorted(node, key=int)]
    return {k: _lists(v) for k, v in node.items()}


# -- OpenTelemetry GenAI semantic conventions -------------------------------------------------

_GENAI_LLM_OPS = ("chat", "text_completion", "generate_content")


def _gen_ai(span: Span) -> StepView:
    a = span.attributes
    op = str(a.get("gen_ai.operation.name") or "")
    if op in _GENAI_LLM_OPS or (not op and "gen_ai.request.model" in a):
        return _gen_ai_llm(span, op or "chat")
    if op == "embeddings":
        view = _llm_view(
            span,
            "gen_ai",
            model=a.get("gen_ai.request.model"),
            messages=None,
            choices=None,
            parameters={},
            tools=None,
            usage=_usage(a.get("gen_ai.usage.input_tokens"), None),
            response_model=a.get("gen_ai.response.model"),
            kind="embedding",
        )
        view.missing = ["input", "output"]
        view.content = False
        return view
    if op == "execute_tool":
        name = a.get("gen_ai.tool.name") or span.name
        has_args = "gen_ai.tool.call.arguments" in a
        has_result = "gen_ai.tool.call.result" in a
        return StepView(
            "tool",
            str(name),
            "gen_ai",
            parse_json(a.get("gen_ai.tool.call.arguments")) if has_args else None,
            parse_json(a.get("gen_ai.tool.call.result")) if has_result else None,
            _clean(
                {
                    "tool_call_id": a.get("gen_ai.tool.call.id"),
                    "tool_type": a.get("gen_ai.tool.type"),
                }
            ),
            [n for n, ok in (("arguments", has_args), ("result", has_result)) if not ok],
            content=has_args and has_result,
        )
    if op in ("invoke_agent", "create_agent"):
        name = a.get("gen_ai.agent.name") or span.name
        return StepView(
            "agent", str(name), "gen_ai", None, None, _clean({"agent_id": a.get("gen_ai.agent.id")})
        )
    return StepView("span", span.name or op or "span", "gen_ai", input=dict(a))


def _parts_message(m: Any) -> dict[str, Any]:
    """A GenAI ``{role, parts: [...]}`` message in the common shape."""
    if not isinstance(m, dict):
        return openai_message(m)
    if "parts" not in m:
        return openai_message(m)
    texts: list[str] = []
    calls: list[dict[str, Any]] = []
    other: list[Any] = []
    tool_call_id = None
    response: Any = None
    for p in m.get("parts") or ():
        if not isinstance(p, dict):
            other.append(p)
            continue
        t = p.get("type")
        if t == "text" and isinstance(p.get("content"), str):
            texts.append(p["content"])
        elif t == "tool_call":
            calls.append(_tool_call(p.get("id"), p.get("name"), p.get("arguments")))
        elif t == "tool_call_response":
            tool_call_id = p.get("id")
            response = p.get("response", p.get("result"))
        else:
            other.append(p)
    content: Any = "".join(texts) if texts else None
    if response is not None and content is None:
        content = response if isinstance(response, str) else orjson.dumps(response).decode()
    return _clean(
        {
            "role": m.get("role", "user"),
            "content": content,
            "tool_calls": calls,
            "tool_call_id": tool_call_id,
            "parts": other,
            "name": m.get("name"),
        }
    )


_EVENT_ROLES = {
    "gen_ai.system.message": "system",
    "gen_ai.user.message": "user",
    "gen_ai.assistant.message": "assistant",
    "gen_ai.tool.message": "tool",
}


def _gen_ai_llm(span: Span, op: str) -> StepView:
    a = span.attributes
    messages: list[dict[str, Any]] | None = None
    choices: list[dict[str, Any]] | None = None
    system = parse_json(a.get("gen_ai.system_instructions"))
    raw_in = parse_json(a.get("gen_ai.input.messages"))
    if isinstance(raw_in, list):
        messages = [_parts_message(m) for m in raw_in]
        if isinstance(system, list) and system:
            text = "".join(p.get("content", "") for p in system if isinstance(p, dict))
            messages.insert(0, {"role": "system", "content": text})
    raw_out = parse_json(a.get("gen_ai.output.messages"))
    if isinstance(raw_out, list):
        choices = [
            _clean({"message": _parts_message(m), "finish_reason": m.get("finish_reason")})
            if isinstance(m, dict)
            else {"message": openai_message(m)}
            for m in raw_out
        ]
    if messages is None or choices is None:  # older conventions: span events, or flattened
        ev_in, ev_out = _gen_ai_events(span)
        messages = messages if messages is not None else ev_in
        choices = choices if choices is not None else ev_out
    if messages is None:
        flat = unflatten(a, "gen_ai.prompt.")
        if isinstance(flat, list) and flat:
            messages = [openai_message(m) for m in flat]
    if choices is None:
        flat = unflatten(a, "gen_ai.completion.")
        if isinstance(flat, list) and flat:
            choices = [
                _clean({"message": openai_message(m), "finish_reason": m.get("finish_reason")})
                for m in flat
                if isinstance(m, dict)
            ]
    params = _clean(
        {
            k.removeprefix("gen_ai.request."): v
            for k, v in a.items()
            if k.startswith("gen_ai.request.") and k != "gen_ai.request.model"
        }
    )
    tools = parse_json(a.get("gen_ai.tool.definitions"))
    finish = a.get("gen_ai.response.finish_reasons")
    if choices is not None and isinstance(finish, list):
        for c, reason in zip(choices, finish, strict=False):
            c.setdefault("finish_reason", reason)
    return _llm_view(
        span,
        "gen_ai",
        model=a.get("gen_ai.request.model"),
        messages=messages,
        choices=choices,
        parameters=params,
        tools=tools if isinstance(tools, list) else None,
        usage=_usage(
            a.get("gen_ai.usage.input_tokens", a.get("gen_ai.usage.prompt_tokens")),
            a.get("gen_ai.usage.output_tokens", a.get("gen_ai.usage.completion_tokens")),
        ),
        response_model=a.get("gen_ai.response.model"),
        response_id=a.get("gen_ai.response.id"),
    )


def _gen_ai_events(span: Span) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None]:
    """Messages carried as span events (GenAI conventions before ``gen_ai.input.messages``)."""
    messages: list[dict[str, Any]] = []
    choices: list[dict[str, Any]] = []
    for ev in span.events:
        attrs = ev.attributes
        role = _EVENT_ROLES.get(ev.name)
        if role is not None:
            body = parse_json(attrs.get("content"))
            m = openai_message(
                {
                    "role": attrs.get("role", role),
                    "content": body,
                    "tool_calls": parse_json(attrs.get("tool_calls")) or [],
                    "tool_call_id": attrs.get("id"),
                }
            )
            messages.append(m)
        elif ev.name == "gen_ai.choice":
            msg = parse_json(attrs.get("message"))
            if not isinstance(msg, dict):
                msg = {"role": "assistant", "content": msg}
            msg.setdefault("role", "assistant")
            choices.append(
                _clean(
                    {"message": openai_message(msg), "finish_reason": attrs.get("finish_reason")}
                )
            )
        elif ev.name == "gen_ai.content.prompt":
            raw = parse_json(attrs.get("gen_ai.prompt"))
            if isinstance(raw, list):
                messages.extend(openai_message(m) for m in raw)
        elif ev.name == "gen_ai.content.completion":
            raw = parse_json(attrs.get("gen_ai.completion"))
            if isinstance(raw, list):
                choices.extend({"message": openai_message(m)} for m in raw)
    return (messages or None, choices or None)


# -- OpenInference ----------------------------------------------------------------------------

_OI_KINDS = {
    "LLM": "llm",
    "TOOL": "tool",
    "AGENT": "agent",
    "CHAIN": "chain",
    "RETRIEVER": "retrieval",
    "RERANKER": "retrieval",
    "EMBEDDING": "embedding",
}


def _oi_message(m: Any) -> dict[str, Any]:
    msg = m.get("message", m) if isinstance(m, dict) else {}
    if not isinstance(msg, dict):
        return openai_message(msg)
    content = msg.get("content")
    if content is None and isinstance(msg.get("contents"), list):
        texts = [
            (c.get("message_content") or {}).get("text")
            for c in msg["contents"]
            if isinstance(c, dict)
        ]
        content = "".join(t for t in texts if isinstance(t, str)) or None
    calls = []
    for tc in msg.get("tool_calls") or ():
        call = tc.get("tool_call", tc) if isinstance(tc, dict) else {}
        fn = call.get("function") or {}
        calls.append(_tool_call(call.get("id"), fn.get("name"), fn.get("arguments")))
    return _clean(
        {
            "role": msg.get("role", "user"),
            "content": content,
            "tool_calls": calls,
            "tool_call_id": msg.get("tool_call_id"),
            "name": msg.get("name"),
        }
    )


def _openinference(span: Span) -> StepView:
    a = span.attributes
    oi_kind = str(a.get("openinference.span.kind", "")).upper()
    kind = _OI_KINDS.get(oi_kind, "span")
    if kind == "llm":
        raw_in = unflatten(a, "llm.input_messages.")
        raw_out = unflatten(a, "llm.output_messages.")
        messages = [_oi_message(m) for m in raw_in] if isinstance(raw_in, list) and raw_in else None
        choices = (
            [{"message": _oi_message(m)} for m in raw_out]
            if isinstance(raw_out, list) and raw_out
            else None
        )
        params = parse_json(a.get("llm.invocation_parameters"))
        params = params if isinstance(params, dict) else {}
        # llm.model_name is what the provider answered with (a dated snapshot); the request's
        # model, which a replayed call is compared with, is in the invocation parameters.
        model = params.get("model") or params.get("model_name") or a.get("llm.model_name")
        tools = unflatten(a, "llm.tools.")
        tool_list = (
            [
                parse_json((t.get("tool") or {}).get("json_schema"))
                for t in tools
                if isinstance(t, dict)
            ]
            if isinstance(tools, list)
            else None
        )
        resp = parse_json(a.get("output.value"))
        finish = None
        resp_id = None
        if isinstance(resp, dict):
            resp_id = resp.get("id")
            first = (resp.get("choices") or [{}])[0]
            if isinstance(first, dict):
                finish = first.get("finish_reason")
        if choices and finish:
            choices[0]["finish_reason"] = finish
        return _llm_view(
            span,
            "openinference",
            model=model,
            messages=messages,
            choices=choices,
            parameters={k: v for k, v in params.items() if k not in ("model", "messages", "tools")},
            tools=tool_list or None,
            usage=_usage(a.get("llm.token_count.prompt"), a.get("llm.token_count.completion")),
            response_model=(resp.get("model") if isinstance(resp, dict) else None)
            or a.get("llm.model_name"),
            response_id=resp_id,
        )
    name = span.name or kind
    if kind == "tool":
        name = str(a.get("tool.name") or span.name)
    has_in = "input.value" in a and not hidden(a["input.value"])
    has_out = "output.value" in a and not hidden(a["output.value"])
    meta = _clean({"openinference_kind": oi_kind, "description": a.get("tool.description")})
    return StepView(
        kind,
        name,
        "openinference",
        parse_json(a.get("input.value")) if has_in else None,
        _tool_message_content(parse_json(a.get("output.value"))) if has_out else None,
        meta,
        [n for n, ok in (("input", has_in), ("output", has_out)) if not ok],
        content=has_in and has_out,
    )


def _tool_message_content(value: Any) -> Any:
    """A LangChain ToolMessage as serialized (``{"type": "tool", "data": {"content"}}``): the
    content, which is what the tool returned."""
    if (
        isinstance(value, dict)
        and value.get("type") == "tool"
        and isinstance(value.get("data"), dict)
    ):
        return parse_json(value["data"].get("content"))
    return value


def _call_arguments(value: Any) -> Any:
    """Langfuse's captured call (``{"args": [], "kwargs": {...}}``) as its keyword arguments."""
    if isinstance(value, dict) and set(value) == {"args", "kwargs"} and value["args"] == []:
        return value["kwargs"]
    return value


# -- Langfuse ---------------------------------------------------------------------------------

_LANGFUSE_KINDS = {
    "generation": "llm",
    "tool": "tool",
    "agent": "agent",
    "chain": "chain",
    "retriever": "retrieval",
    "embedding": "embedding",
}


def _langfuse(span: Span) -> StepView:
    a = span.attributes
    lf_type = str(a.get("langfuse.observation.type") or "span")
    kind = _LANGFUSE_KINDS.get(lf_type, "span")
    has_in = "langfuse.observation.input" in a
    has_out = "langfuse.observation.output" in a
    inp = parse_json(a.get("langfuse.observation.input"))
    out = parse_json(a.get("langfuse.observation.output"))
    if kind == "llm":
        tools = None
        if isinstance(inp, dict) and isinstance(inp.get("messages"), list):
            tools = inp.get("tools") if isinstance(inp.get("tools"), list) else None
            inp = inp["messages"]
        messages = [openai_message(m) for m in inp] if isinstance(inp, list) else None
        if messages is None and isinstance(inp, str):
            messages = [{"role": "user", "content": inp}]
        choices = None
        if isinstance(out, dict) and isinstance(out.get("choices"), list):
            choices = [
                _clean(
                    {
                        "message": openai_message(c.get("message")),
                        "finish_reason": c.get("finish_reason"),
                    }
                )
                for c in out["choices"]
                if isinstance(c, dict)
            ]
        elif isinstance(out, dict):
            choices = [{"message": openai_message({"role": "assistant", **out})}]
        elif isinstance(out, str):
            choices = [{"message": {"role": "assistant", "content": out}}]
        params = parse_json(a.get("langfuse.observation.model.parameters"))
        usage = parse_json(a.get("langfuse.observation.usage_details"))
        usage = usage if isinstance(usage, dict) else {}
        # Langfuse's model name is the one the provider answered with (its OpenAI integration
        # overwrites the requested one), so it is the response's model, not the request's.
        return _llm_view(
            span,
            "langfuse",
            model=a.get("gen_ai.request.model"),
            messages=messages,
            choices=choices,
            parameters=params if isinstance(params, dict) else {},
            tools=tools,
            usage=_usage(
                usage.get("input", usage.get("prompt_tokens")),
                usage.get("output", usage.get("completion_tokens")),
            ),
            response_model=a.get("langfuse.observation.model.name")
            or a.get("gen_ai.response.model"),
        )
    name = span.name or kind
    meta = _clean({"langfuse_type": lf_type, "level": a.get("langfuse.observation.level")})
    return StepView(
        kind,
        name,
        "langfuse",
        _call_arguments(inp) if has_in else None,
        out if has_out else None,
        meta,
        [n for n, ok in (("input", has_in), ("output", has_out)) if not ok],
        content=has_in and has_out,
    )


# -- Logfire ----------------------------------------------------------------------------------


def _logfire(span: Span) -> StepView:
    a = span.attributes
    req = parse_json(a.get("request_data"))
    resp = parse_json(a.get("response_data"))
    if not isinstance(req, dict) or not isinstance(
        req.get("messages", req.get("input")), list | str
    ):
        view = _gen_ai(span)
        view.convention = "logfire"
        return view
    raw = req.get("messages", req.get("input"))
    messages = (
        [openai_message(m) for m in raw]
        if isinstance(raw, list)
        else [{"role": "user", "content": raw}]
    )
    choices = None
    usage: dict[str, Any] = {}
    if isinstance(resp, dict):
        msg = resp.get("message")
        if isinstance(msg, dict):
            choices = [{"message": openai_message(msg)}]
        elif isinstance(resp.get("choices"), list):
            choices = [
                _clean(
                    {
                        "message": openai_message(c.get("message")),
                        "finish_reason": c.get("finish_reason"),
                    }
                )
                for c in resp["choices"]
                if isinstance(c, dict)
            ]
        u = resp.get("usage")
        if isinstance(u, dict):
            usage = _usage(
                u.get("prompt_tokens", u.get("input_tokens")),
                u.get("completion_tokens", u.get("output_tokens")),
            )
    finish = a.get("gen_ai.response.finish_reasons")
    if choices and isinstance(finish, list):
        for c, reason in zip(choices, finish, strict=False):
            c.setdefault("finish_reason", reason)
    params = {k: v for k, v in req.items() if k not in ("model", "messages", "input", "tools")}
    tools = req.get("tools")
    return _llm_view(
        span,
        "logfire",
        model=req.get("model") or a.get("gen_ai.request.model"),
        messages=messages,
        choices=choices,
        parameters=params,
        tools=tools if isinstance(tools, list) else None,
        usage=usage
        or _usage(a.get("gen_ai.usage.input_tokens"), a.get("gen_ai.usage.output_tokens")),
        response_model=a.get("gen_ai.response.model"),
        response_id=a.get("gen_ai.response.id"),
    )
