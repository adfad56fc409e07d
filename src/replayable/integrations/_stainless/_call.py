"""The boundary a recorded route becomes, and the SDK call in flight that its live function
performs: the client's own request method, or (a boundary called on its own, as drift does) a new
request through the client of the SDK instrumented last."""

from __future__ import annotations

import contextvars
import importlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from replayable.boundary import Boundary, boundary
from replayable.context import annotate
from replayable.errors import UnsupportedClient
from replayable.integrations._stainless._answers import (
    Answer,
    AnswerCodec,
    EventCodec,
    Opened,
    response_body,
    response_headers,
    sse_event,
)

if TYPE_CHECKING:
    from replayable.integrations._stainless import SDK, Route

_RAW_HEADER = "x-stainless-raw-response"
_CAST_HEADER = "____stainless_override_cast_to"


@dataclass
class Call:
    """The SDK call a boundary's live function performs: the client's own request method."""

    sdk: SDK
    route: Route
    original: Callable[..., Any]
    options: Any
    stream: bool
    stream_cls: Any


CALL: contextvars.ContextVar[Call | None] = contextvars.ContextVar(
    "replayable_stainless_call", default=None
)


def _live_options(call: Call) -> Any:
    """The request's options without the headers that ask for a wrapped response."""
    options = call.options.model_copy()
    options.headers = {
        k: v
        for k, v in dict(options.headers or {}).items()
        if k.lower() not in (_RAW_HEADER, _CAST_HEADER)
    }
    return options


def _static(call: Call, body: dict[str, Any]) -> dict[str, Any]:
    return {
        "provider": call.sdk.provider,
        "sdk_version": call.sdk.version,
        "operation": call.route.operation,
        "request_model": body.get("model"),
    }


def _opened(call: Call, response: Any) -> Opened:
    header = {
        "provider": call.sdk.provider,
        "sdk_version": call.sdk.version,
        "status": response.status_code,
        "headers": response_headers(response),
        "url": str(response.request.url),
    }
    return Opened(header)


def _request_id(headers: dict[str, str]) -> str | None:
    lower = {k.lower(): v for k, v in headers.items()}
    return lower.get("x-request-id") or lower.get("request-id")


def make_boundary(sdk: SDK, route: Route, is_async: bool, stream: bool) -> Boundary:
    name = route.name + ("_stream" if stream else "")
    codec: Any = EventCodec() if stream else AnswerCodec()
    deco = boundary(name=name, kind=route.kind, ignore=route.ignore, codec=codec)
    fn: Any
    if stream and is_async:

        async def astream(**body: Any) -> AsyncIterator[Any]:
            call = _the_call(sdk, route, True, True, body)
            annotate(**_static(call, body))
            response = await call.original(
                call.sdk.http.Response, _live_options(call), stream=True, stream_cls=None
            )
            acc: dict[str, Any] = {}
            try:
                first = _opened(call, response)
                annotate(request_id=_request_id(first.header["headers"]))
                yield first
                async for sse in call.sdk.sse().aiter_bytes(response.aiter_bytes()):
                    chunk = sse_event(sse)
                    if call.sdk.accumulate(acc, chunk):
                        annotate(**acc)
                    yield chunk
            finally:
                await response.aclose()

        fn = deco(astream)
    elif stream:

        def sstream(**body: Any) -> Iterator[Any]:
            call = _the_call(sdk, route, False, True, body)
            annotate(**_static(call, body))
            response = call.original(
                call.sdk.http.Response, _live_options(call), stream=True, stream_cls=None
            )
            acc: dict[str, Any] = {}
            try:
                first = _opened(call, response)
                annotate(request_id=_request_id(first.header["headers"]))
                yield first
                for sse in call.sdk.sse().iter_bytes(response.iter_bytes()):
                    chunk = sse_event(sse)
                    if call.sdk.accumulate(acc, chunk):
                        annotate(**acc)
                    yield chunk
            finally:
                response.close()

        fn = deco(sstream)
    elif is_async:

        async def aplain(**body: Any) -> Any:
            call = _the_call(sdk, route, True, False, body)
            annotate(**_static(call, body))
            response = await call.original(
                call.sdk.http.Response, _live_options(call), stream=False, stream_cls=None
            )
            await response.aread()
            return _answer(call, response)

        fn = deco(aplain)
    else:

        def plain(**body: Any) -> Any:
            call = _the_call(sdk, route, False, False, body)
            annotate(**_static(call, body))
            response = call.original(
                call.sdk.http.Response, _live_options(call), stream=False, stream_cls=None
            )
            response.read()
            return _answer(call, response)

        fn = deco(plain)
    made: Boundary = getattr(fn, "__replayable__")  # noqa: B009
    return made


def _the_call(sdk: SDK, route: Route, is_async: bool, stream: bool, body: dict[str, Any]) -> Call:
    """The request in flight, or (a boundary called on its own, as drift does) a new request
    with ``body`` through the client of this SDK instrumented last."""
    call = CALL.get()
    if call is not None:
        return call
    client = sdk.latest.get(is_async)
    if client is None:
        kind = "async " if is_async else ""
        raise UnsupportedClient(
            f"{route.name}: no {kind}{sdk.provider} client is instrumented in this process; "
            "instrument one (rp.instrument(client)) to re-run recorded calls"
        )
    models = importlib.import_module(f"{sdk.module.__name__}._models")
    options = models.FinalRequestOptions.construct(method="post", url=route.suffix, json_data=body)
    return Call(sdk, route, client.__replayable_request__, options, stream, None)


def _answer(call: Call, response: Any) -> Answer:
    answer = Answer(
        response.status_code, response_headers(response), str(response.request.url), None
    )
    answer.body = response_body(response)
    meta = call.sdk.describe(answer.body)
    meta["request_id"] = _request_id(answer.headers)
    annotate(**{k: v for k, v in meta.items() if v is not None})
    return answer
