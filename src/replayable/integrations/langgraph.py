"""Record and replay LangGraph graphs node by node.

For example (a sketch, not run as a doctest)::

    import replayable as rp
    app = rp.instrument(builder.compile(name="support"), side_effects=["delete_record"])
    with rp.record(name="support"):
        app.invoke({"messages": [("user", "delete Bob's record")]})

Each node becomes a boundary of kind ``node`` named ``langgraph:<graph>.<node>``: its input is the
state (or ``Send`` payload) the node saw, its output the update it returned, rebuilt in replay as
its own types: LangChain messages, ``Command`` (with ``goto`` / ``Send`` / ``update``), ``Send``,
``Overwrite``. So prebuilt agents (``langchain.agents.create_agent``,
``langgraph.prebuilt.create_react_agent``), whose nodes return ``Command`` / ``Send``, replay too.
Model and tool calls made inside a node nest under it. In replay a node is served from the
recording (its function, and every side effect inside it, never runs) unless it is named in
``live=``, in which case it runs and the calls inside it are served per the usual rules.

The tools of a ``ToolNode`` are instrumented as LangChain tools (``langchain:tool.<name>``);
``side_effects`` names the ones that change the world, so a live tools node still serves them
and ``live=["delete_record"]`` is refused.
"""

from __future__ import annotations

import contextvars
from collections.abc import Iterable
from typing import Any

from replayable._exports import publish
from replayable.boundary import boundary
from replayable.errors import UnsupportedClient
from replayable.integrations import langchain as lc
from replayable.integrations._langchain_codec import CODEC, LangChainCodec, jsonable

__all__ = ["MessageCodec", "instrument"]

# The real (state, config) of the node call in flight; the boundary itself sees a JSON view.
_CALL: contextvars.ContextVar[tuple[Any, Any] | None] = contextvars.ContextVar(
    "replayable_lg_call", default=None
)
_SKIP = frozenset({"__start__", "__end__"})

MessageCodec = LangChainCodec
"""JSON for node updates (messages, ``Command``, ``Send``...) and back; see
:class:`replayable.integrations.langchain.LangChainCodec`."""


def _state_view(state: Any) -> Any:
    """The state as keyed: messages without their random ids, anything opaque as a marker."""
    return jsonable(state)


def _wrap(graph_name: str, node: str, inner: Any) -> Any:
    from langchain_core.runnables import RunnableLambda

    name = f"langgraph:{graph_name}.{node}"
    codec = CODEC

    @boundary(name=name, kind="node", codec=codec)
    def run_node(state: Any) -> Any:
        real_state, config = _CALL.get() or (state, None)
        return inner.invoke(real_state, config)

    @boundary(name=name, kind="node", codec=codec)
    async def arun_node(state: Any) -> Any:
        real_state, config = _CALL.get() or (state, None)
        return await inner.ainvoke(real_state, config)

    def call(state: Any, config: Any) -> Any:
        token = _CALL.set((state, config))
        try:
            return run_node(_state_view(state))
        finally:
            _CALL.reset(token)

    async def acall(state: Any, config: Any) -> Any:
        token = _CALL.set((state, config))
        try:
            return await arun_node(_state_view(state))
        finally:
            _CALL.reset(token)

    wrapped = RunnableLambda(call, afunc=acall, name=node)
    wrapped.__replayable_inner__ = inner  # type: ignore[attr-defined]
    return wrapped


def _tool_nodes(graph: Any) -> list[Any]:
    from langgraph.prebuilt import ToolNode

    nodes = graph.nodes.values()
    found = []
    for spec in nodes:
        inner = getattr(spec, "runnable", None) or getattr(spec, "bound", None)
        inner = getattr(inner, "__replayable_inner__", inner)
        if isinstance(inner, ToolNode):
            found.append(inner)
    return found


def _instrument_tools(graph: Any, side_effects: Iterable[str]) -> None:
    marked = set(side_effects)
    tools = [t for node in _tool_nodes(graph) for t in node.tools_by_name.values()]
    unknown = marked - {t.name for t in tools}
    if unknown:
        known = ", ".join(sorted(t.name for t in tools)) or "none"
        raise UnsupportedClient(
            f"side_effects names no tool of this graph's tool nodes: "
            f"{', '.join(sorted(unknown))} (tools: {known}); for tools called from your own "
            "nodes use @replayable.boundary(kind='tool', side_effects=True)"
        )
    for tool in tools:
        lc.instrument_tool(tool, side_effects=tool.name in marked)


def instrument(
    graph: Any, *, side_effects: Iterable[str] = (), name: str | None = None, **options: Any
) -> Any:
    """Make every node of a LangGraph graph a ``node`` boundary; returns the same graph.

    Accepts a ``StateGraph`` builder (before ``compile()``) or a compiled graph, including the
    prebuilt agents. ``name`` defaults to the graph's own name (``"LangGraph"`` unless set at
    compile time). ``side_effects`` names tools of the graph's ``ToolNode`` s that change the
    world.

    For example (a sketch, not run as a doctest)::

        app = instrument(create_agent(model, tools=[search, place_order]),
                         side_effects=["place_order"])
    """
    if options:
        raise TypeError(f"unexpected option(s) for LangGraph: {', '.join(sorted(options))}")
    try:
        import langgraph  # noqa: F401
    except ImportError as exc:
        raise UnsupportedClient(
            "LangGraph is not installed: pip install 'replayable[langgraph]'"
        ) from exc
    from langgraph.graph import StateGraph
    from langgraph.pregel import Pregel

    if not isinstance(graph, (StateGraph, Pregel)):
        raise UnsupportedClient(
            f"cannot instrument {type(graph).__module__}.{type(graph).__qualname__}: "
            "replayable.integrations.langgraph supports langgraph.graph.StateGraph and compiled "
            "graphs (langgraph.pregel.Pregel)"
        )
    _instrument_tools(graph, side_effects)
    if isinstance(graph, StateGraph):
        gname = name or "LangGraph"
        for node, spec in list(graph.nodes.items()):
            if node in _SKIP or hasattr(spec.runnable, "__replayable_inner__"):
                continue
            spec.runnable = _wrap(gname, node, spec.runnable)
        return graph
    gname = name or str(getattr(graph, "name", None) or "LangGraph")
    for node, pnode in graph.nodes.items():
        if node in _SKIP or pnode.bound is None or hasattr(pnode.bound, "__replayable_inner__"):
            continue
        if type(pnode.bound).__name__ == "RunnableCallable" and node.startswith("__"):
            continue
        pnode.bound = _wrap(gname, node, pnode.bound)
        pnode.__dict__.pop("node", None)
    return graph


publish(globals())
