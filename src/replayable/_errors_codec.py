"""How a recorded exception is kept and rebuilt: type, message, args, attributes, and any
``data`` a registered codec adds (an SDK's HTTP errors need more than their message)."""

from __future__ import annotations

import contextlib
import importlib
from collections.abc import Callable
from typing import Any

from replayable import canonical
from replayable.errors import RecordedError

__all__ = ["decode_error", "encode_error", "register_error_codec"]


_ERROR_CODECS: dict[type, tuple[Callable[[Any], Any], Callable[[type, dict[str, Any]], Any]]] = {}


def register_error_codec(
    cls: type[BaseException],
    encode: Callable[[Any], Any],
    decode: Callable[[type, dict[str, Any]], Any],
) -> None:
    """Record extra ``data`` for exceptions of ``cls`` (and subclasses) and rebuild them from it.

    For exceptions whose constructor needs more than their message (an SDK's HTTP errors).

    >>> class MyError(Exception):
    ...     def __init__(self, code: int) -> None:
    ...         super().__init__(f"failed with {code}")
    ...         self.code = code
    >>> register_error_codec(MyError, lambda e: {"code": e.code}, lambda t, d: t(d["data"]["code"]))
    >>> encode_error(MyError(429))["data"]
    {'code': 429}
    """
    _ERROR_CODECS[cls] = (encode, decode)


def _error_codec(cls: type) -> Any:
    return next((_ERROR_CODECS[k] for k in cls.__mro__ if k in _ERROR_CODECS), None)


def _text(value: Any) -> str:
    """``str(value)``, or a placeholder naming its type when its ``__str__`` fails."""
    try:
        return str(value)
    except Exception as exc:
        return f"<{type(value).__qualname__}: str() raised {type(exc).__name__}>"


def encode_error(exc: BaseException) -> dict[str, Any]:
    """The recorded form of an exception: type, message and args (and registered ``data``)."""
    # Nothing here may raise: the agent must get its own exception back, not one from the
    # recorder (an exception whose __str__ fails, args that cannot be printed).
    cls = type(exc)
    try:
        args = canonical.canonicalize(list(exc.args), drop=())
    except Exception:
        args = [_text(a) for a in exc.args]
    out = {"type": f"{cls.__module__}:{cls.__qualname__}", "message": _text(exc), "args": args}
    try:
        attrs = {k: v for k, v in vars(exc).items() if not k.startswith("_")}
    except Exception:
        attrs = {}
    if attrs:  # attributes a custom __init__ set (``self.code = code``), when they serialize
        with contextlib.suppress(Exception):
            out["attrs"] = canonical.canonicalize(attrs, drop=())
    codec = _error_codec(cls) if _ERROR_CODECS else None
    if codec is not None:
        with contextlib.suppress(Exception):
            out["data"] = canonical.canonicalize(codec[0](exc), drop=())
    return out


def decode_error(data: dict[str, Any]) -> BaseException:
    """Rebuild a recorded exception as its own type where possible, else :class:`RecordedError`."""
    type_name = str(data.get("type", "Exception"))
    message = str(data.get("message", ""))
    args = data.get("args") or []
    module_name, _, qualname = type_name.partition(":")
    try:
        obj: Any = importlib.import_module(module_name)
        for part in qualname.split("."):
            obj = getattr(obj, part)
    except Exception:
        return RecordedError(type_name, message)
    if not (isinstance(obj, type) and issubclass(obj, BaseException)):
        return RecordedError(type_name, message)
    codec = _error_codec(obj) if "data" in data else None
    if codec is not None:
        try:
            rebuilt = codec[1](obj, data)
            if isinstance(rebuilt, BaseException):
                return rebuilt
        except Exception:
            pass
    attrs = data.get("attrs") or {}
    try:
        exc = obj(*args)
        if str(exc) == message or not message:
            return _with_attrs(exc, attrs)
    except Exception:
        pass
    try:
        exc = obj.__new__(obj)
        BaseException.__init__(exc, *(args or [message]))
        return _with_attrs(exc, attrs)
    except Exception:
        return RecordedError(type_name, message)


def _with_attrs(exc: BaseException, attrs: dict[str, Any]) -> BaseException:
    """Restore recorded attributes, so ``except CodeError as e: e.code`` works in replay."""
    for name, value in attrs.items():
        with contextlib.suppress(Exception):
            setattr(exc, name, value)
    return exc
