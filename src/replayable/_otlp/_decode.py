"""OTLP trace export requests, protobuf or OTLP/JSON (gzip or not), to plain :class:`Span` values.

Both encodings go through ``opentelemetry-proto``'s ``ExportTraceServiceRequest``: protobuf is
parsed by it, and OTLP/JSON is parsed by protobuf's JSON mapping once its ids are turned from
the hex OTLP/JSON uses into the base64 the mapping expects, so one schema checks both (wrong
types, unknown enum values and broken bytes are refused the same way).
"""

from __future__ import annotations

import base64
import binascii
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import orjson

from replayable.errors import InvalidOtlp

__all__ = [
    "MAX_BODY",
    "MAX_DEPTH",
    "MAX_NESTING",
    "MAX_SPANS",
    "MAX_VALUE",
    "Span",
    "SpanEvent",
    "check_depth",
    "decode_json",
    "decode_protobuf",
    "decode_request",
    "gunzip",
]

MAX_BODY = 64 * 1024 * 1024
"""Bytes an export request may have, after gzip is undone (a bomb stops here)."""

MAX_SPANS = 50_000
"""Spans one trace (and one export request) may have."""

MAX_NESTING = 64
"""Levels one trace's spans may nest (a span, its parent, its grandparent...): a step's address
names every level above it, so a deeper chain would make addresses grow with the square of the
trace."""

MAX_VALUE = 8 * 1024 * 1024
"""Characters (or bytes) one attribute value may have: 8 MiB holds a long context's messages;
a bigger one is refused rather than copied through redaction, keys and the store."""

MAX_DEPTH = 64
"""Levels an attribute value (an ``AnyValue``, or JSON text a convention parses) may nest."""

_HINT = 'pip install "replayable[otel]" (it brings opentelemetry-proto)'


@dataclass(slots=True)
class SpanEvent:
    """One event of a span: its name, time and attributes."""

    name: str
    time_ns: int
    attributes: dict[str, Any]


@dataclass(slots=True)
class Span:
    """One span as the exporter sent it, with its resource and scope.

    Ids are lowercase hex; attribute values are JSON types (``AnyValue`` arrays to lists, key
    lists to dicts, bytes to base64 text).
    """

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    kind: int = 0
    start_ns: int = 0
    end_ns: int = 0
    attributes: dict[str, Any] = field(default_factory=dict)
    events: list[SpanEvent] = field(default_factory=list)
    status_code: int = 0
    status_message: str = ""
    resource: dict[str, Any] = field(default_factory=dict)
    scope: str = ""
    scope_version: str = ""
    schema_url: str = ""


def _proto() -> Any:
    try:
        from opentelemetry.proto.collector.trace.v1 import trace_service_pb2
    except ImportError as exc:
        raise InvalidOtlp(f"reading OTLP needs opentelemetry-proto: {_HINT}") from exc
    return trace_service_pb2


def gunzip(body: bytes, limit: int = MAX_BODY) -> bytes:
    """``body`` un-gzipped, refusing more than ``limit`` bytes out (413)."""
    d = zlib.decompressobj(16 + zlib.MAX_WBITS)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise InvalidOtlp(f"the body is not valid gzip ({exc})") from exc
    if len(out) > limit or d.unconsumed_tail:
        raise InvalidOtlp(f"the body is over {limit} bytes once unzipped", status=413)
    if not d.eof:
        raise InvalidOtlp("the gzip body is cut short")
    return out


def decode_request(body: bytes, content_type: str, content_encoding: str = "") -> list[Span]:
    """The spans of one export request, by its HTTP content type and encoding.

    ``application/x-protobuf`` (the OTLP/HTTP default) or ``application/json``; ``gzip``.
    """
    encoding = content_encoding.strip().lower()
    if encoding == "gzip":
        body = gunzip(body)
    elif encoding not in ("", "identity"):
        raise InvalidOtlp(
            f"unsupported Content-Encoding {encoding!r}: send gzip or nothing", status=415
        )
    if len(body) > MAX_BODY:
        raise InvalidOtlp(f"the body is over {MAX_BODY} bytes", status=413)
    ctype = content_type.split(";", 1)[0].strip().lower()
    if ctype == "application/json":
        return decode_json(body)
    if ctype in ("application/x-protobuf", "application/protobuf", ""):
        return decode_protobuf(body)
    raise InvalidOtlp(
        f"unsupported Content-Type {ctype!r}: send application/x-protobuf or application/json",
        status=415,
    )


def decode_protobuf(body: bytes) -> list[Span]:
    """The spans of a protobuf ``ExportTraceServiceRequest``."""
    from google.protobuf.message import DecodeError

    request = _proto().ExportTraceServiceRequest()
    try:
        request.ParseFromString(body)
    except (DecodeError, ValueError, RuntimeError) as exc:
        raise InvalidOtlp(f"not an OTLP protobuf ExportTraceServiceRequest ({exc})") from exc
    return _spans(request)


_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")


def decode_json(body: bytes | str | Any) -> list[Span]:
    """The spans of an OTLP/JSON export request (text, bytes, or already parsed)."""
    from google.protobuf import json_format

    if isinstance(body, bytes | bytearray | memoryview | str):
        try:
            data = orjson.loads(body)
        except orjson.JSONDecodeError as exc:
            raise InvalidOtlp(f"not JSON ({exc})") from exc
    else:
        data = body
    if not isinstance(data, dict):
        raise InvalidOtlp(f"an OTLP/JSON export request is a JSON object, not {_type(data)}")
    _hex_ids_to_base64(data)
    request = _proto().ExportTraceServiceRequest()
    try:
        json_format.ParseDict(data, request, ignore_unknown_fields=True)
    except (json_format.ParseError, TypeError, ValueError, RecursionError) as exc:
        raise InvalidOtlp(f"not an OTLP/JSON export request ({_first_line(exc)})") from exc
    return _spans(request)


def _type(value: Any) -> str:
    return {list: "an array", str: "a string", type(None): "null"}.get(
        type(value), type(value).__name__
    )


def _first_line(exc: BaseException) -> str:
    return str(exc).splitlines()[0][:300] if str(exc) else type(exc).__name__


def _hex_ids_to_base64(data: dict[str, Any]) -> None:
    """OTLP/JSON writes ids as hex; the protobuf JSON mapping reads bytes as base64. Counts the
    spans first, so an oversized request is refused before the mapping builds it again."""
    scopes = [
        ss
        for rs in _list(data.get("resourceSpans", data.get("resource_spans")))
        if isinstance(rs, dict)
        for ss in _list(rs.get("scopeSpans", rs.get("scope_spans")))
        if isinstance(ss, dict)
    ]
    _check_count(sum(len(_list(ss.get("spans"))) for ss in scopes))
    for ss in scopes:
        for span in _list(ss.get("spans")):
            if not isinstance(span, dict):
                continue
            _fix_ids(span)
            for link in _list(span.get("links")):
                if isinstance(link, dict):
                    _fix_ids(link)


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _fix_ids(obj: dict[str, Any]) -> None:
    for name in _ID_FIELDS:
        value = obj.get(name)
        if not isinstance(value, str) or not value:
            continue
        try:
            raw = bytes.fromhex(value)
        except ValueError:
            raise InvalidOtlp(
                f"{name} {value[:40]!r} is not hex, as OTLP/JSON writes ids"
            ) from None
        obj[name] = base64.b64encode(raw).decode()


def _check_count(count: int) -> None:
    if count > MAX_SPANS:
        raise InvalidOtlp(
            f"the request has {count} spans, over the bound of {MAX_SPANS}: export in batches "
            "(the SDK's BatchSpanProcessor does)",
            status=413,
        )


def _spans(request: Any) -> list[Span]:
    _check_count(sum(len(ss.spans) for rs in request.resource_spans for ss in rs.scope_spans))
    return list(_iter_spans(request))


def _iter_spans(request: Any) -> Iterator[Span]:
    for rs in request.resource_spans:
        resource = _attributes(rs.resource.attributes)
        for ss in rs.scope_spans:
            schema = ss.schema_url or rs.schema_url
            for s in ss.spans:
                trace_id, span_id = s.trace_id.hex(), s.span_id.hex()
                if len(trace_id) != 32 or trace_id == "0" * 32:
                    raise InvalidOtlp(
                        f"span {s.name!r} has no valid trace id (16 bytes, not all zero)"
                    )
                if len(span_id) != 16 or span_id == "0" * 16:
                    raise InvalidOtlp(
                        f"span {s.name!r} has no valid span id (8 bytes, not all zero)"
                    )
                parent = s.parent_span_id.hex() or None
                if parent is not None and len(parent) != 16:
                    raise InvalidOtlp(f"span {s.name!r} has a parent span id that is not 8 bytes")
                yield Span(
                    trace_id=trace_id,
                    span_id=span_id,
                    parent_id=parent,
                    name=s.name,
                    kind=int(s.kind),
                    start_ns=int(s.start_time_unix_nano),
                    end_ns=int(s.end_time_unix_nano),
                    attributes=_attributes(s.attributes),
                    events=[
                        SpanEvent(e.name, int(e.time_unix_nano), _attributes(e.attributes))
                        for e in s.events
                    ],
                    status_code=int(s.status.code),
                    status_message=s.status.message,
                    resource=resource,
                    scope=ss.scope.name,
                    scope_version=ss.scope.version,
                    schema_url=schema,
                )


def check_depth(value: Any, what: str) -> None:
    """Raise :class:`InvalidOtlp` when ``value`` (JSON types) nests deeper than
    :data:`MAX_DEPTH` (walked without recursion, so any depth is safe to check)."""
    stack: list[tuple[Any, int]] = [(value, 0)]
    while stack:
        v, depth = stack.pop()
        if isinstance(v, dict):
            children: Any = v.values()
        elif isinstance(v, list):
            children = v
        else:
            continue
        if depth >= MAX_DEPTH:
            raise InvalidOtlp(f"{what} nests deeper than {MAX_DEPTH} levels")
        stack.extend((c, depth + 1) for c in children)


def _attributes(kvs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in kvs:
        try:
            out[kv.key] = _value(kv.value)
        except InvalidOtlp as exc:
            raise InvalidOtlp(f"attribute {kv.key[:100]!r}: {exc}", status=exc.status) from None
    return out


def _value(v: Any, depth: int = 0) -> Any:
    """An ``AnyValue`` as JSON types."""
    if depth > MAX_DEPTH:
        raise InvalidOtlp(f"an attribute value nests deeper than {MAX_DEPTH} levels")
    which = v.WhichOneof("value")
    if which is None:
        return None
    if which == "array_value":
        return [_value(x, depth + 1) for x in v.array_value.values]
    if which == "kvlist_value":
        return {kv.key: _value(kv.value, depth + 1) for kv in v.kvlist_value.values}
    if which in ("string_value", "bytes_value"):
        raw = getattr(v, which)
        if len(raw) > MAX_VALUE:
            raise InvalidOtlp(
                f"a value of {len(raw):,} characters, over the bound of {MAX_VALUE:,} for one "
                "value",
                status=413,
            )
        return raw if which == "string_value" else base64.b64encode(raw).decode()
    if which == "int_value":
        return int(v.int_value)
    if which == "string_value_strindex":  # a profiles-only variant: no string table here
        return None
    try:
        return getattr(v, which)
    except (AttributeError, binascii.Error):  # pragma: no cover - defensive
        return None
