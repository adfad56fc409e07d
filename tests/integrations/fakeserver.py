"""A loopback HTTP model server for the integration tests; tests of other stacks reuse it.

Speaks the wire formats agents use, each plain and as server-sent events:

- OpenAI ``POST /v1/chat/completions`` (``stream=True``: chunks with content or tool-call
  deltas, ``[DONE]``, usage when ``stream_options.include_usage``),
- OpenAI ``POST /v1/responses`` (``stream=True``: ``response.created``, output item added /
  text or function-call-argument deltas / done events, ``response.completed``),
- OpenAI ``POST /v1/embeddings`` (one sampled vector per input),
- Anthropic ``POST /v1/messages`` (``stream=True``: ``message_start`` ... ``message_stop``).

It SAMPLES: answers, tool arguments and vectors come from a seeded RNG that advances with every
request, so two identical requests get different answers, as from a real model; a replay that
reached the server would show. Rules:

- When the request offers tools and the conversation holds no tool result yet, the answer is a
  call to the first tool, with arguments sampled from its JSON schema (strings are cities).
- A ``response_format`` / ``text.format`` JSON schema gets a JSON answer sampled from it
  (structured outputs, ``.parse()``).
- ``[429]`` or ``[500]`` in the last user message answers with that HTTP error.

API (stable): ``FakeLLMServer(seed=0).start()`` -> the server; ``.openai_url`` (``.../v1``),
``.anthropic_url``, ``.port``; ``.headers`` (extra response headers, set before requests);
``.requests`` (every :class:`Seen` request: path, headers, JSON body); ``.stop()`` (afterwards
nothing listens on the port).
"""

from __future__ import annotations

import json
import random
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WORDS = ["alpha", "bravo", "cobalt", "delta", "ember", "fjord", "gale", "harbor", "iris", "jade"]
CITIES = ["Paris", "Lima", "Oslo", "Kyoto", "Quito"]


@dataclass
class Seen:
    """One request the server received."""

    path: str
    headers: dict[str, str]
    body: dict[str, Any]


@dataclass
class FakeLLMServer:
    """Start with :meth:`start`, point SDK clients at :attr:`openai_url` / :attr:`anthropic_url`."""

    seed: int = 0
    fingerprint: str | None = None
    """When set, every chat completion reports this ``system_fingerprint`` (a model version)."""
    steer: Callable[[str, list[str]], tuple[str, dict[str, Any]] | None] | None = None
    """When set, decides the tool call from (last user text, offered tool names): a
    ``(name, arguments)`` pair, or None for the default (first tool, sampled arguments)."""
    headers: dict[str, str] = field(default_factory=dict)
    """Extra response headers sent with every answer (e.g. a session cookie)."""
    requests: list[Seen] = field(default_factory=list)
    _httpd: ThreadingHTTPServer | None = None
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        self.lock = threading.Lock()
        self.counter = 0

    _port: int | None = None

    @property
    def port(self) -> int:
        """The port it listens on (after :meth:`stop`: the port it listened on)."""
        assert self._port is not None, "start() the server first"
        return self._port

    @property
    def openai_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    @property
    def anthropic_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> FakeLLMServer:
        server = self

        class Handler(_Handler):
            owner = server

        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._port = int(self._httpd.server_address[1])
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    # -- sampling ---------------------------------------------------------------------------

    def next_id(self) -> int:
        with self.lock:
            self.counter += 1
            return self.counter

    def text(self) -> str:
        with self.lock:
            return " ".join(self.rng.choice(WORDS) for _ in range(self.rng.randint(3, 7)))

    def city(self) -> str:
        with self.lock:
            return self.rng.choice(CITIES)

    def args(self, tool: dict[str, Any]) -> dict[str, Any]:
        """Arguments for a call to ``tool``, sampled from its JSON schema."""
        schema = {"type": "object", "properties": _tool_props(tool)}
        with self.lock:
            return dict(self._sample(schema, schema))

    def sample(self, schema: dict[str, Any]) -> Any:
        """A value sampled from a JSON schema (objects, arrays, enums, scalars, $ref/$defs)."""
        with self.lock:
            return self._sample(schema, schema)

    def vector(self, dims: int = 8) -> list[float]:
        with self.lock:
            return [round(self.rng.uniform(-1, 1), 6) for _ in range(dims)]

    def _sample(self, schema: Any, root: dict[str, Any]) -> Any:
        if not isinstance(schema, dict):
            return self.rng.choice(CITIES)
        ref = schema.get("$ref")
        if isinstance(ref, str) and ref.startswith("#/"):
            node: Any = root
            for part in ref[2:].split("/"):
                node = node.get(part, {}) if isinstance(node, dict) else {}
            return self._sample(node, root)
        for combo in ("anyOf", "oneOf", "allOf"):
            if isinstance(schema.get(combo), list) and schema[combo]:
                options = [o for o in schema[combo] if o.get("type") != "null"] or schema[combo]
                return self._sample(options[0], root)
        if "enum" in schema:
            return self.rng.choice(schema["enum"])
        kind = schema.get("type")
        if isinstance(kind, list):
            kind = next((k for k in kind if k != "null"), "string")
        if kind == "object" or "properties" in schema:
            props = schema.get("properties") or {}
            return {name: self._sample(prop, root) for name, prop in props.items()}
        if kind == "array":
            return [self._sample(schema.get("items") or {}, root)]
        if kind == "integer":
            return self.rng.randint(1, 4)
        if kind == "number":
            return round(self.rng.uniform(0, 100), 2)
        if kind == "boolean":
            return self.rng.random() < 0.5
        return self.rng.choice(CITIES)


def _last_user_text(messages: list[Any]) -> str:
    for m in reversed(messages):
        if isinstance(m, dict) and m.get("role") == "user":
            content = m.get("content")
            if isinstance(content, str):
                return content
            if isinstance(content, list):
                return " ".join(str(p.get("text", "")) for p in content if isinstance(p, dict))
    return ""


def _has_tool_result(messages: list[Any]) -> bool:
    for m in messages:
        if not isinstance(m, dict):
            continue
        if m.get("role") == "tool" or m.get("type") == "function_call_output":
            return True
        content = m.get("content")
        if isinstance(content, list) and any(
            isinstance(p, dict) and p.get("type") == "tool_result" for p in content
        ):
            return True
    return False


def _tool_props(tool: dict[str, Any]) -> dict[str, Any]:
    fn = tool.get("function") if isinstance(tool.get("function"), dict) else tool
    schema = fn.get("parameters") or fn.get("input_schema") or {}
    return dict(schema.get("properties") or {"city": {"type": "string"}})


def _answer_schema(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON schema a structured-output request asks the answer to follow, if any."""
    fmt = body.get("response_format")
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return dict((fmt.get("json_schema") or {}).get("schema") or {})
    fmt = (body.get("text") or {}).get("format") if isinstance(body.get("text"), dict) else None
    if isinstance(fmt, dict) and fmt.get("type") == "json_schema":
        return dict(fmt.get("schema") or {})
    return None


def _tool_name(tool: dict[str, Any]) -> str:
    fn = tool.get("function")
    return str(fn["name"] if isinstance(fn, dict) else tool.get("name"))


class _Handler(BaseHTTPRequestHandler):
    owner: FakeLLMServer
    args: dict[str, Any]
    answer: str
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        length = int(self.headers.get("content-length") or 0)
        body = json.loads(self.rfile.read(length) or b"{}")
        s = self.owner
        s.requests.append(Seen(self.path, {k.lower(): v for k, v in self.headers.items()}, body))
        messages = body.get("messages") or []
        if isinstance(body.get("input"), list):
            messages = body["input"]
        elif isinstance(body.get("input"), str):
            messages = [{"role": "user", "content": body["input"]}]
        prompt = _last_user_text(messages)
        route = self.path.partition("?")[0]
        anthropic = route.endswith("/messages")
        for code in (429, 500):
            if f"[{code}]" in prompt:
                return self._error(code, anthropic)
        tools = body.get("tools") or []
        call = _tool_name(tools[0]) if tools and not _has_tool_result(messages) else None
        self.args = s.args(tools[0]) if call else {}
        steered = s.steer(prompt, [_tool_name(t) for t in tools]) if call and s.steer else None
        if steered is not None:
            call, self.args = steered
        n = s.next_id()
        model = str(body.get("model", "fake-model"))
        schema = _answer_schema(body) if call is None else None
        self.answer = json.dumps(s.sample(schema)) if schema is not None else s.text()
        if route.endswith("/embeddings"):
            return self._embeddings(body, model, n)
        if route.endswith("/chat/completions"):
            return self._chat(body, model, n, call)
        if route.endswith("/responses"):
            return self._responses(body, model, n, call)
        if anthropic:
            return self._anthropic(body, model, n, call)
        self._json(404, {"error": {"message": f"no route {self.path}"}})
        return None

    # -- plumbing ---------------------------------------------------------------------------

    def _json(self, status: int, data: Any, headers: dict[str, str] | None = None) -> None:
        raw = json.dumps(data).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json")
        self.send_header("content-length", str(len(raw)))
        self.send_header("x-request-id", f"req_{self.owner.next_id():06d}")
        self.send_header("request-id", f"req_{self.owner.next_id():06d}")
        for k, v in {**self.owner.headers, **(headers or {})}.items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(raw)

    def _sse(self, events: list[tuple[str | None, Any]]) -> None:
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("x-request-id", f"req_{self.owner.next_id():06d}")
        self.send_header("request-id", f"req_{self.owner.next_id():06d}")
        self.send_header("connection", "close")
        for k, v in self.owner.headers.items():
            self.send_header(k, v)
        self.end_headers()
        for event, data in events:
            head = f"event: {event}\n" if event else ""
            payload = data if isinstance(data, str) else json.dumps(data)
            self.wfile.write(f"{head}data: {payload}\n\n".encode())
            self.wfile.flush()
        self.close_connection = True

    def _error(self, code: int, anthropic: bool) -> None:
        kind = "rate_limit_error" if code == 429 else "api_error"
        msg = "slow down" if code == 429 else "the server had an error"
        if anthropic:
            data: dict[str, Any] = {"type": "error", "error": {"type": kind, "message": msg}}
        else:
            data = {"error": {"message": msg, "type": kind, "code": kind, "param": None}}
        self._json(code, data, {"retry-after": "0"} if code == 429 else None)

    # -- OpenAI chat completions ------------------------------------------------------------

    def _chat(self, body: dict[str, Any], model: str, n: int, call: str | None) -> None:
        s = self.owner
        base = {"id": f"chatcmpl-{n}", "created": int(time.time()), "model": model + "-2025"}
        fp = s.fingerprint or f"fp_{n % 7}"
        usage = {"prompt_tokens": 10 + n, "completion_tokens": 5 + n, "total_tokens": 15 + 2 * n}
        args = json.dumps(self.args)
        text = self.answer
        if not body.get("stream"):
            message: dict[str, Any] = {"role": "assistant", "content": None if call else text}
            message["refusal"] = None
            if call:
                message["tool_calls"] = [
                    {
                        "id": f"call_{n}",
                        "type": "function",
                        "function": {"name": call, "arguments": args},
                    }
                ]
            return self._json(
                200,
                {
                    **base,
                    "object": "chat.completion",
                    "system_fingerprint": fp,
                    "choices": [
                        {
                            "index": 0,
                            "message": message,
                            "finish_reason": "tool_calls" if call else "stop",
                            "logprobs": None,
                        }
                    ],
                    "usage": usage,
                    "x_future_field": {"added_in": "2027", "n": n},
                },
            )
        chunk = {**base, "object": "chat.completion.chunk", "system_fingerprint": fp}
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": "" if not call else None}]
        if call:
            deltas.append(
                {
                    "tool_calls": [
                        {
                            "index": 0,
                            "id": f"call_{n}",
                            "type": "function",
                            "function": {"name": call, "arguments": ""},
                        }
                    ]
                }
            )
            deltas += [
                {"tool_calls": [{"index": 0, "function": {"arguments": args[i : i + 5]}}]}
                for i in range(0, len(args), 5)
            ]
        else:
            deltas += [{"content": w + " "} for w in text.split()]
        events: list[tuple[str | None, Any]] = [
            (None, {**chunk, "choices": [{"index": 0, "delta": d, "finish_reason": None}]})
            for d in deltas
        ]
        finish = "tool_calls" if call else "stop"
        events.append(
            (None, {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": finish}]})
        )
        if (body.get("stream_options") or {}).get("include_usage"):
            events.append((None, {**chunk, "choices": [], "usage": usage}))
        events.append((None, "[DONE]"))
        self._sse(events)
        return None

    # -- OpenAI responses -------------------------------------------------------------------

    def _responses(self, body: dict[str, Any], model: str, n: int, call: str | None) -> None:
        text = self.answer
        if call:
            item: dict[str, Any] = {
                "type": "function_call",
                "id": f"fc_{n}",
                "call_id": f"call_{n}",
                "name": call,
                "arguments": json.dumps(self.args),
                "status": "completed",
            }
        else:
            item = {
                "type": "message",
                "id": f"msg_{n}",
                "status": "completed",
                "role": "assistant",
                "content": [{"type": "output_text", "text": text, "annotations": []}],
            }
        resp = {
            "id": f"resp_{n}",
            "object": "response",
            "created_at": int(time.time()),
            "status": "completed",
            "model": model + "-2025",
            "output": [item],
            "parallel_tool_calls": True,
            "tool_choice": "auto",
            "tools": body.get("tools") or [],
            "error": None,
            "incomplete_details": None,
            "instructions": body.get("instructions"),
            "metadata": {},
            "temperature": 1.0,
            "top_p": 1.0,
            "usage": {
                "input_tokens": 20 + n,
                "output_tokens": 7 + n,
                "total_tokens": 27 + 2 * n,
                "input_tokens_details": {"cached_tokens": 0},
                "output_tokens_details": {"reasoning_tokens": 0},
            },
        }
        if not body.get("stream"):
            return self._json(200, resp)
        seq = iter(range(1000))
        pending = {**resp, "status": "in_progress", "output": [], "usage": None}
        ev: list[tuple[str | None, Any]] = [
            ("response.created", {"type": "response.created", "response": pending}),
            ("response.in_progress", {"type": "response.in_progress", "response": pending}),
        ]
        at = {"output_index": 0, "item_id": item["id"]}
        if call:
            empty = {**item, "status": "in_progress", "arguments": ""}
            ev.append(
                (
                    "response.output_item.added",
                    {"type": "response.output_item.added", "output_index": 0, "item": empty},
                )
            )
            raw = item["arguments"]
            for i in range(0, len(raw), 5):
                kind = "response.function_call_arguments.delta"
                ev.append((kind, {"type": kind, **at, "delta": raw[i : i + 5]}))
            kind = "response.function_call_arguments.done"
            ev.append((kind, {"type": kind, **at, "name": call, "arguments": raw}))
        else:
            empty = {**item, "status": "in_progress", "content": []}
            ev.append(
                (
                    "response.output_item.added",
                    {"type": "response.output_item.added", "output_index": 0, "item": empty},
                )
            )
            part = {"type": "output_text", "text": "", "annotations": []}
            kind = "response.content_part.added"
            ev.append((kind, {"type": kind, **at, "content_index": 0, "part": part}))
            words = text.split(" ")
            for i, w in enumerate(words):
                kind = "response.output_text.delta"
                delta = w if i == len(words) - 1 else w + " "
                ev.append(
                    (kind, {"type": kind, **at, "content_index": 0, "delta": delta, "logprobs": []})
                )
            kind = "response.output_text.done"
            ev.append(
                (kind, {"type": kind, **at, "content_index": 0, "text": text, "logprobs": []})
            )
            kind = "response.content_part.done"
            ev.append(
                (kind, {"type": kind, **at, "content_index": 0, "part": {**part, "text": text}})
            )
        kind = "response.output_item.done"
        ev.append((kind, {"type": kind, "output_index": 0, "item": item}))
        ev.append(("response.completed", {"type": "response.completed", "response": resp}))
        self._sse([(name, {**data, "sequence_number": next(seq)}) for name, data in ev])
        return None

    # -- OpenAI embeddings ------------------------------------------------------------------

    def _embeddings(self, body: dict[str, Any], model: str, n: int) -> None:
        inputs = body.get("input")
        items = inputs if isinstance(inputs, list) else [inputs]
        dims = int(body.get("dimensions") or 8)
        data = [
            {"object": "embedding", "index": i, "embedding": self.owner.vector(dims)}
            for i in range(len(items))
        ]
        tokens = sum(len(str(x).split()) for x in items)
        self._json(
            200,
            {
                "object": "list",
                "data": data,
                "model": model,
                "usage": {"prompt_tokens": tokens + n, "total_tokens": tokens + n},
            },
        )

    # -- Anthropic messages -----------------------------------------------------------------

    def _anthropic(self, body: dict[str, Any], model: str, n: int, call: str | None) -> None:
        text = self.answer
        tool_input = self.args
        usage = {"input_tokens": 12 + n, "output_tokens": 6 + n}
        msg: dict[str, Any] = {
            "id": f"msg_{n:04d}",
            "type": "message",
            "role": "assistant",
            "model": model,
            "stop_sequence": None,
        }
        if call:
            block: dict[str, Any] = {
                "type": "tool_use",
                "id": f"toolu_{n}",
                "name": call,
                "input": tool_input,
            }
        else:
            block = {"type": "text", "text": text}
        stop = "tool_use" if call else "end_turn"
        if not body.get("stream"):
            return self._json(200, {**msg, "content": [block], "stop_reason": stop, "usage": usage})
        start = {**msg, "content": [], "stop_reason": None, "usage": {**usage, "output_tokens": 1}}
        ev: list[tuple[str | None, Any]] = [
            ("message_start", {"type": "message_start", "message": start})
        ]
        empty = {**block, "input": {}} if call else {"type": "text", "text": ""}
        ev.append(
            (
                "content_block_start",
                {"type": "content_block_start", "index": 0, "content_block": empty},
            )
        )
        if call:
            raw = json.dumps(tool_input)
            parts = [
                {"type": "input_json_delta", "partial_json": raw[i : i + 6]}
                for i in range(0, len(raw), 6)
            ]
        else:
            parts = [{"type": "text_delta", "text": w + " "} for w in text.split(" ")]
        ev += [
            ("content_block_delta", {"type": "content_block_delta", "index": 0, "delta": p})
            for p in parts
        ]
        ev.append(("content_block_stop", {"type": "content_block_stop", "index": 0}))
        ev.append(
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": stop, "stop_sequence": None},
                    "usage": {"output_tokens": usage["output_tokens"]},
                },
            )
        )
        ev.append(("message_stop", {"type": "message_stop"}))
        self._sse(ev)
        return None
