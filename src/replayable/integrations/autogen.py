"""Record and replay AutoGen AgentChat: its model clients, tools and ``AssistantAgent``.

For example (a sketch, not run as a doctest)::

    from autogen_agentchat.agents import AssistantAgent
    from autogen_ext.models.openai import OpenAIChatCompletionClient
    import replayable as rp

    agent = rp.instrument(
        AssistantAgent("shop", model_client=OpenAIChatCompletionClient(model="gpt-4o-mini"),
                       tools=[get_price, place_order]),
        side_effects=["place_order"],
    )
    with rp.record(name="shop"):
        await agent.run(task="Two mugs, please.")

A model client (any ``autogen_core.models.ChatCompletionClient``: ``OpenAIChatCompletionClient``,
``AzureOpenAIChatCompletionClient``...) records at its public interface: ``create`` becomes a
boundary ``autogen:create`` of kind ``llm`` and ``create_stream`` a streamed one,
``autogen:create_stream`` (the text chunks, then the ``CreateResult``). The input is the
messages, tool schemas, tool choice, output schema and extra arguments, as JSON; replay returns
AutoGen's own ``CreateResult`` and never calls the model. A tool (``BaseTool``:
``FunctionTool``, sync or async functions alike) records at ``run_json`` as ``autogen.tool:<name>``
of kind ``tool``; ``side_effects=`` names the ones that change the world. An ``AssistantAgent``
is its model client plus its tools.

Seam: the model client's and the tools' methods are public; an agent's client and tools are
reached through its attributes ``_model_client`` and ``_tools`` (private), so the ``autogen``
extra pins the tested range (``autogen-agentchat>=0.7.5,<0.8``).
"""

from __future__ import annotations

import contextvars
import importlib
from collections.abc import AsyncIterator, Iterable, Mapping
from typing import Any

from replayable.boundary import boundary
from replayable.context import SESSION, annotate
from replayable.errors import UnsupportedClient

__all__ = ["SUPPORTED", "instrument"]

SUPPORTED = (
    "autogen_core model clients (OpenAIChatCompletionClient...), tools (FunctionTool...) and "
    "autogen_agentchat.agents.AssistantAgent"
)

_MARK = "__replayable__"
_IN_FLIGHT: contextvars.ContextVar[tuple[Any, dict[str, Any]]] = contextvars.ContextVar(
    "autogen_call"
)
"""The live object and its non-JSON arguments (cancellation token...) of the step recording."""


def _core(name: str) -> Any:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise UnsupportedClient(
            "AutoGen is not installed: pip install 'replayable[autogen]'"
        ) from exc


def _plain(value: Any) -> Any:
    """An argument as JSON: pydantic values dumped, pydantic classes as their schema, tools
    as their schema."""
    schema = getattr(value, "model_json_schema", None)
    if isinstance(value, type) and callable(schema):
        return schema()
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return dump(mode="json")
    tool_schema = getattr(value, "schema", None)
    if isinstance(tool_schema, Mapping):
        return _plain(dict(tool_schema))
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


class _ResultCodec:
    """``CreateResult`` as JSON and back; streamed text chunks stay strings."""

    def encode(self, value: Any) -> Any:
        if isinstance(value, str):
            return value
        return {"create_result": value.model_dump(mode="json")}

    def decode(self, data: Any) -> Any:
        if isinstance(data, dict) and "create_result" in data:
            return _core("autogen_core.models").CreateResult.model_validate(data["create_result"])
        return data


def _describe(result: Any) -> None:
    usage = getattr(result, "usage", None)
    meta: dict[str, Any] = {"provider": "autogen", "finish_reasons": [result.finish_reason]}
    if usage is not None:
        meta["usage"] = {
            "input_tokens": usage.prompt_tokens,
            "output_tokens": usage.completion_tokens,
        }
    if isinstance(result.content, list):
        meta["tool_calls"] = [str(getattr(c, "name", "")) for c in result.content]
    annotate(**meta)


@boundary(name="autogen:create", kind="llm", codec=_ResultCodec())
async def _create(
    messages: list[Any],
    tools: list[Any],
    tool_choice: Any,
    json_output: Any,
    extra_create_args: dict[str, Any],
) -> Any:
    original, live = _IN_FLIGHT.get()
    result = await original(**live)
    _describe(result)
    return result


@boundary(name="autogen:create_stream", kind="llm", codec=_ResultCodec())
async def _create_stream(
    messages: list[Any],
    tools: list[Any],
    tool_choice: Any,
    json_output: Any,
    extra_create_args: dict[str, Any],
) -> AsyncIterator[Any]:
    original, live = _IN_FLIGHT.get()
    async for chunk in original(**live):
        if not isinstance(chunk, str):
            _describe(chunk)
        yield chunk


def _request(live: dict[str, Any]) -> dict[str, Any]:
    return {
        "messages": _plain(list(live.get("messages") or ())),
        "tools": _plain(list(live.get("tools") or ())),
        "tool_choice": getattr(live.get("tool_choice"), "name", live.get("tool_choice", "auto")),
        "json_output": _plain(live.get("json_output")),
        "extra_create_args": _plain(dict(live.get("extra_create_args") or {})),
    }


def _instrument_client(client: Any) -> Any:
    if getattr(client, _MARK, False):
        return client
    create, create_stream = client.create, client.create_stream

    async def recorded_create(messages: Any, **kwargs: Any) -> Any:
        live = {"messages": messages, **kwargs}
        if SESSION.get() is None:
            return await create(**live)
        token = _IN_FLIGHT.set((create, live))
        try:
            return await _create(**_request(live))
        finally:
            _IN_FLIGHT.reset(token)

    async def recorded_stream(messages: Any, **kwargs: Any) -> AsyncIterator[Any]:
        live = {"messages": messages, **kwargs}
        if SESSION.get() is None:
            async for chunk in create_stream(**live):
                yield chunk
            return
        token = _IN_FLIGHT.set((create_stream, live))  # read when the stream starts
        try:
            async for chunk in _create_stream(**_request(live)):
                yield chunk
        finally:
            _IN_FLIGHT.reset(token)

    client.create = recorded_create
    client.create_stream = recorded_stream
    setattr(client, _MARK, True)
    return client


def _instrument_tool(tool: Any, side_effects: set[str]) -> None:
    if getattr(tool, _MARK, False):
        side_effects.discard(tool.name)
        return
    run_json = tool.run_json
    name = str(tool.name)

    async def run(args: dict[str, Any]) -> Any:
        original, live = _IN_FLIGHT.get()
        result = await original(**live)
        dump = getattr(result, "model_dump", None)
        return dump(mode="json") if callable(dump) else result

    recorded = boundary(
        name=f"autogen.tool:{name}", kind="tool", side_effects=name in side_effects
    )(run)

    async def recorded_run_json(
        args: Mapping[str, Any], cancellation_token: Any, call_id: str | None = None
    ) -> Any:
        live = {"args": args, "cancellation_token": cancellation_token, "call_id": call_id}
        if SESSION.get() is None:
            return await run_json(**live)
        token = _IN_FLIGHT.set((run_json, live))
        try:
            return await recorded(dict(args))
        finally:
            _IN_FLIGHT.reset(token)

    tool.run_json = recorded_run_json
    setattr(tool, _MARK, True)
    side_effects.discard(name)


def instrument(obj: Any, *, side_effects: Iterable[str] = ()) -> Any:
    """Record ``obj``: a model client, a tool, or an ``AssistantAgent`` (its model client and
    tools; ``side_effects`` names the tools that change the world). Returns the same object.

    For example (a sketch, not run as a doctest)::

        client = instrument(OpenAIChatCompletionClient(model="gpt-4o-mini"))
    """
    models = _core("autogen_core.models")
    tools_mod = _core("autogen_core.tools")
    names = set(side_effects)
    if isinstance(obj, models.ChatCompletionClient):
        if names:
            raise UnsupportedClient(
                f"side_effects={sorted(names)!r}: a model client has no tools; pass them with "
                "the agent or the tool"
            )
        return _instrument_client(obj)
    tools: list[Any]
    if isinstance(obj, tools_mod.BaseTool):
        tools = [obj]
    elif hasattr(obj, "_model_client") and hasattr(obj, "_tools"):
        _instrument_client(obj._model_client)
        tools = list(obj._tools)
    else:
        raise UnsupportedClient(
            f"cannot instrument {type(obj).__module__}.{type(obj).__qualname__}: "
            f"replayable.integrations.autogen supports {SUPPORTED}"
        )
    held = sorted(str(t.name) for t in tools)
    for tool in tools:
        _instrument_tool(tool, names)
    if names:
        raise UnsupportedClient(
            f"side_effects names tools {sorted(names)!r} that {type(obj).__qualname__} does "
            f"not hold; it holds {held!r}"
        )
    return obj
