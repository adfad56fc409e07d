"""Record and replay LangChain chat models and tools.

For example (a sketch, not run as a doctest)::

    import replayable as rp
    from langchain.agents import create_agent
    agent = create_agent(rp.instrument(model), rp.instrument(tools, side_effects=["place_order"]))
    with rp.record(name="shop"):
        agent.invoke({"messages": [{"role": "user", "content": "two mugs please"}]})

A chat model (any ``BaseChatModel``: ``ChatOpenAI``, ``ChatAnthropic``...) becomes a boundary of
kind ``llm`` named ``langchain:<ModelClass>``, whichever way it is called (``invoke``,
``ainvoke``, ``stream``, ``astream``, ``generate``, batch, inside an agent): the seam is the
model's ``_generate`` / ``_stream`` (and async twins), so it works whatever client the model uses
underneath. Keyed: the model's identifying parameters, the messages (without their random ids
and response metadata), ``stop`` and the call options (bound tools, tool choice...). Replay
rebuilds ``AIMessage`` / ``AIMessageChunk`` with tool calls, usage and response metadata; a call
recorded streamed can be replayed unstreamed and the other way round.

A tool (any ``BaseTool``) becomes a boundary of kind ``tool`` named ``langchain:tool.<name>``,
keyed by its arguments (injected ones such as ``ToolRuntime`` left out). Tools named in
``side_effects`` are marked as changing the world, so ``live=`` refuses them. A tool error is
recorded and re-raised in replay, so ``handle_tool_errors`` sees it as it did live.

How LangChain values become JSON and keys (:class:`LangChainCodec`, :func:`jsonable`) lives in
``_langchain_codec``, shared with LangGraph and re-exported here.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
import json
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any

from replayable._exports import publish
from replayable._otlp._conventions import openai_message, parse_json
from replayable.boundary import Boundary, boundary
from replayable.context import SESSION
from replayable.errors import UnsupportedClient
from replayable.integrations._langchain_codec import CODEC, LangChainCodec, jsonable, message_view
from replayable.integrations._steps import ChatShape, Reply, register_shape

__all__ = ["LangChainCodec", "instrument", "instrument_model", "instrument_tool"]

_MARK = "__replayable__"
_ORIGINAL = "__replayable_original__"


def require() -> None:
    """Import langchain-core, or say which extra installs it."""
    try:
        importlib.import_module("langchain_core")
    except ImportError as exc:
        raise UnsupportedClient(
            "LangChain is not installed: pip install 'replayable[langchain]'"
        ) from exc


def _model_params(model: Any) -> dict[str, Any]:
    try:
        params = dict(model._identifying_params)
    except Exception:
        params = {}
    params.pop("stream", None)  # streamed or not, the answer is the same call
    params.pop("streaming", None)
    return {str(k): jsonable(v) for k, v in params.items()}


# -- models ---------------------------------------------------------------------------------------


@dataclass
class _Call:
    """The real call in flight; the boundary itself only sees a JSON view of it."""

    fn: Callable[..., Any]
    obj: Any
    args: tuple[Any, ...]
    kwargs: dict[str, Any]
    streaming: bool


_CALL: contextvars.ContextVar[_Call | None] = contextvars.ContextVar(
    "replayable_langchain_call", default=None
)


def _outer(obj: Any) -> bool:
    """False inside ``obj``'s own recorded call (a default async method that runs the sync one
    in a thread): that inner call is part of the outer step, not a step of its own."""
    call = _CALL.get()
    return call is None or call.obj is not obj


def _take_call() -> _Call:
    call = _CALL.get()
    if call is None:  # only reachable if the boundary function is called by hand
        raise UnsupportedClient("a LangChain boundary was called outside its instrumented method")
    return call


def _llm_boundaries(name: str) -> tuple[Boundary, Boundary]:
    """The sync and async boundary of one model class: generators, one item per chunk (or one
    item, the whole result, for an unstreamed call), so either shape can serve the other."""

    @boundary(name=name, kind="llm", codec=CODEC)
    def llm(model: Any, messages: Any, stop: Any, options: Any) -> Iterator[Any]:
        call = _take_call()
        if call.streaming:
            yield from call.fn(call.obj, *call.args, **call.kwargs)
        else:
            yield call.fn(call.obj, *call.args, **call.kwargs)

    @boundary(name=name, kind="llm", codec=CODEC)
    async def allm(model: Any, messages: Any, stop: Any, options: Any) -> AsyncIterator[Any]:
        call = _take_call()
        if call.streaming:
            async for chunk in call.fn(call.obj, *call.args, **call.kwargs):
                yield chunk
        else:
            yield await call.fn(call.obj, *call.args, **call.kwargs)

    return llm.__replayable__, allm.__replayable__  # type: ignore[attr-defined]


def _llm_view(model: Any, messages: Any, stop: Any, kwargs: dict[str, Any]) -> dict[str, Any]:
    options = {k: v for k, v in kwargs.items() if not k.startswith("ls_")}
    return {
        "model": _model_params(model),
        "messages": [message_view(m) for m in messages],
        "stop": jsonable(stop),
        "options": jsonable(options),
    }


def _as_result(items: list[Any]) -> Any:
    """One ``ChatResult`` from what the boundary yielded: a result, or chunks to merge."""
    from langchain_core.language_models.chat_models import generate_from_stream
    from langchain_core.outputs import ChatResult

    if len(items) == 1 and isinstance(items[0], ChatResult):
        return items[0]
    return generate_from_stream(iter(items))


def _as_chunks(item: Any) -> list[Any]:
    """Generation chunks from what the boundary yielded: a chunk, or a whole result to split."""
    from langchain_core.messages import AIMessageChunk
    from langchain_core.outputs import ChatGenerationChunk, ChatResult

    if not isinstance(item, ChatResult):
        return [item]
    out = []
    for gen in item.generations:
        msg = gen.message
        calls: list[Any] = [
            {"name": c["name"], "args": json.dumps(c["args"]), "id": c.get("id"), "index": i}
            for i, c in enumerate(getattr(msg, "tool_calls", None) or ())
        ]
        chunk = AIMessageChunk(
            content=msg.content,
            additional_kwargs=msg.additional_kwargs,
            response_metadata=msg.response_metadata,
            tool_call_chunks=calls,
            usage_metadata=getattr(msg, "usage_metadata", None),
            id=msg.id,
            chunk_position="last",
        )
        out.append(ChatGenerationChunk(message=chunk, generation_info=gen.generation_info))
    return out


def _split_llm_args(
    args: tuple[Any, ...], kwargs: dict[str, Any]
) -> tuple[Any, Any, dict[str, Any]]:
    messages = args[0] if args else kwargs.pop("messages")
    stop = args[1] if len(args) > 1 else kwargs.get("stop")
    rest = {k: v for k, v in kwargs.items() if k not in ("stop", "run_manager")}
    return messages, stop, rest


def _model_wrappers(cls: type, name: str) -> dict[str, Callable[..., Any]]:
    sync_b, async_b = _llm_boundaries(name)
    return {
        **_generate_wrappers(cls, sync_b.wrapper, async_b.wrapper),
        **_stream_wrappers(cls, sync_b.wrapper, async_b.wrapper),
    }


def _active(obj: Any) -> bool:
    return SESSION.get() is not None and obj.__dict__.get(_MARK) is not None and _outer(obj)


def _generate_wrappers(
    cls: type, gen_sync: Callable[..., Any], gen_async: Callable[..., Any]
) -> dict[str, Callable[..., Any]]:
    """The model's ``_generate`` and ``_agenerate`` through its boundaries."""
    out: dict[str, Callable[..., Any]] = {}

    original_generate = cls._generate  # type: ignore[attr-defined]

    def _generate(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _active(self):
            return original_generate(self, *args, **kwargs)
        messages, stop, rest = _split_llm_args(args, dict(kwargs))
        gen = gen_sync(**_llm_view(self, messages, stop, rest))
        token = _CALL.set(_Call(original_generate, self, args, kwargs, streaming=False))
        try:
            items = list(gen)
        finally:
            _CALL.reset(token)
        return _as_result(items)

    out["_generate"] = _generate

    original_agenerate = cls._agenerate  # type: ignore[attr-defined]

    async def _agenerate(self: Any, *args: Any, **kwargs: Any) -> Any:
        if not _active(self):
            return await original_agenerate(self, *args, **kwargs)
        messages, stop, rest = _split_llm_args(args, dict(kwargs))
        gen = gen_async(**_llm_view(self, messages, stop, rest))
        token = _CALL.set(_Call(original_agenerate, self, args, kwargs, streaming=False))
        try:
            items = [item async for item in gen]
        finally:
            _CALL.reset(token)
        return _as_result(items)

    out["_agenerate"] = _agenerate
    return out


def _stream_wrappers(
    cls: type, gen_sync: Callable[..., Any], gen_async: Callable[..., Any]
) -> dict[str, Callable[..., Any]]:
    """The model's ``_stream`` and ``_astream`` through its boundaries (the real call starts
    on the first chunk)."""
    out: dict[str, Callable[..., Any]] = {}

    original_stream = cls._stream  # type: ignore[attr-defined]

    def _stream(self: Any, *args: Any, **kwargs: Any) -> Iterator[Any]:
        if not _active(self):
            yield from original_stream(self, *args, **kwargs)
            return
        messages, stop, rest = _split_llm_args(args, dict(kwargs))
        gen = gen_sync(**_llm_view(self, messages, stop, rest))
        token = _CALL.set(_Call(original_stream, self, args, kwargs, streaming=True))
        try:  # the boundary's body takes the real call when it starts: on the first item
            first = next(gen, _END)
        finally:
            _CALL.reset(token)
        if first is _END:
            return
        yield from _as_chunks(first)
        for item in gen:
            yield from _as_chunks(item)

    out["_stream"] = _stream

    original_astream = cls._astream  # type: ignore[attr-defined]

    async def _astream(self: Any, *args: Any, **kwargs: Any) -> AsyncIterator[Any]:
        if not _active(self):
            async for chunk in original_astream(self, *args, **kwargs):
                yield chunk
            return
        messages, stop, rest = _split_llm_args(args, dict(kwargs))
        gen = gen_async(**_llm_view(self, messages, stop, rest))
        token = _CALL.set(_Call(original_astream, self, args, kwargs, streaming=True))
        try:
            first = await anext(gen, _END)
        finally:
            _CALL.reset(token)
        if first is _END:
            return
        for c in _as_chunks(first):
            yield c
        async for item in gen:
            for c in _as_chunks(item):
                yield c

    out["_astream"] = _astream
    return out


_END = object()


def _patch(cls: type, attr: str, wrapper: Callable[..., Any]) -> None:
    original = getattr(cls, attr)
    # LangChain reads the method's signature to decide what to pass (run_manager, config).
    functools.update_wrapper(wrapper, original)
    setattr(wrapper, _ORIGINAL, original)
    setattr(cls, attr, wrapper)


def _patched(cls: type, attr: str) -> bool:
    return hasattr(getattr(cls, attr, None), _ORIGINAL)


def instrument_model(model: Any) -> Any:
    """Make a LangChain chat model an ``llm`` boundary; returns the same model.

    For example (a sketch, not run as a doctest)::

        model = instrument_model(ChatOpenAI(model="gpt-4o-mini"))
    """
    require()
    from langchain_core.language_models import BaseChatModel

    if not isinstance(model, BaseChatModel):
        raise UnsupportedClient(
            f"cannot instrument {type(model).__module__}.{type(model).__qualname__} as a chat "
            "model: replayable.integrations.langchain supports BaseChatModel subclasses"
        )
    cls = type(model)
    if not _patched(cls, "_generate"):
        name = f"langchain:{cls.__name__}"
        for attr, wrapper in _model_wrappers(cls, name).items():
            # Only what the class implements: the base class's defaults call the sync methods
            # (patched), and LangChain checks whether _stream is overridden to know it streams.
            if getattr(cls, attr) is not getattr(BaseChatModel, attr):
                _patch(cls, attr, wrapper)
    register_shape(f"langchain:{cls.__name__}", _SHAPE)
    object.__setattr__(model, _MARK, {"kind": "model"})
    return model


# -- imported traces: a chat step read from a model call, answered as a ChatResult ----------------

_ROLES = {"system": "system", "human": "user", "ai": "assistant", "tool": "tool"}
_ROLES.update({"SystemMessageChunk": "system", "HumanMessageChunk": "user"})
_ROLES.update({"AIMessageChunk": "assistant", "ToolMessageChunk": "tool"})


def chat_request(data: Any) -> dict[str, Any]:
    """A chat model call as recorded (identifying parameters, message views) as a chat
    step's request."""
    data = data if isinstance(data, dict) else {}
    params = data.get("model") if isinstance(data.get("model"), dict) else {}
    messages = []
    for m in data.get("messages") or ():
        if not isinstance(m, dict):
            messages.append(openai_message(m))
            continue
        calls = [
            {"id": c.get("id"), "function": {"name": c.get("name"), "arguments": c.get("args")}}
            for c in m.get("tool_calls") or ()
            if isinstance(c, dict)
        ]
        role = _ROLES.get(str(m.get("type")), m.get("role") or "user")
        messages.append(openai_message({**m, "role": role, "tool_calls": calls}))
    return {"model": params.get("model_name") or params.get("model"), "messages": messages}


def chat_answer(reply: Reply, data: Any) -> list[Any]:
    """An imported answer as what a chat model boundary records: one ``ChatResult`` holding
    an ``AIMessage`` with the text, tool calls, usage and finish reason (a streamed call is
    served its chunks from it)."""
    from langchain_core.messages import AIMessage
    from langchain_core.outputs import ChatGeneration, ChatResult

    params = data.get("model") if isinstance(data, dict) else None
    model = reply.model or (params.get("model_name") if isinstance(params, dict) else None)
    calls = []
    for c in reply.tool_calls:
        args = c.get("arguments")
        args = parse_json(args) if isinstance(args, str) else args
        args = args if isinstance(args, dict) else {}
        calls.append({"name": str(c.get("name")), "args": args, "id": c["id"], "type": "tool_call"})
    usage = {
        "input_tokens": reply.input_tokens,
        "output_tokens": reply.output_tokens,
        "total_tokens": reply.input_tokens + reply.output_tokens,
    }
    info = {"finish_reason": reply.finish_reason, "model_name": model}
    message = AIMessage(
        content=reply.text or "",
        tool_calls=calls,
        usage_metadata=usage,
        response_metadata={k: v for k, v in info.items() if v is not None},
        id=reply.id,
    )
    result = ChatResult(
        generations=[
            ChatGeneration(
                message=message, generation_info={"finish_reason": info["finish_reason"]}
            )
        ],
        llm_output={"model_name": model, "token_usage": usage},
    )
    return [CODEC.encode(result)]


_SHAPE = ChatShape(chat_request, chat_answer)


# -- tools ----------------------------------------------------------------------------------------

_FILTERED = frozenset({"config", "run_manager", "callbacks", "callback_manager"})


def _tool_boundaries(tool: Any, side_effects: bool) -> tuple[Boundary, Boundary]:
    name = f"langchain:tool.{tool.name}"

    @boundary(name=name, kind="tool", side_effects=side_effects, codec=CODEC)
    def run_tool(**arguments: Any) -> Any:
        call = _take_call()
        return call.fn(call.obj, *call.args, **call.kwargs)

    @boundary(name=name, kind="tool", side_effects=side_effects, codec=CODEC)
    async def arun_tool(**arguments: Any) -> Any:
        call = _take_call()
        return await call.fn(call.obj, *call.args, **call.kwargs)

    return run_tool.__replayable__, arun_tool.__replayable__  # type: ignore[attr-defined]


def _tool_view(tool: Any, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    try:
        injected = frozenset(tool._injected_args_keys)
    except Exception:
        injected = frozenset()
    view = {k: jsonable(v) for k, v in kwargs.items() if k not in _FILTERED and k not in injected}
    if args:
        view["input" if len(args) == 1 else "args"] = jsonable(
            args[0] if len(args) == 1 else list(args)
        )
    return view


def _patch_tool_class(cls: type) -> None:
    if _patched(cls, "_run"):
        return
    original_run = cls._run  # type: ignore[attr-defined]
    original_arun = cls._arun  # type: ignore[attr-defined]

    def _run(self: Any, *args: Any, **kwargs: Any) -> Any:
        mark = self.__dict__.get(_MARK)
        if mark is None or SESSION.get() is None or not _outer(self):
            return original_run(self, *args, **kwargs)
        token = _CALL.set(_Call(original_run, self, args, kwargs, streaming=False))
        try:
            return mark["sync"].wrapper(**_tool_view(self, args, kwargs))
        finally:
            _CALL.reset(token)

    async def _arun(self: Any, *args: Any, **kwargs: Any) -> Any:
        mark = self.__dict__.get(_MARK)
        if mark is None or SESSION.get() is None or not _outer(self):
            return await original_arun(self, *args, **kwargs)
        token = _CALL.set(_Call(original_arun, self, args, kwargs, streaming=False))
        try:
            return await mark["async"].wrapper(**_tool_view(self, args, kwargs))
        finally:
            _CALL.reset(token)

    _patch(cls, "_run", _run)
    _patch(cls, "_arun", _arun)


def instrument_tool(tool: Any, *, side_effects: bool = False) -> Any:
    """Make a LangChain tool a ``tool`` boundary named ``langchain:tool.<name>``.

    For example (a sketch, not run as a doctest)::

        place_order = instrument_tool(place_order, side_effects=True)
    """
    require()
    from langchain_core.tools import BaseTool

    if not isinstance(tool, BaseTool):
        raise UnsupportedClient(
            f"cannot instrument {type(tool).__module__}.{type(tool).__qualname__} as a tool: "
            "replayable.integrations.langchain supports BaseTool (e.g. made with @tool)"
        )
    _patch_tool_class(type(tool))
    mark = tool.__dict__.get(_MARK)
    if mark is not None and (mark["sync"].side_effects or not side_effects):
        return tool  # instrumented already; a tool marked as a side effect stays one
    sync_b, async_b = _tool_boundaries(tool, side_effects)
    object.__setattr__(tool, _MARK, {"kind": "tool", "sync": sync_b, "async": async_b})
    return tool


def _tool_names(tools: Iterable[Any]) -> set[str]:
    return {str(getattr(t, "name", "")) for t in tools}


def instrument(obj: Any, *, side_effects: Iterable[str] = (), **options: Any) -> Any:
    """Instrument a chat model, a tool, or a list of tools; returns what it was given.

    ``side_effects`` names the tools that change the world.

    For example (a sketch, not run as a doctest)::

        model = instrument(ChatOpenAI(model="gpt-4o-mini"))
        tools = instrument([search, place_order], side_effects=["place_order"])
    """
    if options:
        raise TypeError(f"unexpected option(s) for LangChain: {', '.join(sorted(options))}")
    require()
    from langchain_core.language_models import BaseChatModel
    from langchain_core.tools import BaseTool

    marked = set(side_effects)
    if isinstance(obj, BaseChatModel):
        if marked:
            raise UnsupportedClient(
                "side_effects= names tools; pass it with the tools, "
                "e.g. rp.instrument([search, place_order], side_effects=['place_order'])"
            )
        return instrument_model(obj)
    items = list(obj) if isinstance(obj, (list, tuple)) else [obj]
    unknown = marked - _tool_names(i for i in items if isinstance(i, BaseTool))
    if unknown:
        raise UnsupportedClient(
            f"side_effects names no tool given here: {', '.join(sorted(unknown))} "
            f"(tools: {', '.join(sorted(_tool_names(items))) or 'none'})"
        )
    for item in items:
        if isinstance(item, BaseTool):
            instrument_tool(item, side_effects=item.name in marked)
        elif isinstance(item, BaseChatModel):
            instrument_model(item)
        else:
            raise UnsupportedClient(
                f"cannot instrument {type(item).__module__}.{type(item).__qualname__}: "
                "replayable.integrations.langchain supports chat models (BaseChatModel) and "
                "tools (BaseTool)"
            )
    return obj


publish(globals())
