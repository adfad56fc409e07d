"""The one guard in front of every HTTP server replayable runs (the viewer, the OTLP
collector): a local bind refuses requests naming another host (DNS rebinding), a token, when
set, is checked on every request, and every response gets the given security headers.

Needs Starlette (the ``viewer`` extra).
"""

from __future__ import annotations

import base64
import binascii
import hmac
from collections.abc import Sequence
from urllib.parse import parse_qsl, urlencode

from starlette.responses import RedirectResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

__all__ = ["LOCAL_NAMES", "TOKEN_COOKIE", "Guard", "host_of"]

TOKEN_COOKIE = "replayable_viewer_token"
LOCAL_NAMES = {"127.0.0.1", "localhost", "[::1]", "::1"}
"""Host header names a locally bound server answers."""


def host_of(header: str) -> str:
    """The host name of a Host header (an IPv6 literal keeps its brackets)."""
    if header.startswith("["):
        return header[: header.find("]") + 1]
    return header.split(":", 1)[0]


def _cookie(header: str, name: str) -> str | None:
    for part in header.split(";"):
        k, _, v = part.strip().partition("=")
        if k == name:
            return v
    return None


def _basic_password(header: str) -> str | None:
    """The password of an ``Authorization: Basic`` header, None when it is no such header."""
    if not header.lower().startswith("basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return None
    _user, sep, password = decoded.partition(":")
    return password if sep else None


class Guard:
    """ASGI middleware: local Host header check, token check, security headers.

    ``url_token``: a page opened as ``/?token=...`` trades the token for a cookie (a browser's
    way in); off, only ``Authorization: Bearer`` (and the cookie) count. ``basic``: the password
    of ``Authorization: Basic`` counts as well, whatever the user name (for exporters that only
    speak Basic, as Langfuse's SDK does with its public and secret key).
    """

    def __init__(
        self,
        app: ASGIApp,
        token: str | None,
        local_only: bool,
        headers: Sequence[tuple[bytes, bytes]] = (),
        url_token: bool = True,
        basic: bool = False,
    ) -> None:
        self.app = app
        self.basic = basic
        self.token = token
        self.local_only = local_only
        self.headers = list(headers)
        self.url_token = url_token

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in scope["headers"]}
        if self.local_only and host_of(headers.get("host", "")) not in LOCAL_NAMES:
            await Response("unknown host", status_code=400)(scope, receive, send)
            return
        if self.token is not None:
            query = dict(parse_qsl(scope.get("query_string", b"").decode("latin-1")))
            if self.url_token and self._ok(query.get("token")):
                # Trade the token in the URL for a cookie, and drop it from the address bar.
                rest = urlencode([(k, v) for k, v in query.items() if k != "token"])
                target = scope["path"] + (f"?{rest}" if rest else "")
                redirect = RedirectResponse(target, status_code=303)
                redirect.set_cookie(
                    TOKEN_COOKIE, self.token, httponly=True, samesite="strict", path="/"
                )
                await redirect(scope, receive, send)
                return
            auth = headers.get("authorization", "")
            bearer = auth[7:] if auth.lower().startswith("bearer ") else None
            cookie = _cookie(headers.get("cookie", ""), TOKEN_COOKIE)
            password = _basic_password(auth) if self.basic else None
            if not (self._ok(bearer) or self._ok(cookie) or self._ok(password)):
                hint = "open this page with ?token=... or send " if self.url_token else "send "
                await Response(
                    f"token required: {hint}'Authorization: Bearer ...'",
                    status_code=401,
                    headers={"WWW-Authenticate": "Bearer"},
                )(scope, receive, send)
                return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = list(message.get("headers", [])) + self.headers
            await send(message)

        await self.app(scope, receive, send_with_headers)

    def _ok(self, given: str | None) -> bool:
        if given is None or self.token is None:
            return False
        return hmac.compare_digest(given.encode(), self.token.encode())
