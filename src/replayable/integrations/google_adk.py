"""Record and replay Google ADK agents on LiteLLM models (``LiteLlm``), and their tools.

For example (a sketch, not run as a doctest)::

    from google.adk.agents import LlmAgent
    from google.adk.models.lite_llm import LiteLlm
    import replayable as rp

    agent = rp.instrument(
        LlmAgent(name="shop", model=LiteLlm(model="openai/gpt-4o-mini"), tools=[place_order]),
        side_effects=["place_order"],
    )

A ``LiteLlm`` model's calls are LiteLLM's (``litellm:acompletion``, ``litellm:completion``,
``_stream`` for streams; see :mod:`replayable.integrations.litellm`). ADK keeps its own copy of
``litellm.acompletion`` and ``completion``, taken the first time a model runs; instrumenting
sets both LiteLLM's functions and ADK's copies, so the order of instrumenting and first use
does not matter (``rp.instrument()`` does the same when ADK is imported). An agent's function
tools (plain functions or ``FunctionTool``), in it and its sub-agents, become boundaries
``adk.tool:<name>`` of kind ``tool``; ``side_effects=`` names those that change the world.

Seam: ADK's copies live in ``google.adk.models.lite_llm`` as module attributes, a private
detail, so the ``google-adk`` extra pins the tested range (``google-adk>=2.13,<2.14``). Gemini
models (``google-genai``) are not covered yet.
"""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterable
from types import ModuleType
from typing import Any

from replayable.boundary import boundary
from replayable.errors import UnsupportedClient
from replayable.integrations import litellm as rp_litellm

__all__ = ["SUPPORTED", "instrument", "instrument_library"]

SUPPORTED = "google.adk agents (LlmAgent and its sub-agents), LiteLlm models, FunctionTool"

_ADK_LITELLM = "google.adk.models.lite_llm"


def _load(name: str) -> ModuleType:
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise UnsupportedClient(
            "Google ADK with LiteLLM is not installed: pip install 'replayable[google-adk]'"
        ) from exc


def _route_litellm() -> None:
    """LiteLLM's functions instrumented, and ADK's copies of them pointed at those."""
    os.environ.setdefault("LITELLM_MODE", "PRODUCTION")  # as ADK imports it: no .env autoload
    litellm = rp_litellm.instrument(_load("litellm"))
    adk = _load(_ADK_LITELLM)
    for name in ("acompletion", "completion"):
        setattr(adk, name, getattr(litellm, name))


def _wrap_function(func: Callable[..., Any], side_effects: set[str]) -> Callable[..., Any]:
    if getattr(func, "__replayable__", None) is not None:
        side_effects.discard(str(getattr(func, "__name__", "")))
        return func
    name = str(getattr(func, "__name__", "tool"))
    effects = name in side_effects
    side_effects.discard(name)
    deco = boundary(name=f"adk.tool:{name}", kind="tool", side_effects=effects)
    wrapped: Callable[..., Any] = deco(func)
    return wrapped


def _instrument_tools(agent: Any, side_effects: set[str], held: list[str], tool_cls: Any) -> None:
    tools = getattr(agent, "tools", None)
    if isinstance(tools, list):
        for i, item in enumerate(tools):
            tool: Any = item
            if isinstance(tool, tool_cls):
                held.append(str(tool.name))
                tool.func = _wrap_function(tool.func, side_effects)
            elif callable(tool) and hasattr(tool, "__name__"):
                held.append(str(tool.__name__))
                tools[i] = _wrap_function(tool, side_effects)
    for sub in getattr(agent, "sub_agents", None) or ():
        _instrument_tools(sub, side_effects, held, tool_cls)


def _models(agent: Any) -> list[Any]:
    found = [agent.model] if not isinstance(getattr(agent, "model", ""), str) else []
    for sub in getattr(agent, "sub_agents", None) or ():
        found += _models(sub)
    return found


def instrument(obj: Any, *, side_effects: Iterable[str] = ()) -> Any:
    """Record ``obj``: an ADK agent (its LiteLlm models and function tools, sub-agents
    included; ``side_effects`` names the tools that change the world), a ``LiteLlm`` model, or
    a ``FunctionTool``. Returns the same object.

    For example (a sketch, not run as a doctest)::

        agent = instrument(LlmAgent(name="shop", model=LiteLlm(model="openai/gpt-4o")))
    """
    lite_llm = _load(_ADK_LITELLM)
    tool_cls = _load("google.adk.tools").FunctionTool
    base_agent = _load("google.adk.agents").BaseAgent
    names = set(side_effects)
    held: list[str] = []
    if isinstance(obj, lite_llm.LiteLlm):
        if names:
            raise UnsupportedClient(
                f"side_effects={sorted(names)!r}: a model has no tools; pass them with the agent"
            )
        _route_litellm()
        return obj
    if isinstance(obj, tool_cls):
        held.append(str(obj.name))
        obj.func = _wrap_function(obj.func, names)
    elif isinstance(obj, base_agent):
        models = _models(obj)
        if any(isinstance(m, lite_llm.LiteLlm) for m in models):
            _route_litellm()
        _instrument_tools(obj, names, held, tool_cls)
    else:
        raise UnsupportedClient(
            f"cannot instrument {type(obj).__module__}.{type(obj).__qualname__}: "
            f"replayable.integrations.google_adk supports {SUPPORTED}"
        )
    if names:
        raise UnsupportedClient(
            f"side_effects names tools {sorted(names)!r} that {type(obj).__qualname__} does "
            f"not hold; it holds {sorted(held)!r}"
        )
    return obj


def instrument_library(module: ModuleType) -> None:
    """Point ADK's LiteLLM copies at the instrumented functions (``rp.instrument()``)."""
    _route_litellm()
