"""Record and replay Pydantic AI agents: model requests and tool calls.

For example (a sketch, not run as a doctest)::

    import replayable as rp
    agent = rp.instrument(Agent(model, tools=[check_stock, place_order]),
                          side_effects=["place_order"])
    with rp.record(name="shop"):
        agent.run_sync("Two mugs, please.")

Each model request becomes a boundary of kind ``llm`` named ``pydantic_ai:model.request``, at
the Pydantic AI ``Model`` level (``request`` and ``request_stream``), so it works whatever the
model does with its SDK client underneath (copies made with ``with_options``, retries...).
Keyed: the model (``system:model_name``), the messages, the model settings and the request
parameters (tool definitions, output mode). A streamed request is recorded event by event and
replayed with the same events; an unstreamed recording can serve a streamed replay and the
other way round.

Each tool call becomes a boundary of kind ``tool`` named ``pydantic_ai:tool.<name>``, keyed by
its validated arguments; this covers the agent's function tools and its toolsets. Tools named in
``side_effects`` change the world: replay never runs them and ``live=`` refuses them.
``run``, ``run_sync``, ``run_stream``, ``iter`` and ``run_stream_events`` all go through these.
"""

from __future__ import annotations

import contextvars
import importlib
from collections.abc import AsyncIterator, Callable, Iterable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

from replayable import canonical
from replayable.boundary import Boundary, boundary
from replayable.context import SESSION
from replayable.errors import Unserializable, UnsupportedClient

__all__ = ["PydanticAICodec", "instrument"]

MODEL_BOUNDARY = "pydantic_ai:model.request"


def _require() -> Any:
    try:
        return importlib.import_module("pydantic_ai")
    except ImportError as exc:
        raise UnsupportedClient(
            "Pydantic AI is not installed: pip install 'replayable[pydantic-ai]'"
        ) from exc


@dataclass
class _Opened:
    """First item of a recorded stream: the live stream (record), nothing (replay)."""

    stream: Any


class PydanticAICodec:
    """Model responses, stream events and tool results as JSON, and back to Pydantic AI types."""

    def __init__(self) -> None:
        self._adapters: dict[str, Any] = {}

    def _adapter(self, name: str) -> Any:
        if name not in self._adapters:
            import pydantic
            from pydantic_ai import messages

            self._adapters[name] = pydantic.TypeAdapter(getattr(messages, name))
        return self._adapters[name]

    def encode(self, value: Any) -> Any:
        from pydantic_ai.messages import ModelResponse

        if isinstance(value, _Opened):
            return {"$open": {}}
        if isinstance(value, ModelResponse):
            return {"$response": self._adapter("ModelResponse").dump_python(value, mode="json")}
        if type(value).__module__ == "pydantic_ai.messages" and type(value).__name__.endswith(
            "Event"
        ):
            data = self._adapter("ModelResponseStreamEvent").dump_python(value, mode="json")
            return {"$event": data}
        return jsonable(value)

    def decode(self, data: Any) -> Any:
        if isinstance(data, dict) and len(data) == 1:
            tag, body = next(iter(data.items()))
            if tag == "$open":
                return _Opened(None)
            if tag == "$response":
                return self._adapter("ModelResponse").validate_python(body)
            if tag == "$event":
                return self._adapter("ModelResponseStreamEvent").validate_python(body)
        return data


CODEC = PydanticAICodec()


def jsonable(value: Any) -> Any:
    """A JSON view of ``value`` (pydantic, dataclasses...); the unserializable as markers."""
    import pydantic_core

    try:
        data = pydantic_core.to_jsonable_python(value)
        canonical.canonicalize(data, drop=())
    except (Unserializable, pydantic_core.PydanticSerializationError):
        cls = type(value)
        return {"$object": f"{cls.__module__}.{cls.__qualname__}"}
    return data


# -- the model ------------------------------------------------------------------------------------


@dataclass
class _Call:
    fn: Callable[..., Any]
    args: tuple[Any, ...]
    streaming: bool


_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "replayable_pydantic_ai_call", default=None
)


def _take_call() -> _Call:
    call = _CALL.get()
    if call is None:
        raise UnsupportedClient("a Pydantic AI boundary was called outside its instrumented model")
    return call


_MODEL_B: Boundary | None = None


def _model_boundary() -> Boundary:
    """One async-generator boundary for both request shapes: one item (the response) for a
    plain request; for a stream, an opening item, each event, then the final response."""
    global _MODEL_B
    if _MODEL_B is None:

        @boundary(name=MODEL_BOUNDARY, kind="llm", codec=CODEC)
        async def request(
            model: Any, messages: Any, settings: Any, parameters: Any
        ) -> AsyncIterator[Any]:
            call = _take_call()
            if not call.streaming:
                yield await call.fn(*call.args)
                return
            async with call.fn(*call.args) as live:
                events = live.__aiter__()
                yield _Opened(live)
                async for event in events:
                    yield event
                yield live.get()

        _MODEL_B = request.__replayable__  # type: ignore[attr-defined]
    return _MODEL_B


def _view(model: Any, messages: Any, settings: Any, parameters: Any) -> dict[str, Any]:
    from pydantic_ai.messages import ModelMessagesTypeAdapter

    try:
        history = ModelMessagesTypeAdapter.dump_python(list(messages), mode="json")
    except Exception:
        history = jsonable(messages)
    return {
        "model": f"{model.system}:{model.model_name}",
        "messages": _strip(history),
        "settings": jsonable(settings),
        "parameters": jsonable(parameters),
    }


# Fields of a recorded message that differ on every run, or never reach the provider.
_NOISE = frozenset(
    {"timestamp", "run_id", "conversation_id", "usage", "provider_response_id", "provider_details"}
)


def _strip(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _strip(v) for k, v in value.items() if k not in _NOISE}
    if isinstance(value, list):
        return [_strip(v) for v in value]
    return value


def _model_class() -> type:
    """``ReplayableModel``: a Pydantic AI ``WrapperModel`` whose requests are boundaries."""
    from pydantic_ai.models import CompletedStreamedResponse
    from pydantic_ai.models.wrapper import WrapperModel

    class ReplayableModel(WrapperModel):
        """Wraps a Pydantic AI model; its requests are recorded and replayed."""

        async def request(
            self, messages: Any, model_settings: Any, model_request_parameters: Any
        ) -> Any:
            args = (messages, model_settings, model_request_parameters)
            if SESSION.get() is None:
                return await self.wrapped.request(*args)
            items = await _drain(self, self.wrapped.request, args, streaming=False)
            return _response_of(items)

        @asynccontextmanager
        async def request_stream(
            self,
            messages: Any,
            model_settings: Any,
            model_request_parameters: Any,
            run_context: Any = None,
        ) -> AsyncIterator[Any]:
            args = (messages, model_settings, model_request_parameters, run_context)
            if SESSION.get() is None:
                async with self.wrapped.request_stream(*args) as live:
                    yield live
                return
            gen = _model_boundary().wrapper(**_view(self.wrapped, *args[:3]))
            token = _CALL.set(_Call(self.wrapped.request_stream, args, streaming=True))
            try:  # the boundary's body takes the real call when it starts: on the first item
                first = await anext(gen)
            finally:
                _CALL.reset(token)
            parameters = args[2]
            if isinstance(first, _Opened) and first.stream is not None:
                live = first.stream

                async def tap() -> AsyncIterator[Any]:
                    async for item in gen:
                        if isinstance(item, _Opened) or type(item).__name__ == "ModelResponse":
                            continue
                        yield item

                live._event_iterator = tap()
                try:
                    yield live
                finally:
                    await gen.aclose()
                return
            items = [first, *[item async for item in gen]]
            events = [i for i in items if type(i).__module__ == "pydantic_ai.messages"]
            events = [e for e in events if type(e).__name__ != "ModelResponse"]
            response = _response_of(items, allow_missing=True)
            if not any(isinstance(i, _Opened) for i in items):  # recorded unstreamed
                yield CompletedStreamedResponse(
                    response, model_request_parameters=parameters, replay_events=True
                )
                return
            yield CompletedStreamedResponse(
                response, model_request_parameters=parameters, replay_events=events
            )

    return ReplayableModel


async def _drain(model: Any, fn: Any, args: tuple[Any, ...], streaming: bool) -> list[Any]:
    gen = _model_boundary().wrapper(**_view(model.wrapped, *args[:3]))
    token = _CALL.set(_Call(fn, args, streaming=streaming))
    try:
        return [item async for item in gen]
    finally:
        _CALL.reset(token)


def _response_of(items: list[Any], *, allow_missing: bool = False) -> Any:
    from pydantic_ai.messages import ModelResponse

    for item in reversed(items):
        if isinstance(item, ModelResponse):
            return item
    if allow_missing:  # a stream the agent closed early: its parts come from its events
        return ModelResponse(parts=[])
    raise UnsupportedClient("the recorded model request has no response (it was cut short)")


_MODEL_CLASS: type | None = None


def instrument_model(model: Any) -> Any:
    """A Pydantic AI model whose requests are ``llm`` boundaries (a wrapper: use the result).

    For example (a sketch, not run as a doctest)::

        model = instrument_model(OpenAIChatModel("gpt-4o-mini", provider=provider))
    """
    global _MODEL_CLASS
    _require()
    from pydantic_ai.models import Model, infer_model

    if _MODEL_CLASS is None:
        _MODEL_CLASS = _model_class()
    if isinstance(model, _MODEL_CLASS):
        return model
    if not isinstance(model, (Model, str)):
        raise UnsupportedClient(
            f"cannot instrument {type(model).__module__}.{type(model).__qualname__}: "
            "replayable.integrations.pydantic_ai supports pydantic_ai.Agent and its models"
        )
    return _MODEL_CLASS(infer_model(model))


# -- tools ----------------------------------------------------------------------------------------

_TOOLS: dict[str, Boundary] = {}


class _ToolResultCodec:
    """A tool's result as JSON; replay hands the JSON back (Pydantic AI serializes a tool's
    result for the model the same way)."""

    def encode(self, value: Any) -> Any:
        return jsonable(value)

    def decode(self, data: Any) -> Any:
        return data


_TOOL_CODEC = _ToolResultCodec()


def _tool_boundary(name: str, side_effects: bool) -> Boundary:
    b = _TOOLS.get(name)
    if b is None or b.side_effects is not side_effects:

        @boundary(
            name=f"pydantic_ai:tool.{name}",
            kind="tool",
            side_effects=side_effects,
            codec=_TOOL_CODEC,
        )
        async def call(**arguments: Any) -> Any:
            real = _take_call()
            return await real.fn(*real.args)

        b = _TOOLS[name] = call.__replayable__  # type: ignore[attr-defined]
    return b


def _patch_toolset(toolset: Any, marked: frozenset[str]) -> None:
    if getattr(toolset.call_tool, "__replayable_original__", None) is not None:
        toolset.call_tool.__replayable_marked__.update(marked)
        return
    original = toolset.call_tool
    flags: set[str] = set(marked)

    async def call_tool(name: str, tool_args: dict[str, Any], ctx: Any, tool: Any) -> Any:
        if SESSION.get() is None:
            return await original(name, tool_args, ctx, tool)
        b = _tool_boundary(name, name in flags)
        token = _CALL.set(_Call(original, (name, tool_args, ctx, tool), streaming=False))
        try:
            return await b.wrapper(**jsonable(tool_args))
        finally:
            _CALL.reset(token)

    call_tool.__replayable_original__ = original  # type: ignore[attr-defined]
    call_tool.__replayable_marked__ = flags  # type: ignore[attr-defined]
    toolset.call_tool = call_tool


def _leaves(agent: Any) -> list[Any]:
    """The toolsets that call tools themselves (inside any wrappers): function toolsets,
    MCP servers... Patched there, a call is recorded with the arguments the tool receives."""
    found: list[Any] = []
    for toolset in [agent._function_toolset, *agent._user_toolsets]:
        toolset.apply(found.append)
    return found


def instrument(obj: Any, *, side_effects: Iterable[str] = (), **options: Any) -> Any:
    """Instrument a Pydantic AI ``Agent`` (in place) or a ``Model`` (returns a wrapper).

    For example (a sketch, not run as a doctest)::

        agent = instrument(Agent(model, tools=[place_order]), side_effects=["place_order"])
    """
    if options:
        raise TypeError(f"unexpected option(s) for Pydantic AI: {', '.join(sorted(options))}")
    pydantic_ai = _require()
    marked = frozenset(side_effects)
    if not isinstance(obj, pydantic_ai.Agent):
        if marked:
            raise UnsupportedClient(
                "side_effects= names tools; pass it with the Agent that has them"
            )
        return instrument_model(obj)
    if obj.model is None:
        raise UnsupportedClient(
            "this Agent has no model yet: give it one (Agent(model, ...)) before instrumenting, "
            "or pass an instrumented model per run: agent.run(..., model=rp.instrument(model))"
        )
    toolsets = _leaves(obj)
    known = {name for t in toolsets for name in (getattr(t, "tools", None) or {})}
    unknown = marked - known
    # Toolsets without a fixed list (MCP servers...) learn their tools at run time.
    if unknown and all(isinstance(getattr(t, "tools", None), dict) for t in toolsets):
        raise UnsupportedClient(
            f"side_effects names no tool of this agent: {', '.join(sorted(unknown))} "
            f"(tools: {', '.join(sorted(known))})"
        )
    obj.model = instrument_model(obj.model)
    for toolset in toolsets:
        _patch_toolset(toolset, marked)
    for name in marked:  # known before any replay starts, so live= can check them
        _tool_boundary(name, True)
    return obj
