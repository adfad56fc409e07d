"""Integrations with model SDKs and frameworks; each is an optional extra, imported lazily.

For example (a sketch, not run as a doctest)::

    import replayable as rp
    client = rp.instrument(openai.OpenAI())      # or an Agent, a LangGraph graph, ...

:func:`instrument` looks the object up in :data:`INTEGRATIONS` (checked in order, by the modules
its type comes from, so no SDK is imported to decide) and hands it to that stack's module, which
is imported only then. A stack's module exposes
``instrument(obj, *, side_effects=(), **options) -> obj``.

Adding a stack is one :class:`Integration` entry in :data:`INTEGRATIONS` plus its module.
"""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from replayable.errors import UnsupportedClient

__all__ = ["INTEGRATIONS", "Integration", "instrument", "instrument_all", "origin"]


def origin(obj: Any) -> tuple[str, ...]:
    """The dotted modules ``obj`` comes from: a module's own name, a function's module, or the
    module of each class in its type's MRO (so subclasses defined elsewhere still match)."""
    if isinstance(obj, ModuleType):
        return (obj.__name__,)
    if inspect.isroutine(obj):
        return (str(getattr(obj, "__module__", None) or ""),)
    cls = obj if isinstance(obj, type) else type(obj)
    return tuple(c.__module__ for c in cls.__mro__ if c is not object)


def from_modules(*prefixes: str) -> Callable[[Any], bool]:
    """A match test: does ``obj`` come from a module under one of ``prefixes``?

    For example (a sketch, not run as a doctest)::

        from_modules("openai")(openai.OpenAI())
        # -> True
    """

    def matches(obj: Any) -> bool:
        return any(mod == p or mod.startswith(p + ".") for mod in origin(obj) for p in prefixes)

    return matches


def _all_of(test: Callable[[Any], bool]) -> Callable[[Any], bool]:
    """A match test for ``obj`` itself or, for a non-empty list or tuple, every item in it."""

    def matches(obj: Any) -> bool:
        if isinstance(obj, (list, tuple)):
            return bool(obj) and all(test(item) for item in obj)
        return test(obj)

    return matches


@dataclass(frozen=True)
class Integration:
    """One supported stack: how to recognise its objects and where its instrumenter lives.

    ``matches`` must not import the stack (use :func:`from_modules`); ``module`` is imported
    only when an object matches; ``extra`` is the ``pip install 'replayable[extra]'`` name;
    ``supported`` lists, for error messages, what the stack accepts.
    """

    name: str
    module: str
    extra: str
    supported: str
    matches: Callable[[Any], bool]
    library: str = ""
    """The top-level module :func:`instrument` with no argument watches for; the stack's
    module then has ``instrument_library(module)`` (every object made from then on records)."""


INTEGRATIONS: list[Integration] = [
    Integration(
        "openai",
        "replayable.integrations.openai",
        "openai",
        "openai.OpenAI, openai.AsyncOpenAI, openai.AzureOpenAI, openai.AsyncAzureOpenAI",
        from_modules("openai"),
        library="openai",
    ),
    Integration(
        "anthropic",
        "replayable.integrations.anthropic",
        "anthropic",
        "anthropic.Anthropic, anthropic.AsyncAnthropic",
        from_modules("anthropic"),
        library="anthropic",
    ),
    Integration(
        "openai-agents",
        "replayable.integrations.openai_agents",
        "agents",
        "agents.Agent (with its handoffs, function tools and MCP servers), agents.FunctionTool, "
        "agents.mcp.MCPServer",
        from_modules("agents"),
    ),
    Integration(
        "litellm",
        "replayable.integrations.litellm",
        "litellm",
        "the litellm module, litellm.completion, litellm.acompletion",
        from_modules("litellm"),
        library="litellm",
    ),
    Integration(
        "langgraph",
        "replayable.integrations.langgraph",
        "langgraph",
        "LangGraph graphs (StateGraph or compiled)",
        from_modules("langgraph"),
    ),
    Integration(
        "langchain",
        "replayable.integrations.langchain",
        "langchain",
        "LangChain chat models (BaseChatModel) and tools (BaseTool, or a list of them)",
        _all_of(from_modules("langchain_core")),
    ),
    Integration(
        "pydantic-ai",
        "replayable.integrations.pydantic_ai",
        "pydantic-ai",
        "pydantic_ai.Agent and its models",
        from_modules("pydantic_ai"),
    ),
    Integration(
        "mcp",
        "replayable.integrations.mcp",
        "mcp",
        "mcp.Client, mcp.ClientSession",
        from_modules("mcp"),
    ),
    Integration(
        "a2a",
        "replayable.integrations.a2a",
        "a2a",
        "a2a.client.Client (from create_client or ClientFactory)",
        from_modules("a2a"),
    ),
    Integration(
        "http",
        "replayable.integrations.http",
        "http",
        "httpx.Client, httpx.AsyncClient, requests.Session, and the httpx and requests modules "
        "(every client created afterwards)",
        from_modules("httpx", "requests"),
    ),
    Integration(
        "dspy",
        "replayable.integrations.dspy",
        "dspy",
        "dspy.LM (every engine), dspy.Tool, and modules holding tools (dspy.ReAct)",
        from_modules("dspy"),
        library="dspy",
    ),
    Integration(
        "autogen",
        "replayable.integrations.autogen",
        "autogen",
        "autogen_core model clients (OpenAIChatCompletionClient...), tools (FunctionTool...) "
        "and autogen_agentchat.agents.AssistantAgent",
        from_modules("autogen_core", "autogen_ext", "autogen_agentchat"),
    ),
    Integration(
        "google-adk",
        "replayable.integrations.google_adk",
        "google-adk",
        "google.adk agents (LlmAgent and its sub-agents), LiteLlm models, FunctionTool",
        from_modules("google.adk"),
        library="google.adk.models.lite_llm",
    ),
    Integration(
        "instructor",
        "replayable.integrations.instructor",
        "instructor",
        "instructor.Instructor and instructor.AsyncInstructor over an OpenAI or Anthropic client",
        from_modules("instructor"),
    ),
    Integration(
        "smolagents",
        "replayable.integrations.smolagents",
        "smolagents",
        "smolagents models (OpenAIServerModel, AzureOpenAIModel, LiteLLMModel), tools and "
        "agents (ToolCallingAgent, CodeAgent)",
        from_modules("smolagents"),
    ),
    Integration(
        "llama-index",
        "replayable.integrations.llama_index",
        "llama-index",
        "llama_index.llms.openai.OpenAI (and LLMs built on it), FunctionTool, and agents "
        "(FunctionAgent, ReActAgent) holding them",
        from_modules("llama_index"),
    ),
    # Further stacks: append an Integration here (first match wins, so put the more
    # specific prefix first).
]
"""Every stack :func:`instrument` knows, checked in order; the first match handles the object."""


def _load(integration: Integration) -> ModuleType:
    try:
        return importlib.import_module(integration.module)
    except ImportError as exc:
        raise UnsupportedClient(
            f"instrumenting {integration.name} needs its extra: "
            f"pip install 'replayable[{integration.extra}]' ({exc})"
        ) from exc


def supported(integrations: Iterable[Integration] = ()) -> str:
    """One line per stack naming what it accepts, for error messages."""
    return "; ".join(f"{i.name}: {i.supported}" for i in (integrations or INTEGRATIONS))


_EVERYTHING: Any = object()


def _library_hook(integration: Integration) -> Callable[[ModuleType], None]:
    def hook(module: ModuleType) -> None:
        _load(integration).instrument_library(module)

    return hook


def instrument_all() -> list[str]:
    """Instrument every supported library imported now, and each one imported later (an
    import hook); idempotent. Returns the libraries instrumented so far.

    For example (a sketch, not run as a doctest)::

        rp.instrument()          # or REPLAYABLE_AUTO_INSTRUMENT=1 before import replayable
        import openai            # every client made from here on records and replays
    """
    from replayable.integrations import _auto

    return _auto.install({i.library: _library_hook(i) for i in INTEGRATIONS if i.library})


def instrument(obj: Any = _EVERYTHING, *, side_effects: Iterable[str] = (), **options: Any) -> Any:
    """Make a client, model, agent, graph or session of a supported stack record and replay.

    With no argument, instruments every supported library instead (see :func:`instrument_all`)
    and returns the names of those instrumented so far.

    Returns ``obj`` instrumented in place, or an instrumented equivalent where the stack needs
    one (use the return value). ``side_effects`` names the framework's tools that change the
    world: replay never runs them and ``live=`` refuses them unless ``allow_side_effects=True``.
    Other ``options`` go to the stack's instrumenter. Each stack is an optional extra, imported
    only here; an object of no supported stack raises :class:`~replayable.errors.UnsupportedClient`
    listing what is supported.

    For example (a sketch, not run as a doctest)::

        client = rp.instrument(openai.OpenAI())
        agent = rp.instrument(Agent(name="shop", tools=[place_order]), side_effects=["place_order"])
    """
    if obj is _EVERYTHING:
        if side_effects or options:
            raise TypeError("rp.instrument() with no object takes no options")
        return instrument_all()
    for integration in INTEGRATIONS:
        if integration.matches(obj):
            module = _load(integration)
            return module.instrument(obj, side_effects=tuple(side_effects), **options)
    cls = type(obj)
    raise UnsupportedClient(
        f"cannot instrument {cls.__module__}.{cls.__qualname__}: supported are {supported()}"
    )
