"""Requests to other services (httpx, sync and async, and requests) as ``remote`` steps.

For example (a sketch, not run as a doctest)::

    import httpx, replayable as rp
    billing = rp.instrument(httpx.Client(base_url="http://billing:8000"), service="billing")
    with rp.record(name="support"):
        billing.post("/charge", json={"user": "bob", "cents": 500})  # http:POST billing/charge

Inside a run, each request made through an instrumented client is a boundary of kind ``remote``
named ``http:METHOD host/path`` (``service=`` replaces the host, ``name=`` a function of
``(method, host, path)`` names it yourself), keyed by method, path, query and body; its headers
are stored (volatile ones like ``date``, ``user-agent`` or ``traceparent`` left out, credentials
redacted) but not keyed. The response is recorded and served in replay as a real
``httpx.Response`` / ``requests.Response``: the other service is not contacted. A request that
is not ``GET``/``HEAD``/``OPTIONS``/``TRACE`` has side effects (``side_effects=[...]`` lists
the methods that do instead). Every request made inside a run carries W3C ``traceparent`` and
replayable's ``baggage`` member, so a callee running :mod:`replayable.integrations.web`
middleware links its run to the calling step (``propagate_only=True``: headers, no step).
Outside a run the client is untouched.

The seams are the libraries' own: an httpx transport wrapping the client's transport (and its
mounts), a requests adapter wrapping each mounted adapter. For a client you build yourself,
:func:`transport` / :func:`async_transport` wrap a transport for ``httpx.Client(transport=...)``.
``rp.instrument(httpx)`` / ``rp.instrument(requests)`` (the modules) instrument every client
created from then on: the process-wide switch.
"""

from __future__ import annotations

import importlib
import io
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from replayable import _propagation as prop
from replayable import _remote
from replayable.context import SESSION
from replayable.errors import UnsupportedClient

__all__ = ["async_transport", "instrument", "transport", "uninstrument"]

_MARK = "__replayable_http__"


@dataclass(frozen=True, slots=True)
class Options:
    """How an instrumented client names and treats its requests."""

    service: str | None = None
    name: Callable[[str, str, str], str] | None = None
    side_effects: frozenset[str] | None = None
    propagate_only: bool = False

    def changes_world(self, method: str) -> bool | None:
        if self.side_effects is None:
            return None
        return method.upper() in self.side_effects

    def boundary_name(self, req: _remote.Request) -> str | None:
        if self.name is None:
            return None
        return self.name(req.method, self.service or req.host, req.path)

    def step(self, req: _remote.Request) -> dict[str, Any]:
        """The remote step's options for ``req`` (what ``_remote.call_sync`` / ``call_async``
        take beside the request and the sender)."""
        return {
            "service": self.service,
            "name": self.boundary_name(req),
            "side_effects": self.changes_world(req.method),
        }


def _merge(headers: Any, extra: dict[str, str]) -> None:
    for k, v in extra.items():
        headers[k] = prop.merge_baggage(headers.get(k), v) if k == prop.BAGGAGE else v


# -- httpx --------------------------------------------------------------------------------------


def _httpx_request(request: Any) -> _remote.Request:
    url = request.url
    return _remote.Request(
        request.method,
        url.netloc.decode("ascii"),
        url.path,
        url.query.decode("ascii"),
        request.read(),
        list(request.headers.multi_items()),
    )


def _httpx_response(data: dict[str, Any], request: Any) -> Any:
    httpx = importlib.import_module("httpx")
    status, headers, body, reason = _remote.response_parts(data)
    ext = {"reason_phrase": reason.encode("latin-1", "replace")} if reason else {}
    return httpx.Response(status, headers=headers, content=body, request=request, extensions=ext)


def _probe_request(request: Any, extra: dict[str, str]) -> Any:
    """The follow probe for ``request``: ``OPTIONS`` on its URL, with only the context
    headers (no body, none of the request's own headers)."""
    httpx = importlib.import_module("httpx")
    return httpx.Request("OPTIONS", request.url, headers=extra)


def _recorded(resp: Any, body: bytes) -> _remote.Response:
    return _remote.Response(
        resp.status_code, list(resp.headers.multi_items()), body, resp.reason_phrase
    )


class _SyncTransport:
    """An httpx transport: the request as a remote step around the wrapped transport."""

    def __init__(self, inner: Any, options: Options) -> None:
        self.inner = inner
        self.options = options

    def handle_request(self, request: Any) -> Any:
        if SESSION.get() is None:
            return self.inner.handle_request(request)
        opts = self.options
        if opts.propagate_only:
            _merge(request.headers, _remote.outgoing(opts.service)[0])
            return self.inner.handle_request(request)

        def send(extra: dict[str, str]) -> _remote.Response:
            _merge(request.headers, extra)
            resp = self.inner.handle_request(request)
            try:
                body = resp.read()
            finally:
                resp.close()
            return _recorded(resp, body)

        def probe(extra: dict[str, str]) -> _remote.Response:
            resp = self.inner.handle_request(_probe_request(request, extra))
            try:
                body = resp.read()
            finally:
                resp.close()
            return _recorded(resp, body)

        req = _httpx_request(request)
        data = _remote.call_sync(req, send, probe=probe, **opts.step(req))
        return _httpx_response(data, request)

    def close(self) -> None:
        self.inner.close()

    def __enter__(self) -> Any:
        self.inner.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.inner.__exit__(*exc)


class _AsyncTransport:
    """The async twin of :class:`_SyncTransport`."""

    def __init__(self, inner: Any, options: Options) -> None:
        self.inner = inner
        self.options = options

    async def handle_async_request(self, request: Any) -> Any:
        if SESSION.get() is None:
            return await self.inner.handle_async_request(request)
        opts = self.options
        if opts.propagate_only:
            _merge(request.headers, _remote.outgoing(opts.service)[0])
            return await self.inner.handle_async_request(request)

        async def send(extra: dict[str, str]) -> _remote.Response:
            _merge(request.headers, extra)
            resp = await self.inner.handle_async_request(request)
            try:
                body = await resp.aread()
            finally:
                await resp.aclose()
            return _recorded(resp, body)

        async def probe(extra: dict[str, str]) -> _remote.Response:
            resp = await self.inner.handle_async_request(_probe_request(request, extra))
            try:
                body = await resp.aread()
            finally:
                await resp.aclose()
            return _recorded(resp, body)

        req = _remote.Request(
            request.method,
            request.url.netloc.decode("ascii"),
            request.url.path,
            request.url.query.decode("ascii"),
            await request.aread(),
            list(request.headers.multi_items()),
        )
        data = await _remote.call_async(req, send, probe=probe, **opts.step(req))
        return _httpx_response(data, request)

    async def aclose(self) -> None:
        await self.inner.aclose()

    async def __aenter__(self) -> Any:
        await self.inner.__aenter__()
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.inner.__aexit__(*exc)


def _transport_classes() -> tuple[type, type]:
    httpx = importlib.import_module("httpx")
    cached = globals().get("_CLASSES")
    if cached is None:
        sync = type("ReplayableTransport", (_SyncTransport, httpx.BaseTransport), {})
        asy = type("AsyncReplayableTransport", (_AsyncTransport, httpx.AsyncBaseTransport), {})
        cached = globals()["_CLASSES"] = (sync, asy)
    return cached


def transport(inner: Any = None, **options: Any) -> Any:
    """An ``httpx.BaseTransport`` that makes each request a remote step (``inner``: the
    transport to wrap, default ``httpx.HTTPTransport()``); options as for :func:`instrument`."""
    httpx = importlib.import_module("httpx")
    return _transport_classes()[0](inner or httpx.HTTPTransport(), Options(**options))


def async_transport(inner: Any = None, **options: Any) -> Any:
    """The ``httpx.AsyncBaseTransport`` twin of :func:`transport`."""
    httpx = importlib.import_module("httpx")
    return _transport_classes()[1](inner or httpx.AsyncHTTPTransport(), Options(**options))


def _wrap_httpx(client: Any, options: Options) -> Any:
    httpx = importlib.import_module("httpx")
    sync, asy = _transport_classes()
    cls = asy if isinstance(client, httpx.AsyncClient) else sync
    if isinstance(client._transport, (sync, asy)):
        raise UnsupportedClient("this httpx client is instrumented already")
    client._transport = cls(client._transport, options)
    client._mounts = {
        pattern: (t if t is None else cls(t, options)) for pattern, t in client._mounts.items()
    }
    return client


# -- requests -----------------------------------------------------------------------------------


def _adapter_class() -> type:
    cached = globals().get("_ADAPTER")
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    adapters = importlib.import_module("requests.adapters")

    class ReplayableAdapter(adapters.BaseAdapter):  # type: ignore[misc,name-defined]
        """A requests adapter: the request as a remote step around the wrapped adapter."""

        def __init__(self, inner: Any, options: Options) -> None:
            super().__init__()
            self.inner = inner
            self.options = options

        def send(self, request: Any, *args: Any, **kwargs: Any) -> Any:
            if SESSION.get() is None:
                return self.inner.send(request, *args, **kwargs)
            opts = self.options
            if opts.propagate_only:
                _merge(request.headers, _remote.outgoing(opts.service)[0])
                return self.inner.send(request, *args, **kwargs)
            kwargs["stream"] = False

            def send(extra: dict[str, str]) -> _remote.Response:
                _merge(request.headers, extra)
                resp = self.inner.send(request, *args, **kwargs)
                body = resp.content
                return _remote.Response(
                    resp.status_code, list(resp.headers.items()), body, resp.reason or ""
                )

            def probe(extra: dict[str, str]) -> _remote.Response:
                models = importlib.import_module("requests.models")
                prepared = models.PreparedRequest()
                prepared.prepare(method="OPTIONS", url=request.url, headers=extra)
                resp = self.inner.send(prepared, *args, **kwargs)
                return _remote.Response(
                    resp.status_code, list(resp.headers.items()), resp.content, resp.reason or ""
                )

            from urllib.parse import urlsplit

            url = urlsplit(request.url)
            body = request.body or b""
            req = _remote.Request(
                request.method,
                url.netloc,
                url.path,
                url.query,
                body.encode("utf-8") if isinstance(body, str) else bytes(body),
                list(request.headers.items()),
            )
            data = _remote.call_sync(req, send, probe=probe, **opts.step(req))
            return _requests_response(data, request)

        def close(self) -> None:
            self.inner.close()

    globals()["_ADAPTER"] = ReplayableAdapter
    return ReplayableAdapter


def _requests_response(data: dict[str, Any], request: Any) -> Any:
    adapters = importlib.import_module("requests.adapters")
    urllib3 = importlib.import_module("urllib3")
    status, headers, body, reason = _remote.response_parts(data)
    raw = urllib3.HTTPResponse(
        body=io.BytesIO(body),
        headers=headers,
        status=status,
        reason=reason,
        preload_content=False,
        decode_content=False,
    )
    return adapters.HTTPAdapter().build_response(request, raw)


def _wrap_requests(session: Any, options: Options) -> Any:
    cls = _adapter_class()
    if any(isinstance(a, cls) for a in session.adapters.values()):
        raise UnsupportedClient("this requests session is instrumented already")
    for prefix, adapter in list(session.adapters.items()):
        session.mount(prefix, cls(adapter, options))
    return session


# -- the process-wide switch ---------------------------------------------------------------------

_PATCHED: dict[str, Options] = {}
_PATCH_LOCK = threading.Lock()


def _patch_init(cls: type, wrap: Callable[[Any, Options], Any], options: Options) -> None:
    original = cls.__init__  # type: ignore[misc]

    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        original(self, *args, **kwargs)
        wrap(self, options)

    __init__.__wrapped__ = original  # type: ignore[attr-defined]
    cls.__init__ = __init__  # type: ignore[misc]


def _instrument_module(module: Any, options: Options) -> Any:
    with _PATCH_LOCK:
        if module.__name__ in _PATCHED:
            raise UnsupportedClient(f"{module.__name__} is instrumented process-wide already")
        _PATCHED[module.__name__] = options
        if module.__name__ == "httpx":
            _patch_init(module.Client, _wrap_httpx, options)
            _patch_init(module.AsyncClient, _wrap_httpx, options)
        else:
            _patch_init(module.Session, _wrap_requests, options)
    return module


def uninstrument(module: Any) -> None:
    """Undo ``instrument(httpx)`` / ``instrument(requests)``: clients created from now on are
    plain (those created meanwhile stay instrumented)."""
    with _PATCH_LOCK:
        if _PATCHED.pop(module.__name__, None) is None:
            return
        classes = (
            (module.Client, module.AsyncClient) if module.__name__ == "httpx" else (module.Session,)
        )
        for cls in classes:
            cls.__init__ = cls.__init__.__wrapped__


def instrument(
    obj: Any,
    *,
    side_effects: Iterable[str] = (),
    service: str | None = None,
    name: Callable[[str, str, str], str] | None = None,
    propagate_only: bool = False,
    **options: Any,
) -> Any:
    """Make an ``httpx.Client``, ``httpx.AsyncClient`` or ``requests.Session`` record its
    requests as remote steps (in place; returns it). Passed the ``httpx`` or ``requests``
    module, instrument every client created from now on.

    ``service`` names the other side in step names (default: the URL's host and port);
    ``name(method, host, path)`` names steps yourself; ``side_effects`` lists the HTTP methods
    that change the world (default: every method but GET, HEAD, OPTIONS and TRACE);
    ``propagate_only=True`` adds
    the context headers without making steps.

    For example (a sketch, not run as a doctest)::

        client = instrument(httpx.Client(), service="billing")
    """
    if options:
        raise TypeError(f"unexpected option(s) for HTTP: {', '.join(sorted(options))}")
    methods = frozenset(m.upper() for m in side_effects or ())
    opts = Options(service, name, methods or None, propagate_only)
    mod = getattr(obj, "__name__", None) if isinstance(obj, type(io)) else None
    if mod in ("httpx", "requests"):
        return _instrument_module(obj, opts)
    top = type(obj).__module__.split(".", 1)[0]
    if top == "httpx":
        httpx = importlib.import_module("httpx")
        if isinstance(obj, (httpx.Client, httpx.AsyncClient)):
            return _wrap_httpx(obj, opts)
    if top == "requests":
        requests = importlib.import_module("requests")
        if isinstance(obj, requests.Session):
            return _wrap_requests(obj, opts)
    raise UnsupportedClient(
        f"cannot instrument {type(obj).__module__}.{type(obj).__qualname__}: "
        "replayable.integrations.http supports httpx.Client, httpx.AsyncClient, "
        "requests.Session and the httpx and requests modules"
    )
