"""Record and replay LlamaIndex: its OpenAI LLM classes, its tools, and the agents holding them.

For example (a sketch, not run as a doctest)::

    from llama_index.core.agent.workflow import FunctionAgent
    from llama_index.llms.openai import OpenAI
    import replayable as rp

    agent = rp.instrument(
        FunctionAgent(tools=[place_order], llm=OpenAI(model="gpt-4o-mini")),
        side_effects=["place_order"],
    )

An LLM of ``llama-index-llms-openai`` (``OpenAI``, and the classes built on it) records at the
OpenAI SDK clients it drives (``openai:chat.completions.create``, ``_stream`` when streaming;
see :mod:`replayable.integrations.openai`), so ``chat``, ``complete``, their async and
streaming forms, ``chat_with_tools`` and every agent built on them replay LlamaIndex's own
types from the recorded answers. A tool (``FunctionTool``, sync or async) records at
``call`` / ``acall`` as ``llama_index.tool:<name>`` of kind ``tool``; ``side_effects=`` names the
ones that change the world. An agent (``FunctionAgent``, ``ReActAgent``...) is its LLM and its
tools.

Seam: the SDK clients are created by the LLM's ``_get_client`` / ``_get_aclient`` (private; an
LLM built with ``reuse_client=False`` makes a new client per call and is refused). The
``llama-index`` extra pins the tested range (``llama-index-llms-openai>=0.8,<0.9``); passing
``openai_client=rp.instrument(openai.OpenAI(...))`` to the LLM is the public alternative.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from replayable.boundary import boundary
from replayable.errors import UnsupportedClient
from replayable.integrations import openai as rp_openai

__all__ = ["SUPPORTED", "instrument"]

SUPPORTED = (
    "llama_index.llms.openai.OpenAI (and LLMs built on it), FunctionTool, and agents "
    "(FunctionAgent, ReActAgent) holding them"
)


def _load(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise UnsupportedClient(
            "LlamaIndex is not installed: pip install 'replayable[llama-index]'"
        ) from exc


class _OutputCodec:
    """``ToolOutput`` as JSON and back."""

    def encode(self, value: Any) -> Any:
        dump = getattr(value, "model_dump", None)
        return {"tool_output": dump(mode="json")} if callable(dump) else value

    def decode(self, data: Any) -> Any:
        if isinstance(data, dict) and "tool_output" in data:
            output = _load("llama_index.core.tools").ToolOutput
            return output.model_validate(data["tool_output"])
        return data


def _instrument_llm(llm: Any) -> None:
    openai_llm = _load("llama_index.llms.openai").OpenAI
    if not isinstance(llm, openai_llm):
        raise UnsupportedClient(
            f"cannot instrument the LLM {type(llm).__module__}.{type(llm).__qualname__}: "
            f"replayable.integrations.llama_index supports {SUPPORTED}"
        )
    if not llm.reuse_client:
        raise UnsupportedClient(
            "this LlamaIndex OpenAI LLM has reuse_client=False, so it makes a new SDK client "
            "per call and none can be instrumented: build it with reuse_client=True (the "
            "default), or pass openai_client=rp.instrument(openai.OpenAI(...))"
        )
    rp_openai.instrument(llm._get_client())
    rp_openai.instrument(llm._get_aclient())


def _instrument_tool(tool: Any, side_effects: set[str]) -> None:
    name = str(tool.metadata.name)
    effects = name in side_effects
    side_effects.discard(name)
    if getattr(tool.call, "__replayable__", None) is not None:
        return
    codec = _OutputCodec()
    call = boundary(name=f"llama_index.tool:{name}", kind="tool", side_effects=effects, codec=codec)
    acall = boundary(
        name=f"llama_index.tool:{name}.async", kind="tool", side_effects=effects, codec=codec
    )
    # object.__setattr__: tools may be pydantic-like objects that refuse unknown attributes.
    object.__setattr__(tool, "call", call(tool.call))
    object.__setattr__(tool, "acall", acall(tool.acall))


def instrument(obj: Any, *, side_effects: Iterable[str] = ()) -> Any:
    """Record ``obj``: a LlamaIndex OpenAI LLM, a ``FunctionTool``, or an agent holding them
    (``side_effects`` names the tools that change the world). Returns the same object.

    For example (a sketch, not run as a doctest)::

        llm = instrument(OpenAI(model="gpt-4o-mini"))
    """
    core_llm = _load("llama_index.core.llms").LLM
    tool_cls = _load("llama_index.core.tools").FunctionTool
    names = set(side_effects)
    if isinstance(obj, core_llm):
        if names:
            raise UnsupportedClient(
                f"side_effects={sorted(names)!r}: an LLM has no tools; pass them with the agent"
            )
        _instrument_llm(obj)
        return obj
    llms: list[Any]
    tools: list[Any]
    if isinstance(obj, tool_cls):
        llms, tools = [], [obj]
    elif isinstance(getattr(obj, "llm", None), core_llm) and hasattr(obj, "tools"):
        llms, tools = [obj.llm], [t for t in (obj.tools or ()) if isinstance(t, tool_cls)]
    else:
        raise UnsupportedClient(
            f"cannot instrument {type(obj).__module__}.{type(obj).__qualname__}: "
            f"replayable.integrations.llama_index supports {SUPPORTED}"
        )
    held = sorted(str(t.metadata.name) for t in tools)
    for llm in llms:
        _instrument_llm(llm)
    for tool in tools:
        _instrument_tool(tool, names)
    if names:
        raise UnsupportedClient(
            f"side_effects names tools {sorted(names)!r} that {type(obj).__qualname__} does "
            f"not hold (functions given to an agent become tools when it runs: pass "
            f"FunctionTool.from_defaults(fn)); it holds {held!r}"
        )
    return obj
