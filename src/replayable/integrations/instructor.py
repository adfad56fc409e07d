"""Record and replay Instructor's patched clients (structured outputs, with their retries).

For example (a sketch, not run as a doctest)::

    import instructor, openai, replayable as rp
    client = rp.instrument(instructor.from_openai(openai.OpenAI()))
    with rp.record(name="extract"):
        user = client.chat.completions.create(model="gpt-4o-mini", response_model=User,
                                              messages=[...], max_retries=2)

Instructor drives the SDK client it wraps (``client.client``, public): instrumenting the
Instructor client instruments that SDK client (see :mod:`replayable.integrations.openai` and
:mod:`replayable.integrations.anthropic`), sync or async. Each attempt is the SDK call it makes,
so a validation retry is a step of its own: replay serves the attempts in order, Instructor
validates them again and returns the same model (or raises the same retry error), and no
request is sent. A client made with ``instructor.from_litellm`` has no SDK client: instrument
LiteLLM itself (``rp.instrument(litellm)``) before calling ``from_litellm``.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from replayable.errors import UnsupportedClient
from replayable.integrations import anthropic as rp_anthropic
from replayable.integrations import openai as rp_openai
from replayable.integrations._stainless import no_tools

__all__ = ["SUPPORTED", "instrument"]

SUPPORTED = (
    "instructor.Instructor and instructor.AsyncInstructor over an OpenAI or Anthropic client"
)


def instrument(obj: Any, *, side_effects: Iterable[str] = ()) -> Any:
    """Record the SDK calls of an Instructor client (its ``client``); returns the same client.

    For example (a sketch, not run as a doctest)::

        client = instrument(instructor.from_openai(openai.AsyncOpenAI()))
    """
    no_tools(side_effects, "an Instructor client")
    sdk = getattr(obj, "client", None)
    if sdk is None or not hasattr(obj, "create"):
        raise UnsupportedClient(
            f"cannot instrument {type(obj).__module__}.{type(obj).__qualname__}: "
            f"replayable.integrations.instructor supports {SUPPORTED}; for "
            "instructor.from_litellm, call rp.instrument(litellm) before from_litellm"
        )
    module = type(sdk).__module__.split(".", 1)[0]
    if module == "openai":
        rp_openai.instrument(sdk)
    elif module == "anthropic":
        rp_anthropic.instrument(sdk)
    else:
        raise UnsupportedClient(
            f"an Instructor client over {type(sdk).__module__}.{type(sdk).__qualname__}: "
            f"replayable.integrations.instructor supports {SUPPORTED}"
        )
    return obj
