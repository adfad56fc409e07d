"""Record and replay LangGraph graphs node by node.

>>> from replayable.integrations.langgraph import instrument
>>> app = instrument(builder).compile()        # or instrument(builder.compile())
>>> with rp.record(name="support"):
...     app.invoke({"messages": [("user", "delete Bob's record")]})

Each node becomes a boundary of kind ``node`` named ``langgraph:<graph>.<node>``: its input is the
state the node saw, its output the update it returned (LangChain messages kept as messages).
Model and tool calls made inside a node nest under it. In replay a node is served from the
recording (its function, and every side effect inside it, never runs) unless it is named in
``live=``, in which case it runs and the calls inside it are served per the usual rules.
"""

from __future__ import annotations

import contextvars
import importlib
from collections.abc import Iterable
from typing import Any

from replayable.boundary import boundary
from replayable.errors import UnsupportedClient

__all__ = ["MessageCodec", "instrument"]

# The real (state, config) of the node call in flight; the boundary itself sees a JSON view.
_CALL: contextvars.ContextVar[tuple[Any, Any] | None] = contextvars.ContextVar(
    "replayable_lg_call", default=None
)
_SKIP = frozenset({"__start__", "__end__"})


class MessageCodec:
    """JSON for node updates: LangChain messages become ``{"$message": ...}`` and back."""

    def encode(self, value: Any) -> Any:
        from langchain_core.messages import BaseMessage, message_to_dict

        if isinstance(value, BaseMessage):
            return {"$message": message_to_dict(value)}
        if isinstance(value, dict):
            return {k: self.encode(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.encode(v) for v in value]
        return value

    def decode(self, data: Any) -> Any:
        if isinstance(data, dict):
            if set(data) == {"$message"}:
                from langchain_core.messages import messages_from_dict

                return messages_from_dict([data["$message"]])[0]
            return {k: self.decode(v) for k, v in data.items()}
        if isinstance(data, list):
            return [self.decode(v) for v in data]
        return data


def _state_view(codec: MessageCodec, state: Any) -> Any:
    """The state as recorded: messages as dicts without their random ``id``."""
    view = codec.encode(state)

    def strip(value: Any) -> Any:
        if isinstance(value, dict):
            if set(value) == {"$message"}:
                msg = value["$message"]
                data = {k: v for k, v in (msg.get("data") or {}).items() if k != "id"}
                return {"$message": {**msg, "data": data}}
            return {k: strip(v) for k, v in value.items()}
        if isinstance(value, list):
            return [strip(v) for v in value]
        return value

    return strip(view)


def _wrap(graph_name: str, node: str, inner: Any) -> Any:
    from langchain_core.runnables import RunnableLambda

    name = f"langgraph:{graph_name}.{node}"
    codec = MessageCodec()

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
            return run_node(_state_view(codec, state))
        finally:
            _CALL.reset(token)

    async def acall(state: Any, config: Any) -> Any:
        token = _CALL.set((state, config))
        try:
            return await arun_node(_state_view(codec, state))
        finally:
            _CALL.reset(token)

    wrapped = RunnableLambda(call, afunc=acall, name=node)
    wrapped.__replayable_inner__ = inner  # type: ignore[attr-defined]
    return wrapped


def instrument(graph: Any, *, name: str | None = None, side_effects: Iterable[str] = ()) -> Any:
    """Make every node of a LangGraph graph a ``node`` boundary; returns the same graph.

    Accepts a ``StateGraph`` builder (before ``compile()``) or a compiled graph. ``name``
    defaults to the graph's own name (``"LangGraph"`` unless set at compile time).

    >>> app = instrument(builder.compile(name="support"))
    """
    if tuple(side_effects):
        raise UnsupportedClient(
            "side_effects= is not supported for LangGraph graphs yet: mark the tool functions "
            "with @replayable.boundary(kind='tool', side_effects=True)"
        )
    try:
        importlib.import_module("langgraph")
    except ImportError as exc:
        raise UnsupportedClient(
            "LangGraph is not installed: pip install 'replayable[langgraph]'"
        ) from exc
    from langgraph.graph import StateGraph
    from langgraph.pregel import Pregel

    if isinstance(graph, StateGraph):
        gname = name or "LangGraph"
        for node, spec in list(graph.nodes.items()):
            if node in _SKIP or hasattr(spec.runnable, "__replayable_inner__"):
                continue
            spec.runnable = _wrap(gname, node, spec.runnable)
        return graph
    if isinstance(graph, Pregel):
        gname = name or str(getattr(graph, "name", None) or "LangGraph")
        for node, pnode in graph.nodes.items():
            if node in _SKIP or pnode.bound is None or hasattr(pnode.bound, "__replayable_inner__"):
                continue
            if type(pnode.bound).__name__ == "RunnableCallable" and node.startswith("__"):
                continue
            pnode.bound = _wrap(gname, node, pnode.bound)
            pnode.__dict__.pop("node", None)
        return graph
    raise UnsupportedClient(
        f"cannot instrument {type(graph).__module__}.{type(graph).__qualname__}: "
        "replayable.integrations.langgraph supports langgraph.graph.StateGraph and compiled "
        "graphs (langgraph.pregel.Pregel)"
    )
