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

Propagation headers are untrusted input: malformed, oversized or contradictory ones, a follow
request to a middleware without ``follow=True``, or one naming no linked run of this store are
ignored with a logged warning; the request is then handled as one without context.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, Iterable, Iterator, MutableMapping
from typing import Any

from replayable import _linked
from replayable._linked import Decision, Policy
from replayable.store import Store

__all__ = ["ASGIMiddleware", "WSGIMiddleware"]

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_WANTED = ("traceparent", "baggage")


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
            async with self.policy.recording(decision, method, path):
                await self.app(scope, receive, send)
            return
        await self._follow(decision, scope, receive, send)

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
        if not any(m.get("type") == "http.response.start" for m in held):
            held = [
                {"type": "http.response.start", "status": 500, "headers": [header]},
                {"type": "http.response.body", "body": f"replay failed: {failed}".encode()},
            ]
        for message in held:
            if message.get("type") == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
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
        headers = {k: str(environ[key]) for k in _WANTED if (key := "HTTP_" + k.upper()) in environ}
        decision = self.policy.decide(headers)
        if decision is None:
            return self.app(environ, start_response)
        method = str(environ.get("REQUEST_METHOD", ""))
        path = str(environ.get("PATH_INFO", ""))
        if decision.action == "record":
            with self.policy.recording(decision, method, path):
                return list(_drain(self.app(environ, start_response)))
        return self._follow(decision, environ, start_response)

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
        if not started or failed is not None:
            start_response("500 Internal Server Error", [header])
            return [f"replay failed: {failed}".encode()]
        status, headers, exc_info = started[0]
        start_response(status, [*headers, header], exc_info)
        return body


def _drain(result: Iterable[bytes]) -> Iterator[bytes]:
    """A WSGI response's chunks, read inside the run (a streamed body records too), closed."""
    try:
        yield from result
    finally:
        close = getattr(result, "close", None)
        if close is not None:
            close()
