"""Integrations with model SDKs and frameworks; each is an optional extra, imported lazily.

>>> from replayable.integrations import instrument
>>> client = instrument(openai.OpenAI())      # or anthropic.Anthropic(), or a LangGraph graph
"""

from __future__ import annotations

from typing import Any

from replayable.errors import UnsupportedClient

__all__ = ["instrument"]


def instrument(obj: Any) -> Any:
    """Instrument an OpenAI or Anthropic client, or a LangGraph graph; returns the same object.

    >>> app = instrument(builder.compile())
    """
    top = type(obj).__module__.partition(".")[0]
    if top == "openai":
        from replayable.integrations import openai

        return openai.instrument(obj)
    if top == "anthropic":
        from replayable.integrations import anthropic

        return anthropic.instrument(obj)
    if top == "langgraph":
        from replayable.integrations import langgraph

        return langgraph.instrument(obj)
    raise UnsupportedClient(
        f"cannot instrument {type(obj).__module__}.{type(obj).__qualname__}: supported are "
        "openai.OpenAI, openai.AsyncOpenAI, anthropic.Anthropic, anthropic.AsyncAnthropic and "
        "LangGraph graphs (StateGraph or compiled)"
    )
