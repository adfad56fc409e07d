"""Record and replay MCP (Model Context Protocol) client calls, without the server in replay.

For example (a sketch, not run as a doctest)::

    import replayable as rp
    from mcp import Client, StdioServerParameters
    server = StdioServerParameters(command="python", args=["shop_server.py"])
    async with rp.instrument(Client(server), side_effects=["place_order"]) as client:
        await client.call_tool("place_order", {"item": "mug", "quantity": 2})

Each request becomes a boundary: ``mcp:tools/call.<tool>`` (kind ``tool``, one boundary per tool
so ``live=`` and ``side_effects`` work per tool, keyed by the tool's arguments),
``mcp:tools/list``, ``mcp:resources/read``, ``mcp:resources/list``, ``mcp:prompts/get`` and
``mcp:prompts/list`` (kind ``retrieval``). Replay returns the SDK's own result types.

Side effects: a tool changes the world unless the server annotates it ``readOnlyHint=True``
(MCP's default for an unannotated tool is "may write"); ``side_effects=[...]`` marks tools as
changing the world whatever their annotations, ``safe=[...]`` marks tools as safe to run live.

An instrumented ``mcp.Client`` entered (``async with``) inside a replay never connects: the
server process is not spawned and no connection is opened. Only a call named in ``live=``
connects, on demand. A bare ``ClientSession`` can be instrumented too, but its transport is
yours: open it outside the replay, or use a ``Client``.
"""

from __future__ import annotations

import importlib
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from replayable import _follow
from replayable._exports import publish
from replayable._linked import Policy
from replayable._propagation import BAGGAGE
from replayable._remote import FOLLOW_HEADER
from replayable.context import SESSION
from replayable.errors import ReplayableError, UnsupportedClient
from replayable.integrations._mcp_calls import (
    CALL,
    METHODS,
    ClientState,
    RealCall,
    ResultCodec,
    request_boundary,
    tool_boundary,
    tool_boundary_name,
)

__all__ = ["ResultCodec", "instrument", "serve", "tool_boundary_name"]

_MARK = "__replayable_mcp__"


def _wrap_tool_call(state: ClientState) -> Callable[..., Awaitable[Any]]:
    original = state.originals["call_tool"]

    async def call_tool(
        name: str, arguments: dict[str, Any] | None = None, *args: Any, **kwargs: Any
    ) -> Any:
        if SESSION.get() is None:
            return await original(name, arguments, *args, **kwargs)
        b = tool_boundary(name, state.changes_world(name))
        token = CALL.set(RealCall(state, "call_tool", (name, arguments, *args), kwargs))
        try:
            return await b.wrapper(**(arguments or {}))
        finally:
            CALL.reset(token)

    return call_tool


def _wrap_request(state: ClientState, method: str) -> Callable[..., Awaitable[Any]]:
    original = state.originals[method]
    keyed = METHODS[method][2]

    async def request(*args: Any, **kwargs: Any) -> Any:
        if SESSION.get() is None:
            result = await original(*args, **kwargs)
        else:
            b = request_boundary(method)
            token = CALL.set(RealCall(state, method, args, kwargs))
            try:
                result = await b.wrapper(**keyed(*args, **kwargs))
            finally:
                CALL.reset(token)
        if method == "list_tools":
            state.learn(result)
        return result

    return request


def _offline_class(cls: type) -> type:
    """A subclass of ``mcp.Client`` whose ``async with`` does not connect inside a replay."""
    cached = cls.__dict__.get("__replayable_offline__")
    if cached is not None:
        return cached  # type: ignore[no-any-return]
    base_enter = cls.__aenter__  # type: ignore[attr-defined]
    base_exit = cls.__aexit__  # type: ignore[attr-defined]

    async def __aenter__(self: Any) -> Any:
        state: ClientState = self.__dict__[_MARK]
        session = SESSION.get()
        state.offline = session is not None and session.source_events is not None
        state.connected = False
        if state.offline:
            state.enter = lambda: base_enter(self)
            return self
        await base_enter(self)
        state.connected = True
        return self

    async def __aexit__(self: Any, *exc: Any) -> Any:
        state: ClientState = self.__dict__[_MARK]
        if not state.connected:
            return None
        state.connected = False
        return await base_exit(self, *exc)

    offline = type(
        cls.__name__,
        (cls,),
        {"__aenter__": __aenter__, "__aexit__": __aexit__, "__module__": cls.__module__},
    )
    cls.__replayable_offline__ = offline  # type: ignore[attr-defined]
    offline.__replayable_offline__ = offline  # type: ignore[attr-defined]
    return offline


def instrument(
    obj: Any, *, side_effects: Iterable[str] = (), safe: Iterable[str] = (), **options: Any
) -> Any:
    """Record an ``mcp.Client`` (or ``ClientSession``)'s requests; returns the same object.

    ``side_effects`` names tools that change the world (replay never runs them, ``live=``
    refuses them); ``safe`` names tools that may run live whatever their annotations.

    For example (a sketch, not run as a doctest)::

        client = instrument(Client(server), side_effects=["place_order"], safe=["check_stock"])
    """
    if options:
        raise TypeError(f"unexpected option(s) for MCP: {', '.join(sorted(options))}")
    try:
        mcp = importlib.import_module("mcp")
    except ImportError as exc:
        raise UnsupportedClient("MCP is not installed: pip install 'replayable[mcp]'") from exc
    marked, allowed = frozenset(side_effects), frozenset(safe)
    both = marked & allowed
    if both:
        raise UnsupportedClient(
            f"tools named both in side_effects and in safe: {', '.join(sorted(both))}"
        )
    if not isinstance(obj, (mcp.Client, mcp.ClientSession)):
        raise UnsupportedClient(
            f"cannot instrument {type(obj).__module__}.{type(obj).__qualname__}: "
            "replayable.integrations.mcp supports mcp.Client and mcp.ClientSession"
        )
    if _MARK in obj.__dict__:
        raise UnsupportedClient("this MCP client is instrumented already")
    methods = ["call_tool", *METHODS]
    state = ClientState(
        client=obj,
        originals={m: getattr(obj, m) for m in methods},
        side_effects=marked,
        safe=allowed,
    )
    obj.__dict__[_MARK] = state
    obj.call_tool = _wrap_tool_call(state)
    for method in METHODS:
        setattr(obj, method, _wrap_request(state, method))
    for tool in marked | allowed:  # known before any replay starts, so live= can check them
        tool_boundary(tool, tool in marked)
    if isinstance(obj, mcp.Client):
        obj.__class__ = _offline_class(type(obj))
    return obj


def _answers_probes(policy: Policy) -> Callable[[Any, Any], Awaitable[Any]]:
    """A server middleware answering a follow probe (a ``tools/list`` naming a recorded caller
    step in its ``_meta``) with the listing and, when this server follows and holds a run
    linked to that step, that run's id in the listing's ``_meta``. The probe runs no tool;
    every other message goes on untouched."""

    async def middleware(ctx: Any, call_next: Callable[[Any], Awaitable[Any]]) -> Any:
        result = await call_next(ctx)
        meta = getattr(ctx, "meta", None)
        if (
            getattr(ctx, "method", None) != "tools/list"
            or not isinstance(meta, dict)
            or meta.get(_follow.PROBE_HEADER) != _follow.PROBE_VALUE
        ):
            return result
        keys = ("traceparent", BAGGAGE, _follow.PROBE_HEADER)
        headers = {k: v for k in keys if isinstance(v := meta.get(k), str)}
        decision = policy.decide(headers)
        if decision is None or decision.action != "probe" or decision.linked is None:
            return result
        ack = {_follow.LINKED_HEADER: decision.linked.id}
        if isinstance(result, dict):
            return {**result, "_meta": {**(result.get("_meta") or {}), **ack}}
        result.meta = {**(getattr(result, "meta", None) or {}), **ack}
        return result

    return middleware


def _tool_error(exc: Exception) -> Any:
    """The error result the MCP SDK answers for a tool that raised ``exc`` (an ``MCPError``, a
    protocol error, is raised again), made here so the linked run's id and a follow report
    can go in its ``_meta``."""
    if isinstance(exc, importlib.import_module("mcp.shared.exceptions").MCPError):
        raise exc
    types = importlib.import_module("mcp.types")
    text = types.TextContent(type="text", text=str(exc))
    return types.CallToolResult(content=[text], is_error=True)


def serve(
    server: Any,
    *,
    store: Any = None,
    service: str | None = None,
    requests: str = "with-context",
    follow: bool = False,
) -> Any:
    """Make an MCP server (``mcp.server.mcpserver.MCPServer``) link its tool calls to their
    callers: a ``tools/call`` whose ``_meta`` carries a caller's context (``traceparent`` and
    replayable's ``baggage`` member, added by an instrumented client inside a run) runs as a
    run linked to the calling step, as :mod:`replayable.integrations.web` does for HTTP; with
    ``follow=True`` (a local replay instance) a follow request replays the linked run and
    returns its divergences in the result's ``_meta``, and a follow probe (a ``tools/list``
    naming the caller's recorded step, see :mod:`replayable._follow`) is answered with the run
    it would replay; a follow request or probe it cannot honour is refused or left
    unacknowledged, and no tool runs for it. Returns the server.

    For example (a sketch, not run as a doctest)::

        shop = serve(MCPServer("shop"), service="shop")
        app = shop.streamable_http_app()
    """
    policy = Policy(store, service, requests, follow)
    original = server.call_tool

    async def call_tool(name: str, arguments: dict[str, Any], context: Any = None) -> Any:
        request = getattr(context, "request_context", None)
        meta = getattr(request, "meta", None) or {}
        headers = {k: v for k in ("traceparent", BAGGAGE) if isinstance(v := meta.get(k), str)}
        decision = policy.decide(headers) if headers or policy.requests == "all" else None
        if decision is None:
            return await original(name, arguments, context)
        if decision.action == "record":
            try:
                async with policy.recording(decision, "tools/call", name) as run:
                    result = await original(name, arguments, context)
            except Exception as exc:  # the run keeps the error; the caller still gets the link
                result = _tool_error(exc)
            if decision.links:
                result.meta = {**(result.meta or {}), _follow.LINKED_HEADER: run.id}
            return result
        if decision.action != "follow":  # a follow request this server cannot honour
            raise ReplayableError(f"tool {name!r} not run: {decision.reason}")
        from replayable._linked import follow_header

        r = policy.replaying(decision)
        try:
            async with r:
                result = await original(name, arguments, context)
        except Exception as exc:  # a divergence stopped the tool: the caller still hears of it
            result = _tool_error(exc)
        _, value = follow_header(policy.service, r.run, r.divergences)
        result.meta = {**(result.meta or {}), FOLLOW_HEADER: value, _follow.LINKED_HEADER: r.run.id}
        return result

    server.call_tool = call_tool
    server.middleware.append(_answers_probes(policy))
    return server


publish(globals())
