"""Record and replay smolagents: its API models, tools and agents.

For example (a sketch, not run as a doctest)::

    from smolagents import OpenAIServerModel, ToolCallingAgent
    import replayable as rp

    agent = rp.instrument(
        ToolCallingAgent(tools=[place_order], model=OpenAIServerModel("gpt-4o-mini")),
        side_effects=["place_order"],
    )
    with rp.record(name="shop"):
        agent.run("Two mugs, please.")

A model records at the SDK it drives (its public ``client``): ``OpenAIServerModel`` /
``OpenAIModel`` / ``AzureOpenAIModel`` through the OpenAI SDK (``openai:chat.completions.create``,
``_stream`` when streaming), ``LiteLLMModel`` through LiteLLM (``litellm:completion``). A tool
(``Tool`` instances and ``@tool`` functions) records at its ``forward`` as
``smolagents.tool:<name>`` of kind ``tool``; ``side_effects=`` names the ones that change the
world. An agent (``ToolCallingAgent``, ``CodeAgent``) is its model, its tools and its managed
agents'; the built-in ``final_answer`` tool is left as it is (it only returns its argument).
All through public attributes.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from types import ModuleType
from typing import Any

from replayable.boundary import boundary
from replayable.errors import UnsupportedClient
from replayable.integrations import litellm as rp_litellm
from replayable.integrations import openai as rp_openai

__all__ = ["SUPPORTED", "instrument"]

SUPPORTED = (
    "smolagents models (OpenAIServerModel, AzureOpenAIModel, LiteLLMModel), tools and agents "
    "(ToolCallingAgent, CodeAgent)"
)
_PURE = ("final_answer",)


def _load() -> ModuleType:
    try:
        return importlib.import_module("smolagents")
    except ImportError as exc:
        raise UnsupportedClient(
            "smolagents is not installed: pip install 'replayable[smolagents]'"
        ) from exc


def _instrument_model(model: Any, sm: ModuleType) -> None:
    client = getattr(model, "client", None)
    if isinstance(model, sm.LiteLLMModel) and isinstance(client, ModuleType):
        rp_litellm.instrument(client)
    elif isinstance(model, sm.OpenAIModel) and client is not None:
        rp_openai.instrument(client)
    else:
        raise UnsupportedClient(
            f"cannot instrument the model {type(model).__module__}.{type(model).__qualname__}: "
            f"replayable.integrations.smolagents supports {SUPPORTED}"
        )


def _instrument_tool(tool: Any, side_effects: set[str]) -> None:
    name = str(tool.name)
    side_effects_here = name in side_effects
    side_effects.discard(name)
    forward = tool.forward
    if name in _PURE or getattr(forward, "__replayable__", None) is not None:
        return
    deco = boundary(name=f"smolagents.tool:{name}", kind="tool", side_effects=side_effects_here)
    tool.forward = deco(forward)


def _agent_parts(agent: Any) -> tuple[list[Any], list[Any]]:
    """The models and tools of an agent and its managed agents."""
    models, tools = [agent.model], list(getattr(agent, "tools", {}).values())
    for managed in (getattr(agent, "managed_agents", None) or {}).values():
        more_models, more_tools = _agent_parts(managed)
        models += more_models
        tools += more_tools
    return models, tools


def instrument(obj: Any, *, side_effects: Iterable[str] = ()) -> Any:
    """Record ``obj``: a smolagents model, tool or agent (``side_effects`` names the tools that
    change the world). Returns the same object.

    For example (a sketch, not run as a doctest)::

        model = instrument(OpenAIServerModel("gpt-4o-mini"))
    """
    sm = _load()
    names = set(side_effects)
    if isinstance(obj, sm.Model):
        if names:
            raise UnsupportedClient(
                f"side_effects={sorted(names)!r}: a model has no tools; pass them with the agent"
            )
        _instrument_model(obj, sm)
        return obj
    models: list[Any]
    tools: list[Any]
    if isinstance(obj, sm.Tool):
        models, tools = [], [obj]
    elif isinstance(obj, sm.MultiStepAgent):
        models, tools = _agent_parts(obj)
    else:
        raise UnsupportedClient(
            f"cannot instrument {type(obj).__module__}.{type(obj).__qualname__}: "
            f"replayable.integrations.smolagents supports {SUPPORTED}"
        )
    held = sorted(str(t.name) for t in tools)
    for model in models:
        _instrument_model(model, sm)
    for tool in tools:
        _instrument_tool(tool, names)
    if names:
        raise UnsupportedClient(
            f"side_effects names tools {sorted(names)!r} that {type(obj).__qualname__} does "
            f"not hold; it holds {held!r}"
        )
    return obj
