"""Record and replay DSPy: its language models (``dspy.LM``, on every engine) and its tools.

For example (a sketch, not run as a doctest)::

    import dspy, replayable as rp
    lm = rp.instrument(dspy.LM("openai/gpt-4o-mini", api_base=..., api_key=...))
    dspy.configure(lm=lm)
    agent = rp.instrument(dspy.ReAct("question -> answer", tools=[get_price]),
                          side_effects=["place_order"])
    with rp.record(name="shop"):
        agent(question="...")

Every call an instrumented ``dspy.LM`` makes (``lm(...)``, ``lm.acall``, ``forward``, through a
``Predict``, ``ChainOfThought`` or ``ReAct``) becomes a boundary of kind ``llm``:
``dspy:lm.call`` (``dspy:lm.acall`` when async). The step sits above DSPy's response cache and
under its engine choice, so a call is one step whichever engine runs it (the native lm15
engine, which does not go through LiteLLM, or LiteLLM) and whether the cache answered it: a
cache hit is recorded as a step (``cache_hit`` in its metadata), and a replay serves every step
from the recording without reading or writing the cache. The input is the request DSPy keys
its cache by (model, messages, generation settings), less the address and key it is sent
with; the output is DSPy's own cache record of the result, rebuilt on replay as the same
``CallResult`` its cache returns.

Tools: ``rp.instrument(dspy.Tool)`` or any module holding tools (``dspy.ReAct``) wraps each
tool's function as a boundary ``dspy.tool:<name>`` of kind ``tool``; ``side_effects=`` names the
ones that change the world.

Seam: DSPy has no public hook that can serve a call, so this patches the module functions its
``LM`` runs every call through (``dspy.clients.execution.execute`` and ``aexecute``), for the
instrumented LMs only. That seam is private: the ``dspy`` extra pins the tested range
(``dspy>=3.4,<3.5``). Streaming (``dspy.streamify``) is recorded as the whole answer; a replay
returns it without emitting chunks.
"""

from __future__ import annotations

import contextvars
import functools
import importlib
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from replayable.boundary import boundary
from replayable.context import SESSION, annotate
from replayable.errors import UnsupportedClient

__all__ = ["SUPPORTED", "instrument", "instrument_library"]

SUPPORTED = "dspy.LM (every engine), dspy.Tool, and modules holding tools (dspy.ReAct)"

_SENT_WITH = ("api_key", "api_base", "base_url")
_MARK = "__replayable__"
_ALL = {"on": False}  # rp.instrument(): every LM, not only marked ones


def _load(name: str = "dspy") -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise UnsupportedClient("DSPy is not installed: pip install 'replayable[dspy]'") from exc


class _ResultCodec:
    """DSPy's ``CallResult`` as DSPy's own cache record (plain data), plus what ``load``
    leaves out (usage, whether the cache answered)."""

    def encode(self, result: Any) -> Any:
        record = dict(result.dump())
        record["usage"] = dict(record.get("usage") or {})
        record["cache_hit"] = bool(getattr(result, "cache_hit", False))
        return record

    def decode(self, data: Any) -> Any:
        call_result = importlib.import_module("dspy.clients.call_result").CallResult
        record = dict(data)
        usage = record.pop("usage", {})
        cache_hit = record.pop("cache_hit", False)
        result = call_result.load(record)
        result.usage = dict(usage or {})
        result.cache_hit = bool(cache_hit)
        return result


def _describe(lm: Any, result: Any) -> dict[str, Any]:
    usage = getattr(result, "usage", None) or {}
    meta: dict[str, Any] = {
        "provider": "dspy",
        "request_model": getattr(lm, "model", None),
        "response_model": getattr(result, "response_model", None),
        "cache_hit": bool(getattr(result, "cache_hit", False)),
    }
    if isinstance(usage, dict) and usage:
        meta["usage"] = {
            "input_tokens": usage.get("prompt_tokens", usage.get("input_tokens")),
            "output_tokens": usage.get("completion_tokens", usage.get("output_tokens")),
        }
    return {k: v for k, v in meta.items() if v is not None}


def _plain(value: Any) -> Any:
    """A request value as JSON, the way DSPy's cache keys it: a pydantic class as its JSON
    schema, a pydantic value dumped, a callable by name."""
    schema = getattr(value, "model_json_schema", None)
    if isinstance(value, type) and callable(schema):
        return schema()
    dump = getattr(value, "model_dump", None)
    if callable(dump) and not isinstance(value, type):
        return dump(mode="json")
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if callable(value):
        return f"<callable:{getattr(value, '__qualname__', type(value).__qualname__)}>"
    return value


def _request(lm: Any, call: Any, asynchronous: bool) -> dict[str, Any]:
    """The call as DSPy keys its cache, less where and with which key it is sent."""
    key = dict(call.key(lm, asynchronous))
    for name in _SENT_WITH:
        key.pop(name, None)
    return {"model": lm.model, "model_type": lm.model_type, "request": _plain(key)}


_IN_FLIGHT: contextvars.ContextVar[tuple[Any, Any]] = contextvars.ContextVar("dspy_call")
"""The LM and prepared call a recorded step runs with (objects, so not part of its input)."""


def _patch_execution() -> None:
    execution = _load("dspy.clients.execution")
    if getattr(execution.execute, _MARK, False):
        return
    execute, aexecute = execution.execute, execution.aexecute
    codec = _ResultCodec()

    @boundary(name="dspy:lm.call", kind="llm", codec=codec)
    def call(request: dict[str, Any]) -> Any:
        lm, prepared = _IN_FLIGHT.get()
        result = execute(lm, prepared)
        annotate(**_describe(lm, result))
        return result

    @boundary(name="dspy:lm.acall", kind="llm", codec=codec)
    async def acall(request: dict[str, Any]) -> Any:
        lm, prepared = _IN_FLIGHT.get()
        result = await aexecute(lm, prepared)
        annotate(**_describe(lm, result))
        return result

    def recorded(lm: Any) -> bool:
        return SESSION.get() is not None and (_ALL["on"] or getattr(lm, _MARK, False))

    @functools.wraps(execute)
    def patched_execute(lm: Any, prepared: Any) -> Any:
        if not recorded(lm):
            return execute(lm, prepared)
        token = _IN_FLIGHT.set((lm, prepared))
        try:
            return call(_request(lm, prepared, False))
        finally:
            _IN_FLIGHT.reset(token)

    @functools.wraps(aexecute)
    async def patched_aexecute(lm: Any, prepared: Any) -> Any:
        if not recorded(lm):
            return await aexecute(lm, prepared)
        token = _IN_FLIGHT.set((lm, prepared))
        try:
            return await acall(_request(lm, prepared, True))
        finally:
            _IN_FLIGHT.reset(token)

    setattr(patched_execute, _MARK, True)
    setattr(patched_aexecute, _MARK, True)
    execution.__dict__.update(execute=patched_execute, aexecute=patched_aexecute)


def _instrument_tool(tool: Any, side_effects: set[str]) -> None:
    func = tool.func
    if getattr(func, "__replayable__", None) is not None:
        return
    name = str(getattr(tool, "name", None) or getattr(func, "__name__", "tool"))
    wrapped = boundary(name=f"dspy.tool:{name}", kind="tool", side_effects=name in side_effects)(
        func
    )
    try:
        tool.func = wrapped
    except (TypeError, ValueError, AttributeError):  # a frozen model
        object.__setattr__(tool, "func", wrapped)
    side_effects.discard(name)


def _tools_of(obj: Any, tool_cls: type) -> list[Any]:
    """The tools a module holds (``tools`` dicts or lists, on it and its sub-modules)."""
    found: list[Any] = []
    modules = [obj]
    named = getattr(obj, "named_sub_modules", None)
    if callable(named):
        modules += [m for _, m in named()]
    for module in modules:
        tools = getattr(module, "tools", None)
        values = tools.values() if isinstance(tools, dict) else tools
        if isinstance(values, Iterable) and not isinstance(values, str | bytes):
            found += [t for t in values if isinstance(t, tool_cls) and t not in found]
    return found


def instrument(obj: Any, *, side_effects: Iterable[str] = ()) -> Any:
    """Record ``obj``: a ``dspy.LM`` (its calls), a ``dspy.Tool``, or a module holding tools
    (``dspy.ReAct``: each tool; ``side_effects`` names those that change the world). Returns
    the same object.

    For example (a sketch, not run as a doctest)::

        lm = instrument(dspy.LM("openai/gpt-4o-mini"))
    """
    dspy = _load()
    names = set(side_effects)
    tool_cls = dspy.Tool
    if isinstance(obj, dspy.BaseLM):
        if names:
            raise UnsupportedClient(
                f"side_effects={sorted(names)!r}: a dspy.LM has no tools; pass them with the "
                "module or tool that holds them"
            )
        _patch_execution()
        object.__setattr__(obj, _MARK, True)
        return obj
    if isinstance(obj, tool_cls):
        tools = [obj]
    elif isinstance(obj, dspy.Module):
        tools = _tools_of(obj, tool_cls)
    else:
        raise UnsupportedClient(
            f"cannot instrument {type(obj).__module__}.{type(obj).__qualname__}: "
            f"replayable.integrations.dspy supports {SUPPORTED}"
        )
    for tool in tools:
        _instrument_tool(tool, names)
    if names:
        raise UnsupportedClient(
            f"side_effects names tools {sorted(names)!r} that {type(obj).__qualname__} does "
            f"not hold; it holds {sorted(str(t.name) for t in tools)!r}"
        )
    return obj


def instrument_library(module: ModuleType) -> None:
    """Record every ``dspy.LM``'s calls (``rp.instrument()``)."""
    _patch_execution()
    _ALL["on"] = True
