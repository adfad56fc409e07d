"""Remote calls: a request to another service as a boundary of kind ``remote``.

Library-neutral: the httpx and requests adapters (:mod:`replayable.integrations.http`) hand a
request here as a :class:`Request` (method, URL parts, body, headers) and a ``send`` callable
that performs it with extra headers and returns a :class:`Response`. Inside a run the request is
the boundary ``http:METHOD host/path`` (keyed by method, path, query and body; headers kept but
out of the key, credentials redacted as everywhere); its response is recorded as JSON and served
in replay, where ``send`` is never called: the other service is not contacted.

Outgoing context: the live ``send`` adds ``traceparent`` and the ``baggage`` member (see
:mod:`replayable._propagation`), the remote step being the parent. In a replay with
``follow=True``, a remote call named in ``live=`` carries mode ``follow`` and the recorded step
it replays; the callee's middleware replays its linked run and returns what diverged there in the
``replayable-follow`` response header. That header is read only when this very request asked for
``follow`` (any other response carrying it is ignored with a warning), and it never reaches the
agent or the recording.
"""

from __future__ import annotations

import base64
import contextvars
import importlib
import logging
import threading
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import orjson

from replayable import _follow
from replayable import _propagation as prop
from replayable._pii import active as active_pii
from replayable.boundary import Boundary, boundary, get_boundary
from replayable.context import FRAME, SESSION
from replayable.errors import Divergence, ReplayableError
from replayable.redact import REDACTED, is_secret_key, scrub

__all__ = [
    "FOLLOW_HEADER",
    "KIND",
    "SAFE_METHODS",
    "VOLATILE",
    "Request",
    "Response",
    "call_async",
    "call_sync",
    "decode_body",
    "encode_body",
    "follow_divergences",
    "followable",
    "note_linked",
    "outgoing",
    "remote_boundary",
    "remote_name",
    "take_follow_report",
]

log = logging.getLogger("replayable")

KIND = "remote"
FOLLOW_HEADER = "replayable-follow"
"""The response header in which a callee replaying its linked run reports its divergences."""
MAX_FOLLOW_HEADER = 32768
SAFE_METHODS = frozenset(("GET", "HEAD", "OPTIONS", "TRACE"))
VOLATILE = frozenset(
    (
        "accept-encoding",
        "baggage",
        "connection",
        "content-length",
        "date",
        "host",
        "traceparent",
        "tracestate",
        "transfer-encoding",
        "user-agent",
        "x-request-id",
        "x-amzn-trace-id",
        FOLLOW_HEADER,
        _follow.LINKED_HEADER,
        _follow.PROBE_HEADER,
    )
)
"""Headers that differ from one identical request to the next: neither keyed nor stored."""
_DROPPED_RESPONSE = frozenset(("content-encoding", "content-length", "transfer-encoding"))


@dataclass(slots=True)
class Request:
    """A request as the remote boundary sees it."""

    method: str
    host: str
    path: str
    query: str
    body: bytes
    headers: list[tuple[str, str]]


@dataclass(slots=True)
class Response:
    """A response as recorded: status, headers (decoded body's), body bytes."""

    status: int
    headers: list[tuple[str, str]]
    body: bytes
    reason: str = ""
    extra: dict[str, Any] = field(default_factory=dict)


def encode_body(body: bytes, content_type: str) -> Any:
    """A body as JSON: parsed JSON for a JSON content type, text when UTF-8, else base64."""
    if not body:
        return None
    if "json" in content_type:
        try:
            return {"json": orjson.loads(body)}
        except orjson.JSONDecodeError:
            pass
    try:
        return {"text": body.decode("utf-8")}
    except UnicodeDecodeError:
        return {"base64": base64.b64encode(body).decode("ascii")}


def decode_body(data: Any) -> bytes:
    """Inverse of :func:`encode_body` (JSON re-serialized compactly)."""
    if not isinstance(data, dict):
        return b""
    if "json" in data:
        return orjson.dumps(data["json"])
    if "text" in data:
        return str(data["text"]).encode("utf-8")
    if "base64" in data:
        return base64.b64decode(str(data["base64"]))
    return b""


def _content_type(headers: Iterable[tuple[str, str]]) -> str:
    for k, v in headers:
        if k.lower() == "content-type":
            return v.lower()
    return ""


def _query(query: str) -> list[list[str]]:
    """The query as [name, value] pairs, the value of a field named like a credential
    (``token``, ``access_token``, ``password``) redacted: pairs are no dict, so the store's
    redaction cannot tell such a field by its name."""
    from urllib.parse import parse_qsl

    return [
        [k, REDACTED if v and is_secret_key(k) else v]
        for k, v in parse_qsl(query, keep_blank_values=True)
    ]


def followable(b: Boundary) -> bool:
    """Whether a live call of ``b`` can ask its callee to replay instead of acting (a request
    to another service, a tool call to an MCP server): such a call is not refused as a side
    effect in a replay with ``follow=True``, since the other side refuses its own."""
    return b.kind == KIND or b.name.startswith("mcp:tools/call.")


def remote_name(method: str, host: str, path: str) -> str:
    """``http:METHOD host/path``: the boundary name of a request."""
    return f"http:{method.upper()} {host}{path or '/'}"


_BOUNDARIES: dict[tuple[str, bool, bool], Boundary] = {}
_LOCK = threading.Lock()


def _live_sync(method: str, path: str, query: Any, body: Any, headers: Any) -> Any:
    call = _CALL.get()
    if call is None:
        raise ReplayableError(f"{method} {path}: a remote boundary was called outside its client")
    return call.run_sync()


async def _live_async(method: str, path: str, query: Any, body: Any, headers: Any) -> Any:
    call = _CALL.get()
    if call is None:
        raise ReplayableError(f"{method} {path}: a remote boundary was called outside its client")
    return await call.run_async()


def remote_boundary(name: str, side_effects: bool, is_async: bool = False) -> Boundary:
    """The boundary for requests named ``name`` (defined, and so registered, on first use)."""
    k = (name, side_effects, is_async)
    b = _BOUNDARIES.get(k)
    if b is None:
        with _LOCK:
            b = _BOUNDARIES.get(k)
            if b is None:
                fn: Callable[..., Any] = _live_async if is_async else _live_sync
                wrapped = boundary(
                    name=name, kind=KIND, side_effects=side_effects, ignore=("headers",)
                )(fn)
                b = _BOUNDARIES[k] = get_boundary(wrapped)
    return b


def register_recorded(events: Iterable[Any]) -> None:
    """Define the remote boundaries a recording holds, so ``live=`` can name them."""
    for ev in events:
        if ev.kind == KIND and ev.boundary.startswith("http:"):
            method = ev.boundary[5:].split(" ", 1)[0]
            remote_boundary(ev.boundary, method not in SAFE_METHODS)
        elif ev.kind == KIND and ev.boundary.startswith("a2a:message/send "):
            # By name: the integration imports the A2A SDK only when a client is instrumented.
            a2a = importlib.import_module("replayable.integrations.a2a")
            a2a.register_recorded(ev.boundary)


@dataclass(slots=True)
class _Call:
    """The real request in flight, for the boundary's live function. ``probe`` sends an
    ``OPTIONS`` request to the same URL with the given headers (the follow probe, see
    :mod:`replayable._follow`)."""

    request: Request
    send: Callable[[dict[str, str]], Any]
    service: str
    b: Boundary
    probe: Callable[[dict[str, str]], Any] | None = None

    def _headers(self) -> tuple[dict[str, str], bool, str | None]:
        expected = _follow.gate(self.b.name, self.b.side_effects)
        headers, follow = outgoing(self.service)
        if expected is not None and (not follow or self.probe is None):
            raise _follow.refusal(self.b.name, None, "this client cannot probe the callee")
        return headers, follow, expected

    def run_sync(self) -> Any:
        headers, follow, expected = self._headers()
        if expected is not None:
            assert self.probe is not None
            _acked(self.b.name, self.probe(_probe_headers(headers)), expected)
        response: Response = self.send(headers)
        return _finish(response, follow, self.service)

    async def run_async(self) -> Any:
        headers, follow, expected = self._headers()
        if expected is not None:
            assert self.probe is not None
            _acked(self.b.name, await self.probe(_probe_headers(headers)), expected)
        response: Response = await self.send(headers)
        return _finish(response, follow, self.service)


def _probe_headers(headers: dict[str, str]) -> dict[str, str]:
    return {**headers, _follow.PROBE_HEADER: _follow.PROBE_VALUE}


def _acked(name: str, answer: Response, expected: str) -> None:
    value = next((v for k, v in answer.headers if k.lower() == _follow.LINKED_HEADER), None)
    _follow.check_ack(name, answer.status, value, expected)


_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "replayable_remote_call", default=None
)


def outgoing(service: str | None = None) -> tuple[dict[str, str], bool]:
    """The propagation headers for a request made now (by the current step of the current run),
    and whether they ask the callee to follow (replay its linked run)."""
    session = SESSION.get()
    frame = FRAME.get()
    run = session.run if session is not None else None
    if session is None or frame is None or run is None:
        return {}, False
    trace_id = run.trace_id
    if trace_id is None:
        trace_id = run.metadata.setdefault("trace_id", prop.new_trace_id())
    mode: prop.Mode = "record"
    source: prop.Link | None = None
    if session.serves_recordings:
        mode = "replay"
        events = session.source_events or {}
        recorded = events.get(frame.rec_seq) if frame.rec_seq is not None else None
        if (
            session.follow is not None
            and session.source is not None
            and recorded is not None
            and _follow.linked_run(recorded) is not None
        ):
            mode = "follow"
            source = prop.Link(session.source.id, recorded.address, service)
    headers = {
        prop.TRACEPARENT: prop.traceparent(trace_id, run.id, frame.address),
        prop.BAGGAGE: prop.baggage_entry(run.id, frame.address, mode, source),
    }
    return headers, mode == "follow"


def _finish(response: Response, follow: bool, service: str) -> dict[str, Any]:
    """The response as recorded (the follow header taken out: read only when asked for; the
    callee's linked-run answer kept in the step's metadata, not in the response)."""
    report = linked = None
    kept = []
    for k, v in response.headers:
        lk = k.lower()
        if lk == FOLLOW_HEADER:
            report = v
        elif lk == _follow.LINKED_HEADER:
            linked = v
        elif lk not in _DROPPED_RESPONSE:
            kept.append([k, v])
    if report is not None:
        take_follow_report(report, follow, service)
    if linked is not None:
        note_linked(linked, service)
    return {
        "status": response.status,
        "reason": response.reason,
        "headers": kept,
        "body": encode_body(response.body, _content_type(response.headers)),
    }


def note_linked(value: Any, service: str) -> None:
    """Keep a callee's answer naming the run it started in the current step's metadata
    (``meta["linked"]``): the evidence a ``follow`` replay needs (see
    :mod:`replayable._follow`)."""
    run = _follow.parse_linked(value)
    frame = FRAME.get()
    if run is not None and frame is not None and SESSION.get() is not None:
        frame.meta["linked"] = {"run": run, "service": service}


def follow_divergences(value: str, service: str) -> list[dict[str, Any]]:
    """The divergences in a callee's ``replayable-follow`` header (bounded, checked)."""
    if len(value) > MAX_FOLLOW_HEADER:
        raise ValueError("header too long")
    data = orjson.loads(base64.urlsafe_b64decode(value.encode("ascii")))
    if not isinstance(data, dict) or not isinstance(data.get("divergences"), list):
        raise ValueError("not a follow report")
    out = []
    for d in data["divergences"][:100]:
        if not isinstance(d, dict):
            raise ValueError("not a divergence")
        out.append(
            {
                "reason": str(d.get("reason", "changed"))[:40],
                "address": str(d.get("address", ""))[: prop.MAX_STEP],
                "boundary": str(d.get("boundary", ""))[:400],
                "detail": str(d.get("detail") or "")[:2000] or None,
                "run": str(data.get("run", ""))[:128],
            }
        )
    return out


def take_follow_report(value: str, asked: bool, service: str) -> None:
    """Add the divergences a callee reported (``value``, its ``replayable-follow`` report) to
    the current replay, if this request ``asked`` the callee to follow; else ignore it with a
    warning (a report nobody asked for is forged or stale)."""
    if not asked:
        log.warning(
            "replayable: ignored a %s report from %s on a response to a request that did not "
            "ask the callee to follow",
            FOLLOW_HEADER,
            service,
        )
        return
    session = SESSION.get()
    frame = FRAME.get()
    if session is None or frame is None:
        return
    try:
        found = follow_divergences(value, service)
    except (ValueError, orjson.JSONDecodeError, UnicodeError):
        log.warning("replayable: ignored a malformed %s header from %s", FOLLOW_HEADER, service)
        return
    for d in found:
        where = f"{service}: {d['address']}"
        div = Divergence(
            reason=d["reason"],
            address=f"{frame.address} > {where}",
            boundary=d["boundary"],
            run_id=d["run"] or None,
            detail=(f"in service {service} (its replay run {d['run']}): " + (d["detail"] or ""))
            .strip()
            .rstrip(":"),
        )
        session.add_divergence(div)


def _call(
    request: Request, service: str | None, name: str | None, side_effects: bool | None
) -> tuple[Boundary, dict[str, Any], str]:
    host = service or request.host
    bname = name or scrub(remote_name(request.method, host, request.path))  # a key in a path
    pii = active_pii()
    if pii is not None:  # a path holds ids, emails, phone numbers: the step's name is stored
        bname = pii.text(bname)
    effects = request.method.upper() not in SAFE_METHODS if side_effects is None else side_effects
    headers = {k.lower(): v for k, v in request.headers if k.lower() not in VOLATILE}
    data = {
        "method": request.method.upper(),
        "path": request.path,
        "query": _query(request.query),
        "body": encode_body(request.body, _content_type(request.headers)),
        "headers": headers,
    }
    return (remote_boundary(bname, effects), data, host)


def call_sync(
    request: Request,
    send: Callable[[dict[str, str]], Response],
    *,
    service: str | None = None,
    name: str | None = None,
    side_effects: bool | None = None,
    probe: Callable[[dict[str, str]], Response] | None = None,
) -> dict[str, Any]:
    """Make ``request`` a remote step of the current run (live: ``send(extra_headers)``), and
    return the response as recorded or served. ``probe(headers)`` sends ``OPTIONS`` to the
    same URL (the follow probe; without it a side effect is never followed)."""
    b, data, host = _call(request, service, name, side_effects)
    token = _CALL.set(_Call(request, send, host, b, probe))
    try:
        result: dict[str, Any] = b.wrapper(**data)
    finally:
        _CALL.reset(token)
    return result


async def call_async(
    request: Request,
    send: Callable[[dict[str, str]], Awaitable[Response]],
    *,
    service: str | None = None,
    name: str | None = None,
    side_effects: bool | None = None,
    probe: Callable[[dict[str, str]], Awaitable[Response]] | None = None,
) -> dict[str, Any]:
    """The async twin of :func:`call_sync`."""
    b, data, host = _call(request, service, name, side_effects)
    b = remote_boundary(b.name, b.side_effects, is_async=True)
    token = _CALL.set(_Call(request, send, host, b, probe))
    try:
        result: dict[str, Any] = await b.wrapper(**data)
    finally:
        _CALL.reset(token)
    return result


def response_parts(data: Mapping[str, Any]) -> tuple[int, list[tuple[str, str]], bytes, str]:
    """(status, headers, body, reason) of a recorded or served response."""
    status = data.get("status")
    headers = data.get("headers") or []
    return (
        int(status) if isinstance(status, int) else 502,
        [(str(k), str(v)) for k, v in headers if isinstance(k, str)],
        decode_body(data.get("body")),
        str(data.get("reason") or ""),
    )
