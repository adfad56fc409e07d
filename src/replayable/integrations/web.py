"""Middleware that links a service's runs to the callers that called it (ASGI and WSGI).

For example (a sketch, not run as a doctest)::

    from replayable.integrations.web import ASGIMiddleware, WSGIMiddleware
    app = FastAPI(); app.add_middleware(ASGIMiddleware, service="billing")   # Starlette too
    flask_app.wsgi_app = WSGIMiddleware(flask_app.wsgi_app, service="billing")
    application = WSGIMiddleware(get_wsgi_application(), service="billing")  # Django

A request carrying a caller's context (``traceparent`` plus replayable's ``baggage`` member,
see :mod:`replayable.integrations.http`) starts a run linked to the caller's run and step
(:attr:`replayable.Run.parent`), with the caller's trace id; the service's decorated
boundaries record into it. ``requests=`` says which requests start a run: ``"with-context"``
(default: those that carry a caller's context), ``"all"`` (every request, a run of its own when
there is no context) or ``"none"``.

Replaying across services: a middleware built with ``follow=True`` (a local instance started
for a replay, never a production one) honours a request asking it to follow: it replays its
own run linked to the caller's recorded step (outputs served, side effects refused, nothing
re-fired) and reports what diverged there in the ``replayable-follow`` response header, which
the caller's instrumented client reads. The response is held until the replay ends.

A run linked to a caller answers with its id in the ``replayable-linked`` response header: the
caller's step keeps it as the evidence that a later ``follow`` replay may send that step live
(see :mod:`replayable._follow`). A follow probe (``OPTIONS`` with ``replayable-probe: follow``)
is answered with the run this service would replay, and runs none of the app's code.

Propagation headers are untrusted input: malformed, oversized or contradictory ones are ignored
with a logged warning and the request handled as one without context. A well-formed follow
request this middleware cannot honour (built without ``follow=True``, or naming no linked run of
this store) is refused with ``409 Conflict`` and never handled live: that would do again what
the replay means not to.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any

from replayable import _linked
from replayable._follow import PROBE_HEADER
from replayable._linked import Decision, Policy
from replayable.store import Store

__all__ = ["ASGIMiddleware", "WSGIMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_WANTED = ("traceparent", "baggage", PROBE_HEADER)


def _asgi_headers(scope: Scope) -> dict[str, str]:
    found: dict[str, list[str]] = {}
    for k, v in scope.get("headers") or ():
        name = k.decode("latin-1").lower()
        if name in _WANTED:
            found.setdefault(name, []).append(v.decode("latin-1"))
    # Repeated headers join as a list would: a repeated traceparent then fails to parse.
    return {k: ",".join(v) for k, v in found.items()}


class ASGIMiddleware:
    """ASGI middleware (Starlette, FastAPI, any ASGI app): see the module docstring.

    ``app.add_middleware(ASGIMiddleware, service="billing")`` or ``ASGIMiddleware(app, ...)``.
    """

    def __init__(
        self,
        app: Callable[[Scope, Receive, Send], Awaitable[None]],
        *,
        store: Store | str | os.PathLike[str] | None = None,
        service: str | None = None,
        requests: str = "with-context",
        follow: bool = False,
    ) -> None:
        self.app = app
        self.policy = Policy(store, service, requests, follow)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        decision = self.policy.decide(_asgi_headers(scope))
        if decision is None:
            await self.app(scope, receive, send)
            return
        method, path = str(scope.get("method", "")), str(scope.get("path", ""))
        if decision.action == "record":
            async with self.policy.recording(decision, method, path) as run:
                await self.app(scope, receive, _answering(send, run) if decision.links else send)
            return
        if decision.action == "follow":
            await self._follow(decision, scope, receive, send)
            return
        status, headers, body = _short_answer(decision)
        await send(
            {
                "type": "http.response.start",
                "status": status,
                "headers": [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers],
            }
        )
        await send({"type": "http.response.body", "body": body})

    async def _follow(self, decision: Decision, scope: Scope, receive: Receive, send: Send) -> None:
        held: list[Message] = []

        async def hold(message: Message) -> None:
            held.append(message)

        r = self.policy.replaying(decision)
        failed: BaseException | None = None
        try:
            async with r:
                await self.app(scope, receive, hold)
        except Exception as exc:  # the callee's code failed in replay: still answer the caller
            failed = exc
        name, value = _linked.follow_header(self.policy.service, r.run, r.divergences)
        header = (name.encode("latin-1"), value.encode("latin-1"))
        lname, lvalue = _linked.linked_header(r.run)
        linked = (lname.encode("latin-1"), lvalue.encode("latin-1"))
        if not any(m.get("type") == "http.response.start" for m in held):
            held = [
                {"type": "http.response.start", "status": 500, "headers": [header, linked]},
                {"type": "http.response.body", "body": f"replay failed: {failed}".encode()},
            ]
        for message in held:
            if message.get("type") == "http.response.start" and failed is None:
                message["headers"] = [*message.get("headers", ()), header, linked]
            await send(message)


class WSGIMiddleware:
    """WSGI middleware (Flask, Django, any WSGI app): see the module docstring.

    ``flask_app.wsgi_app = WSGIMiddleware(flask_app.wsgi_app, service="billing")``.
    """

    def __init__(
        self,
        app: Callable[[dict[str, Any], Callable[..., Any]], Iterable[bytes]],
        *,
        store: Store | str | os.PathLike[str] | None = None,
        service: str | None = None,
        requests: str = "with-context",
        follow: bool = False,
    ) -> None:
        self.app = app
        self.policy = Policy(store, service, requests, follow)

    def __call__(
        self, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        headers = {
            k: str(environ[key])
            for k in _WANTED
            if (key := "HTTP_" + k.upper().replace("-", "_")) in environ
        }
        decision = self.policy.decide(headers)
        if decision is None:
            return self.app(environ, start_response)
        method = str(environ.get("REQUEST_METHOD", ""))
        path = str(environ.get("PATH_INFO", ""))
        if decision.action == "record":
            with self.policy.recording(decision, method, path) as run:
                respond = _answering_wsgi(start_response, run) if decision.links else start_response
                return list(_drain(self.app(environ, respond)))
        if decision.action == "follow":
            return self._follow(decision, environ, start_response)
        status, answer, body = _short_answer(decision)
        start_response(f"{status} {'No Content' if status == 204 else 'Conflict'}", answer)
        return [body]

    def _follow(
        self, decision: Decision, environ: dict[str, Any], start_response: Callable[..., Any]
    ) -> Iterable[bytes]:
        started: list[tuple[str, list[tuple[str, str]], Any]] = []

        def hold(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
            started[:] = [(status, list(headers), exc_info)]
            return lambda data: None

        body: list[bytes] = []
        failed: BaseException | None = None
        r = self.policy.replaying(decision)
        try:
            with r:
                body = list(_drain(self.app(environ, hold)))
        except Exception as exc:
            failed = exc
        header = _linked.follow_header(self.policy.service, r.run, r.divergences)
        linked = _linked.linked_header(r.run)
        if not started or failed is not None:
            start_response("500 Internal Server Error", [header, linked])
            return [f"replay failed: {failed}".encode()]
        status, headers, exc_info = started[0]
        start_response(status, [*headers, header, linked], exc_info)
        return body


def _short_answer(decision: Decision) -> tuple[int, list[tuple[str, str]], bytes]:
    """The answer to a follow probe (204, naming the run to replay) or to a follow request
    this service refuses (409, why): the app runs for neither."""
    if decision.action == "probe" and decision.linked is not None:
        return 204, [_linked.linked_header(decision.linked)], b""
    return 409, [("content-type", "text/plain; charset=utf-8")], decision.reason.encode()


def _answering(send: Send, run: Any) -> Send:
    """``send`` with the ``replayable-linked`` header added to the response's start."""
    name, value = _linked.linked_header(run)
    header = (name.encode("latin-1"), value.encode("latin-1"))

    async def answer(message: Message) -> None:
        if message.get("type") == "http.response.start":
            message = {**message, "headers": [*message.get("headers", ()), header]}
        await send(message)

    return answer


def _answering_wsgi(start_response: Callable[..., Any], run: Any) -> Callable[..., Any]:
    """``start_response`` with the ``replayable-linked`` header added."""
    header = _linked.linked_header(run)

    def respond(status: str, headers: list[tuple[str, str]], exc_info: Any = None) -> Any:
        return start_response(status, [*headers, header], exc_info)

    return respond


def _drain(result: Iterable[bytes]) -> Iterator[bytes]:
    """A WSGI response's chunks, read inside the run (a streamed body records too), closed."""
    try:
        yield from result
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
