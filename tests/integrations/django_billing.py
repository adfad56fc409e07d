"""The billing service as a Django project (settings, one URL), served by wsgiref on
127.0.0.1 with replayable's WSGI middleware around Django's WSGI application."""

from __future__ import annotations

import threading
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from tests.integrations import services

from replayable.integrations.web import WSGIMiddleware

DB: dict[str, str] = {}
"""Where the view writes charges (set by the test)."""


def _configure() -> None:
    from django.conf import settings

    if not settings.configured:
        settings.configure(
            DEBUG=False,
            SECRET_KEY="tests-only-not-a-secret",
            ROOT_URLCONF=__name__,
            ALLOWED_HOSTS=["127.0.0.1", "localhost"],
            MIDDLEWARE=[],
            INSTALLED_APPS=[],
            USE_TZ=True,
        )
        import django

        django.setup()


def charge_view(request: Any) -> Any:
    """POST /charge: billing's handler."""
    from django.http import HttpResponseNotAllowed, JsonResponse

    if request.method != "POST":
        return HttpResponseNotAllowed(["POST"])
    body = orjson.loads(request.body)
    return JsonResponse(services.charge(DB["path"], str(body["user"]), int(body["cents"])))


def _urls() -> list[Any]:
    from django.urls import path

    return [path("charge", charge_view)]


class _Quiet(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        pass


class Django:
    """Django's WSGI application wrapped by replayable's middleware, served by wsgiref on
    127.0.0.1 in a thread (``with`` starts and stops it)."""

    def __init__(self, store: Any, port: int = 0, **middleware: Any) -> None:
        _configure()
        from django.core.wsgi import get_wsgi_application

        app = WSGIMiddleware(get_wsgi_application(), store=store, service="billing", **middleware)
        self.server: WSGIServer = make_server("127.0.0.1", port, app, handler_class=_Quiet)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Django:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


def __getattr__(name: str) -> Any:
    if name == "urlpatterns":  # Django reads the URLs when the first request comes
        return _urls()
    raise AttributeError(name)
