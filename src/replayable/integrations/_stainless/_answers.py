"""A Stainless SDK's HTTP answer as a boundary output, and back.

A plain answer is recorded as its JSON body with an ``$http`` entry (status, headers, URL); a
stream as an opening chunk (status line and headers) then one chunk per server-sent event. On the
way back, a live or recorded answer becomes the HTTP response the SDK's own ``_process_response``
turns into what the call returns.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from types import ModuleType
from typing import TYPE_CHECKING, Any

from replayable.errors import UnsupportedClient

if TYPE_CHECKING:
    from replayable.integrations._stainless import SDK

# Headers that describe the bytes on the wire, not the answer: a replayed body is re-encoded.
_WIRE_HEADERS = frozenset(
    {"content-length", "content-encoding", "transfer-encoding", "connection", "keep-alive"}
)


@dataclass
class Answer:
    """A plain HTTP answer: status, headers, URL and body (JSON, or text under ``$text``)."""

    status: int
    headers: dict[str, str]
    url: str
    body: Any


@dataclass
class Opened:
    """The first chunk of a recorded stream: the HTTP status line and headers."""

    header: dict[str, Any]


class AnswerCodec:
    """A plain answer is its JSON body with an ``$http`` entry (status, headers, URL)."""

    def encode(self, value: Any) -> Any:
        if not isinstance(value, Answer):
            return value
        http = {"status": value.status, "headers": value.headers, "url": value.url}
        if isinstance(value.body, dict) and "$http" not in value.body:
            return {**value.body, "$http": http}
        return {"$http": http, "$body": value.body}

    def decode(self, data: Any) -> Any:
        if not isinstance(data, dict) or "$http" not in data:
            return Answer(200, {"content-type": "application/json"}, "", data)
        http = data["$http"]
        body = data["$body"] if "$body" in data else {k: v for k, v in data.items() if k != "$http"}
        return Answer(int(http.get("status") or 200), http.get("headers") or {}, "", body)


class EventCodec:
    """Stream chunks are JSON already; the opening chunk is ``{"$open": header}``."""

    def encode(self, value: Any) -> Any:
        return {"$open": value.header} if isinstance(value, Opened) else value

    def decode(self, data: Any) -> Any:
        if isinstance(data, dict) and "$open" in data:
            return Opened(data["$open"])
        return data


def response_headers(response: Any) -> dict[str, str]:
    return {k: v for k, v in response.headers.items() if k.lower() not in _WIRE_HEADERS}


def response_body(response: Any) -> Any:
    text = response.text
    try:
        data = json.loads(text)
    except ValueError:
        return {"$text": text}
    return data if isinstance(data, (dict, list)) else {"$text": text}


def _content(body: Any) -> bytes:
    if isinstance(body, dict) and set(body) == {"$text"}:
        return str(body["$text"]).encode()
    return json.dumps(body, ensure_ascii=False).encode()


def sse_event(sse: Any) -> dict[str, Any]:
    """One server-sent event as a chunk: its JSON data object itself, with ``$event`` only when
    the event name is not the data's ``type``; other data as text under ``$data``."""
    try:
        data = json.loads(sse.data)
    except ValueError:
        data = None
    if isinstance(data, dict) and not any(str(k).startswith("$") for k in data):
        chunk = data
        if sse.event != data.get("type"):
            chunk["$event"] = sse.event
    else:
        chunk = {"$data": sse.data}
        if sse.event:
            chunk["$event"] = sse.event
    if sse.id:
        chunk["$id"] = sse.id
    if sse.retry is not None:
        chunk["$retry"] = sse.retry
    return chunk


def _wire(chunk: Any) -> bytes:
    """A chunk back to the bytes of its server-sent event."""
    if not isinstance(chunk, dict):
        return b""
    event = chunk["$event"] if "$event" in chunk else chunk.get("type")
    lines = [f"event: {event}"] if event else []
    if chunk.get("$id"):
        lines.append(f"id: {chunk['$id']}")
    if chunk.get("$retry") is not None:
        lines.append(f"retry: {chunk['$retry']}")
    if "$data" in chunk:
        text = str(chunk["$data"])
    else:
        data = {k: v for k, v in chunk.items() if not str(k).startswith("$")}
        text = json.dumps(data, ensure_ascii=False, separators=(",", ":"))
    lines += [f"data: {line}" for line in text.split("\n")]
    return ("\n".join(lines) + "\n\n").encode()


class Rebuilt:
    """Builds the HTTP response the SDK processes, from a live or recorded answer."""

    def __init__(self, client: Any, sdk: SDK) -> None:
        self.client = client
        self.sdk = sdk

    def request(self, options: Any) -> Any:
        """The request the SDK would have sent (its headers say which response shape to build)."""
        options = options.model_copy()
        options.json_data = without_unset(options.json_data, self.sdk.unset)
        options.headers = without_unset(dict(options.headers or {}), self.sdk.unset)
        try:
            return self.client._build_request(options)
        except Exception:
            return self.sdk.http.Request(
                "POST", "http://replayable.invalid/", headers=options.headers
            )

    def plain(self, options: Any, answer: Answer) -> Any:
        return self.sdk.http.Response(
            answer.status,
            headers=answer.headers,
            content=_content(answer.body),
            request=self.request(options),
        )

    def stream(self, options: Any, opened: Any, body: Any) -> Any:
        if not isinstance(opened, Opened):
            raise UnsupportedClient("recorded stream has no opening header chunk")
        return self.sdk.http.Response(
            int(opened.header.get("status") or 200),
            headers=opened.header.get("headers") or {},
            stream=body,
            request=self.request(options),
        )


def sync_stream(http: ModuleType, gen: Iterator[Any]) -> Any:
    class Chunks(http.SyncByteStream):  # type: ignore[misc,name-defined]
        def __iter__(self) -> Iterator[bytes]:
            for chunk in gen:
                yield _wire(chunk)

        def close(self) -> None:
            gen.close()  # type: ignore[attr-defined]

    return Chunks()


def async_stream(http: ModuleType, gen: AsyncIterator[Any]) -> Any:
    class Chunks(http.AsyncByteStream):  # type: ignore[misc,name-defined]
        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in gen:
                yield _wire(chunk)

        async def aclose(self) -> None:
            await gen.aclose()  # type: ignore[attr-defined]

    return Chunks()


def without_unset(value: Any, unset: tuple[type, ...]) -> Any:
    """The value without the SDK's "not given" markers, which it drops when sending."""
    if isinstance(value, dict):
        return {k: without_unset(v, unset) for k, v in value.items() if not isinstance(v, unset)}
    if isinstance(value, list):
        return [without_unset(v, unset) for v in value if not isinstance(v, unset)]
    return value
