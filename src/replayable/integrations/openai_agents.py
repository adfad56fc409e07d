"""Record and replay agents of the OpenAI Agents SDK (``openai-agents``).

For example (a sketch, not run as a doctest)::

    import replayable as rp
    from agents import Agent, Runner, function_tool
    agent = rp.instrument(Agent(name="shop", tools=[place_order]), side_effects=["place_order"])
    with rp.record(name="shop"):
        Runner.run_sync(agent, "Order two mugs")

``rp.instrument(agent)`` covers the agent and every agent it hands off to:

- its model calls: the OpenAI client under the agent's model (the default Responses model and
  the chat-completions model, streamed or not, whether the model is named by a string or given
  as an object) is instrumented as by :mod:`replayable.integrations.openai`, so each call is an
  ``llm`` boundary (``openai:responses.create``, ``..._stream``, ``openai:chat.completions...``);
  a ``LitellmModel`` goes through :mod:`replayable.integrations.litellm`;
- its function tools: each is a ``tool`` boundary ``agents:function_tool.<name>`` keyed by the
  arguments the model gave; ``side_effects=[...]`` marks those that change the world (replay
  never runs them, ``live=`` refuses them unless ``allow_side_effects=True``). The boundary sits
  inside the SDK's error handling, so a recorded tool error becomes the same tool message again;
- its MCP servers (``MCPServerStdio``, ``MCPServerSse``, ``MCPServerStreamableHttp``...): tool
  listings are ``mcp:tools/list`` and calls ``mcp:tools/call.<tool>``, as in
  :mod:`replayable.integrations.mcp`; a tool changes the world unless the server marks it
  ``readOnlyHint`` (``side_effects=`` / ``safe=`` override). A server connected (``async with``)
  inside a replay never starts: no process is spawned, no connection opened, unless a call to
  it is named in ``live=``. Instrument the server (or the agent holding it) before entering it.

``agent.clone(...)`` returns an agent instrumented like the one cloned (tools it adds
included).

Hosted tools (web search, file search, code interpreter) run on the provider's side and are
inside the recorded model call. Agents reached only through ``agent.as_tool()`` run inside
that tool's boundary (served as a whole in replay).
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import json
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from replayable.boundary import Boundary, boundary
from replayable.context import SESSION
from replayable.errors import UnsupportedClient

__all__ = ["ToolOutputCodec", "instrument", "tool_boundary_name"]

_MARK = "__replayable_agents__"
TESTED = "0.24"


def _load() -> Any:
    try:
        return importlib.import_module("agents")
    except ImportError as exc:
        raise UnsupportedClient(
            "the OpenAI Agents SDK is not installed: pip install 'replayable[agents]'"
        ) from exc


def tool_boundary_name(tool: str) -> str:
    """The boundary name of one function tool: ``agents:function_tool.<name>``."""
    return f"agents:function_tool.{tool}"


class ToolOutputCodec:
    """A tool's return value as JSON: Pydantic models (the SDK's ``ToolOutputText``...) keep
    their class and are rebuilt; JSON values pass through."""

    def encode(self, value: Any) -> Any:
        dump = getattr(value, "model_dump", None)
        if dump is None:
            return value
        cls = type(value)
        return {"$model": f"{cls.__module__}:{cls.__qualname__}", "data": dump(mode="json")}

    def decode(self, data: Any) -> Any:
        if isinstance(data, dict) and set(data) == {"$model", "data"}:
            module, _, name = str(data["$model"]).partition(":")
            cls: Any = importlib.import_module(module)
            for part in name.split("."):
                cls = getattr(cls, part)
            return cls.model_validate(data["data"])
        return data


# The SDK call in flight (its own invoker, context and JSON input); the boundary sees the
# parsed arguments only.
_TOOL: contextvars.ContextVar[tuple[Callable[..., Awaitable[Any]], Any, str] | None] = (
    contextvars.ContextVar("replayable_agents_tool", default=None)
)
_TOOLS: dict[str, Boundary] = {}


def _tool_boundary(name: str, side_effects: bool) -> Boundary:
    b = _TOOLS.get(name)
    if b is None or b.side_effects is not side_effects:

        async def call(**arguments: Any) -> Any:
            real = _TOOL.get()
            if real is None:
                raise UnsupportedClient(f"{tool_boundary_name(name)} called outside its tool")
            impl, ctx, raw = real
            return await impl(ctx, raw)

        deco = boundary(
            name=tool_boundary_name(name),
            kind="tool",
            side_effects=side_effects,
            codec=ToolOutputCodec(),
        )
        b = _TOOLS[name] = getattr(deco(call), "__replayable__")  # noqa: B009
    return b


def _wrap_invoke(name: str, impl: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    async def invoke(ctx: Any, raw: str) -> Any:
        if SESSION.get() is None:
            return await impl(ctx, raw)
        try:
            arguments = json.loads(raw) if raw else {}
        except ValueError:
            return await impl(ctx, raw)
        if not isinstance(arguments, dict):
            return await impl(ctx, raw)
        b = _TOOLS[name]
        token = _TOOL.set((impl, ctx, raw))
        try:
            return await b.wrapper(**arguments)
        finally:
            _TOOL.reset(token)

    functools.update_wrapper(invoke, impl)
    invoke.__replayable_tool__ = name  # type: ignore[attr-defined]
    return invoke


def _instrument_tool(tool: Any, side_effects: bool) -> None:
    _tool_boundary(tool.name, side_effects)
    invoker = tool.on_invoke_tool
    if getattr(invoker, "__replayable_tool__", None) or getattr(
        getattr(invoker, "_invoke_tool_impl", None), "__replayable_tool__", None
    ):
        return
    impl = getattr(invoker, "_invoke_tool_impl", None)
    if impl is not None:
        # Inside the SDK's failure handling: a recorded error becomes the same tool message.
        invoker._invoke_tool_impl = _wrap_invoke(tool.name, impl)
    else:
        tool.on_invoke_tool = _wrap_invoke(tool.name, invoker)


# -- MCP servers ----------------------------------------------------------------------------


def _serving() -> bool:
    session = SESSION.get()
    return session is not None and session.source_events is not None


def _instrument_server(server: Any, side_effects: frozenset[str], safe: frozenset[str]) -> None:
    if _MARK in server.__dict__:
        return
    from mcp.types import ListToolsResult

    from replayable.integrations import _mcp_calls as rp_mcp

    connect, cleanup = server.connect, server.cleanup
    list_tools, call_tool = server.list_tools, server.call_tool

    async def listing(run_context: Any = None, agent: Any = None) -> Any:
        return ListToolsResult(tools=await list_tools(run_context, agent))

    state = rp_mcp.ClientState(
        client=server,
        originals={"call_tool": call_tool, "list_tools": listing},
        side_effects=side_effects,
        safe=safe,
    )
    state.connected = getattr(server, "session", None) is not None
    server.__dict__[_MARK] = state

    async def lazy_connect() -> None:
        state.offline = _serving()
        state.connected = False
        if state.offline:
            state.enter = connect
            return
        await connect()
        state.connected = True

    async def lazy_cleanup() -> None:
        if state.offline and not state.connected:
            return
        state.connected = False
        await cleanup()

    async def recorded_list_tools(run_context: Any = None, agent: Any = None) -> Any:
        if SESSION.get() is None:
            return await list_tools(run_context, agent)
        b = rp_mcp.request_boundary("list_tools")
        token = rp_mcp.CALL.set(rp_mcp.RealCall(state, "list_tools", (run_context, agent), {}))
        try:
            result = await b.wrapper(cursor=None)
        finally:
            rp_mcp.CALL.reset(token)
        state.learn(result)
        return list(result.tools)

    async def recorded_call_tool(
        tool_name: str, arguments: dict[str, Any] | None, meta: dict[str, Any] | None = None
    ) -> Any:
        extra = {"meta": meta} if meta is not None else {}
        if SESSION.get() is None:
            return await call_tool(tool_name, arguments, **extra)
        b = rp_mcp.tool_boundary(tool_name, state.changes_world(tool_name))
        real = rp_mcp.RealCall(state, "call_tool", (tool_name, arguments), extra)
        token = rp_mcp.CALL.set(real)
        try:
            return await b.wrapper(**(arguments or {}))
        finally:
            rp_mcp.CALL.reset(token)

    server.connect = lazy_connect
    server.cleanup = lazy_cleanup
    server.list_tools = recorded_list_tools
    server.call_tool = recorded_call_tool
    for tool in side_effects | safe:  # known before a replay starts, so live= can check them
        rp_mcp.tool_boundary(tool, tool in side_effects)


# -- models ---------------------------------------------------------------------------------


def _instrument_model(model: Any) -> None:
    """Instrument the client under a model of the SDK (idempotent)."""
    if model.__dict__.get(_MARK):
        return
    module = type(model).__module__
    if module.startswith("agents.extensions.models.litellm"):
        rp_litellm = importlib.import_module("replayable.integrations.litellm")
        rp_litellm.instrument(importlib.import_module("litellm"))
    client = getattr(model, "_client", None)
    if client is not None and type(client).__module__.startswith("openai"):
        from replayable.integrations import openai as rp_openai

        rp_openai.instrument(client)
    get_client = getattr(model, "_get_client", None)
    if callable(get_client):
        from replayable.integrations import openai as rp_openai

        def instrumented_client() -> Any:
            return rp_openai.instrument(get_client())

        model._get_client = instrumented_client
    model.__dict__[_MARK] = True


def _hook_models() -> None:
    """Instrument the model the runner resolves for an instrumented agent, once per process."""
    try:
        run_loop = importlib.import_module("agents.run_internal.run_loop")
        original = getattr(run_loop, "get_model")  # noqa: B009
    except (ImportError, AttributeError) as exc:
        raise UnsupportedClient(
            f"this openai-agents version has no run_internal.run_loop.get_model; replayable "
            f"supports openai-agents >= {TESTED} (pip install 'replayable[agents]')"
        ) from exc
    if getattr(original, "__replayable__", False):
        return

    def get_model(agent: Any, run_config: Any) -> Any:
        model = original(agent, run_config)
        if agent.__dict__.get(_MARK):
            _instrument_model(model)
        return model

    get_model.__replayable__ = True  # type: ignore[attr-defined]
    setattr(run_loop, "get_model", get_model)  # noqa: B010


# -- agents ---------------------------------------------------------------------------------


def _instrument_agent(
    sdk: Any, agent: Any, side_effects: frozenset[str], safe: frozenset[str], seen: set[int]
) -> None:
    if id(agent) in seen:
        return
    seen.add(id(agent))
    agent.__dict__[_MARK] = (side_effects, safe)
    for tool in agent.tools:
        if isinstance(tool, sdk.FunctionTool):
            _instrument_tool(tool, tool.name in side_effects and tool.name not in safe)
    for server in agent.mcp_servers:
        _instrument_server(server, side_effects, safe)
    if isinstance(agent.model, sdk.Model):
        _instrument_model(agent.model)
    for h in agent.handoffs:
        target = h
        if isinstance(h, sdk.Handoff):
            ref = getattr(h, "_agent_ref", None)
            target = ref() if ref is not None else None
        if isinstance(target, sdk.Agent):
            _instrument_agent(sdk, target, side_effects, safe, seen)


def _hook_clone(sdk: Any) -> None:
    """``Agent.clone`` (``dataclasses.replace``) makes a new agent without the mark: the clone
    of an instrumented agent is instrumented with the options of the agent cloned. Patched on
    the class once per process; agents never instrumented are untouched."""
    original = sdk.Agent.clone
    if getattr(original, "__replayable__", False):
        return

    def clone(self: Any, **kwargs: Any) -> Any:
        copy = original(self, **kwargs)
        marked = self.__dict__.get(_MARK)
        if isinstance(marked, tuple):
            side_effects, safe = marked
            _instrument_agent(sdk, copy, side_effects, safe, set())
        return copy

    functools.update_wrapper(clone, original)
    clone.__replayable__ = True  # type: ignore[attr-defined]
    sdk.Agent.clone = clone


def instrument(
    obj: Any, *, side_effects: Iterable[str] = (), safe: Iterable[str] = (), **options: Any
) -> Any:
    """Make an ``Agent`` (with its handoffs, tools and MCP servers), an MCP server or a function
    tool of the OpenAI Agents SDK record and replay; returns the same object.

    ``side_effects`` names function or MCP tools that change the world; ``safe`` names MCP
    tools that may run live whatever their annotations.

    For example (a sketch, not run as a doctest)::

        agent = instrument(Agent(name="shop", tools=[place_order]), side_effects=["place_order"])
    """
    if options:
        raise TypeError(f"unexpected option(s) for the Agents SDK: {', '.join(sorted(options))}")
    sdk = _load()
    marked, allowed = frozenset(side_effects), frozenset(safe)
    both = marked & allowed
    if both:
        raise UnsupportedClient(
            f"tools named both in side_effects and in safe: {', '.join(sorted(both))}"
        )
    from agents.mcp import MCPServer

    if isinstance(obj, sdk.Agent):
        _hook_models()
        _hook_clone(sdk)
        _instrument_agent(sdk, obj, marked, allowed, set())
    elif isinstance(obj, MCPServer):
        _instrument_server(obj, marked, allowed)
    elif isinstance(obj, sdk.FunctionTool):
        _instrument_tool(obj, obj.name in marked)
    else:
        raise UnsupportedClient(
            f"cannot instrument {type(obj).__module__}.{type(obj).__qualname__}: "
            "replayable.integrations.openai_agents supports agents.Agent, agents.FunctionTool "
            "and agents.mcp.MCPServer (MCPServerStdio, MCPServerSse, MCPServerStreamableHttp)"
        )
    return obj
