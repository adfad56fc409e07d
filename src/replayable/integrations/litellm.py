"""Record and replay LiteLLM's ``completion`` / ``acompletion``, streamed or not.

For example (a sketch, not run as a doctest)::

    import litellm, replayable as rp
    rp.instrument(litellm)                   # patches litellm.completion and litellm.acompletion
    with rp.record(name="support"):
        litellm.completion(model="openai/gpt-4o", messages=[...])

``rp.instrument(litellm.completion)`` (or ``acompletion``) returns an instrumented function
instead, for code that imported the function itself. Calls are boundaries of kind ``llm``:
``litellm:completion`` and ``litellm:acompletion``, with ``_stream`` for ``stream=True``. Every
argument is keyed except where the call is sent and how (:data:`IGNORED`: ``api_key``,
``api_base``, timeouts, retries...); secrets are redacted before anything is stored. Replay
returns LiteLLM's own ``ModelResponse`` (and ``ModelResponseStream`` chunks, iterated like the
live stream) and never calls the provider.

A response's ``_hidden_params`` (provider, ``response_cost``, ``api_base``, the provider's
response headers as ``additional_headers``...) are recorded with it, under the output's
``_hidden_params`` key, redacted like the rest of the output (a ``set-cookie`` header is
stored as ``[REDACTED]``), and set again on the replayed ``ModelResponse``. Values that are
not JSON are left out; pydantic values (a ``Usage``) come back as dicts. Stream chunks'
hidden params are not recorded.
"""

from __future__ import annotations

import functools
import importlib
from collections.abc import AsyncIterator, Callable, Iterable, Iterator
from types import ModuleType
from typing import Any

from replayable.boundary import Boundary, boundary
from replayable.context import SESSION, annotate
from replayable.errors import UnsupportedClient
from replayable.integrations._stainless import no_tools

__all__ = ["IGNORED", "instrument", "instrument_library"]

IGNORED = (
    "api_key",
    "api_base",
    "base_url",
    "api_version",
    "timeout",
    "request_timeout",
    "num_retries",
    "max_retries",
    "metadata",
    "stream",
    "stream_options",
    "user",
    "extra_headers",
    "headers",
    "client",
    "litellm_logging_obj",
)
"""Arguments stored with the step but left out of its key: where and how the call is sent."""

_MARK = "__replayable_litellm__"


def _load() -> ModuleType:
    try:
        return importlib.import_module("litellm")
    except ImportError as exc:
        raise UnsupportedClient(
            "LiteLLM is not installed: pip install 'replayable[litellm]'"
        ) from exc


HIDDEN = "_hidden_params"
"""The output key a plain response's ``_hidden_params`` are recorded under."""

_SKIP = object()


def _json(value: Any) -> Any:
    """``value`` as JSON types: pydantic models dumped, anything else not JSON left out."""
    if value is None or isinstance(value, str | bool | int | float):
        return value
    if isinstance(value, dict):
        out = {str(k): _json(v) for k, v in value.items()}
        return {k: v for k, v in out.items() if v is not _SKIP}
    if isinstance(value, list | tuple):
        return [v for v in map(_json, value) if v is not _SKIP]
    dump = getattr(value, "model_dump", None)
    if callable(dump):
        return _json(dump(mode="json"))
    return _SKIP


class _Codec:
    """LiteLLM responses (pydantic models) as JSON, rebuilt as ``ModelResponse`` or
    ``ModelResponseStream``; a plain response keeps its ``_hidden_params``."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name
        self.hidden = type_name == "ModelResponse"

    def encode(self, value: Any) -> Any:
        dump = getattr(value, "model_dump", None)
        if dump is None:
            return value
        data = dump(mode="json")
        hidden = getattr(value, HIDDEN, None) if self.hidden else None
        if isinstance(data, dict) and isinstance(hidden, dict) and hidden:
            data[HIDDEN] = _json(hidden)
        return data

    def decode(self, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        fields = dict(data)
        hidden = fields.pop(HIDDEN, None)
        resp = getattr(_load(), self.type_name)(**fields)
        if isinstance(hidden, dict):
            setattr(resp, HIDDEN, hidden)
        return resp


def _describe(resp: Any) -> dict[str, Any]:
    usage = getattr(resp, "usage", None)
    meta: dict[str, Any] = {
        "provider": "litellm",
        "response_model": getattr(resp, "model", None),
        "response_id": getattr(resp, "id", None),
        "system_fingerprint": getattr(resp, "system_fingerprint", None),
    }
    if usage is not None:
        meta["usage"] = {
            "input_tokens": getattr(usage, "prompt_tokens", None),
            "output_tokens": getattr(usage, "completion_tokens", None),
        }
    choices = getattr(resp, "choices", None) or ()
    reasons = [c.finish_reason for c in choices if getattr(c, "finish_reason", None)]
    if reasons:
        meta["finish_reasons"] = reasons
    tools = [
        tc.function.name
        for c in choices
        for tc in (getattr(getattr(c, "message", None), "tool_calls", None) or ())
    ]
    if tools:
        meta["tool_calls"] = tools
    return {k: v for k, v in meta.items() if v is not None}


def _static(kwargs: dict[str, Any]) -> None:
    annotate(provider="litellm", operation="chat", request_model=kwargs.get("model"))


_BOUNDARIES: dict[tuple[str, bool], Boundary] = {}


def _boundaries(name: str, original: Callable[..., Any], is_async: bool) -> tuple[Any, Any]:
    """The plain and streaming boundaries of ``litellm:<name>`` (created once)."""
    if (name, False) in _BOUNDARIES:
        return _BOUNDARIES[name, False].wrapper, _BOUNDARIES[name, True].wrapper
    plain_deco = boundary(
        name=f"litellm:{name}", kind="llm", ignore=IGNORED, codec=_Codec("ModelResponse")
    )
    stream_deco = boundary(
        name=f"litellm:{name}_stream",
        kind="llm",
        ignore=IGNORED,
        codec=_Codec("ModelResponseStream"),
    )
    plain: Any
    stream: Any
    if is_async:

        async def aplain(**kwargs: Any) -> Any:
            _static(kwargs)
            resp = await original(**kwargs)
            annotate(**_describe(resp))
            return resp

        async def astream(**kwargs: Any) -> AsyncIterator[Any]:
            _static(kwargs)
            async for chunk in await original(**kwargs):
                yield chunk

        plain, stream = plain_deco(aplain), stream_deco(astream)
    else:

        def splain(**kwargs: Any) -> Any:
            _static(kwargs)
            resp = original(**kwargs)
            annotate(**_describe(resp))
            return resp

        def sstream(**kwargs: Any) -> Iterator[Any]:
            _static(kwargs)
            yield from original(**kwargs)

        plain, stream = plain_deco(splain), stream_deco(sstream)
    _BOUNDARIES[name, False] = plain.__replayable__
    _BOUNDARIES[name, True] = stream.__replayable__
    return plain, stream


def _as_kwargs(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any] | None:
    """``completion(model, messages, ...)`` positional arguments as keywords (None if more)."""
    if len(args) > 2:
        return None
    named = dict(zip(("model", "messages"), args, strict=False))
    if set(named) & set(kwargs):
        return None
    return {**named, **kwargs}


def _plain_format(params: dict[str, Any]) -> dict[str, Any]:
    """A pydantic class as ``response_format`` becomes the JSON form LiteLLM itself sends for
    it (``type_to_response_format_param``), so the step's input is JSON (DSPy passes classes)."""
    fmt = params.get("response_format")
    if isinstance(fmt, type) and callable(getattr(fmt, "model_json_schema", None)):
        convert = importlib.import_module("litellm.utils").type_to_response_format_param
        return {**params, "response_format": convert(fmt)}
    return params


def _wrap(name: str, original: Callable[..., Any], is_async: bool) -> Callable[..., Any]:
    if getattr(original, _MARK, False):
        return original
    plain, stream = _boundaries(name, original, is_async)
    wrapped: Callable[..., Any]
    if is_async:

        async def acompletion(*args: Any, **kwargs: Any) -> Any:
            params = _as_kwargs(args, kwargs) if SESSION.get() is not None else None
            if params is None:
                return await original(*args, **kwargs)
            params = _plain_format(params)
            if params.get("stream") is True:
                return stream(**params)
            return await plain(**params)

        wrapped = acompletion
    else:

        def completion(*args: Any, **kwargs: Any) -> Any:
            params = _as_kwargs(args, kwargs) if SESSION.get() is not None else None
            if params is None:
                return original(*args, **kwargs)
            params = _plain_format(params)
            if params.get("stream") is True:
                return stream(**params)
            return plain(**params)

        wrapped = completion
    functools.update_wrapper(wrapped, original)
    setattr(wrapped, _MARK, True)
    return wrapped


def instrument(obj: Any, *, side_effects: Iterable[str] = ()) -> Any:
    """Record LiteLLM completions: pass the ``litellm`` module (patched in place, returned) or
    ``litellm.completion`` / ``litellm.acompletion`` (an instrumented function is returned).

    For example (a sketch, not run as a doctest)::

        rp.instrument(litellm)
        completion = rp.instrument(litellm.completion)
    """
    no_tools(side_effects, "LiteLLM")
    litellm = _load()
    if obj is litellm:
        litellm.completion = _wrap("completion", litellm.completion, False)
        litellm.acompletion = _wrap("acompletion", litellm.acompletion, True)
        return litellm
    name = getattr(obj, "__name__", None)
    if callable(obj) and name in ("completion", "acompletion"):
        return _wrap(str(name), obj, name == "acompletion")
    raise UnsupportedClient(
        f"cannot instrument {type(obj).__module__}.{type(obj).__qualname__}: "
        "replayable.integrations.litellm supports the litellm module, litellm.completion and "
        "litellm.acompletion"
    )


def instrument_library(module: ModuleType) -> None:
    """Patch ``litellm.completion`` and ``acompletion`` (``rp.instrument()``)."""
    instrument(module)
