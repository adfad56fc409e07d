"""``@boundary``: the semantic seam where a call is recorded and replayed.

Outside a record or replay, a boundary reads one context variable and calls straight through.
Inside one, it hands the call to the active session (:mod:`replayable.record`,
:mod:`replayable.replay`), which snapshots the input at call time and the output at return.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import typing
from collections.abc import Callable, Iterable
from typing import Any, Literal, Protocol, TypeVar, overload

from replayable import _errors_codec, canonical, context
from replayable._exports import publish
from replayable._registry import REGISTRY as _REGISTRY
from replayable._registry import register, registry
from replayable.context import SESSION
from replayable.errors import UnknownBoundary

__all__ = [
    "Boundary",
    "Codec",
    "Kind",
    "bare_name",
    "boundary",
    "get_boundary",
    "register_error_codec",
    "registry",
    "resolve_live",
    "resolve_name",
]

# Where a recorded exception is encoded and rebuilt; re-exported here, where integrations
# register their SDK's error types.
register_error_codec = _errors_codec.register_error_codec

F = TypeVar("F", bound=Callable[..., Any])

Kind = Literal["llm", "tool", "retrieval", "agent", "clock", "node"]
"""The kinds replayable itself knows (``agent`` runs live in a replay, ``clock`` is ``rp.now()``
and friends); any other string names a kind of your own."""


class Codec(Protocol):
    """Turns a boundary's return value (or each streamed chunk) into JSON and back."""

    def encode(self, value: Any, /) -> Any: ...

    def decode(self, data: Any, /) -> Any: ...


_MISSING = object()


class Boundary:
    """A registered boundary: the function, how it is identified, and how it is keyed."""

    def __init__(
        self,
        fn: Callable[..., Any],
        *,
        name: str,
        kind: str,
        side_effects: bool,
        key: Iterable[str] | None,
        ignore: Iterable[str],
        redact: Any,
        codec: Codec | None,
        transient: Iterable[str],
        serve_cut: bool = False,
    ) -> None:
        self.fn = fn
        self.name = name
        self.kind = kind
        self.side_effects = side_effects
        self.key_fields = tuple(key) if key is not None else None
        self.ignore = frozenset(ignore)
        self.codec = codec
        self.serve_cut = serve_cut
        """A replay serves an output stored cut as its marker instead of refusing it."""
        self.transient = canonical.DEFAULT_TRANSIENT_KEYS | frozenset(transient)
        self.redact_keys: tuple[str, ...] = ()
        self.redactors: tuple[Callable[[Any], Any], ...] = ()
        if callable(redact):
            self.redactors = (redact,)
        elif redact is not None:
            self.redact_keys = tuple(redact)
        self.is_async = inspect.iscoroutinefunction(fn)
        self.is_gen = inspect.isgeneratorfunction(fn)
        self.is_agen = inspect.isasyncgenfunction(fn)
        self._init_binding()
        self._return_type: Any = _MISSING
        self.wrapper: Callable[..., Any] = fn

    @property
    def bare_name(self) -> str:
        """The function's own name, without module or class."""
        return bare_name(self.name)

    def _init_binding(self) -> None:
        try:
            sig = inspect.signature(self.fn)
        except (TypeError, ValueError):
            sig = None
        self.signature = sig
        params = list(sig.parameters.values()) if sig else []
        self._skip_first = bool(params) and params[0].name in ("self", "cls")
        simple = [
            p
            for p in params
            if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD) and not p.name.startswith("*")
        ]
        self._fast = sig is not None and len(simple) == len(params)
        self._names = [p.name for p in simple]
        self._kw_names = frozenset(p.name for p in simple if p.kind is p.POSITIONAL_OR_KEYWORD)
        # Every parameter passed by keyword, in order (the usual call of a tool or LLM
        # function): the bound input is the keywords as they are.
        self._kw_order = (
            tuple(self._names) if params and len(self._kw_names) == len(params) else None
        )
        self._defaults = {p.name: p.default for p in simple if p.default is not p.empty}

    def bind(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
        """Bind a call's arguments to parameter names, ``self``/``cls`` left out, defaults filled.

        ``*args`` lands under its parameter name; ``**kwargs`` is merged into the top level.
        """
        if self._fast and not kwargs and len(args) <= len(self._names):
            bound = dict(zip(self._names, args, strict=False))
            if len(args) < len(self._names):
                for name in self._names[len(args) :]:
                    if name in self._defaults:
                        bound[name] = self._defaults[name]
        elif not args and tuple(kwargs) == self._kw_order:
            bound = dict(kwargs)
        elif (
            self._fast
            and len(args) <= len(self._names)
            and kwargs.keys() <= self._kw_names
            and (fast := self._bind_keywords(args, kwargs)) is not None
        ):
            bound = fast
        elif self.signature is not None:
            try:
                ba = self.signature.bind(*args, **kwargs)
            except TypeError:
                return {"args": list(args), **kwargs}
            ba.apply_defaults()
            bound = {}
            for name, value in ba.arguments.items():
                kind = self.signature.parameters[name].kind
                if kind is inspect.Parameter.VAR_KEYWORD:
                    bound.update(value)
                else:
                    bound[name] = value
        else:
            return {"args": list(args), **kwargs}
        if self._skip_first and self._names:
            bound.pop(self._names[0], None)
        return bound

    def _bind_keywords(
        self, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> dict[str, Any] | None:
        """``bind`` for plain parameters passed by keyword, without ``inspect``; None when the
        call does not bind cleanly (the slow path then says so the way it always has)."""
        bound = dict(zip(self._names, args, strict=False))
        used = 0
        for name in self._names[len(args) :]:
            if name in kwargs:
                bound[name] = kwargs[name]
                used += 1
            elif name in self._defaults:
                bound[name] = self._defaults[name]
            else:
                return None  # a required parameter is missing
        return bound if used == len(kwargs) else None  # else: one given twice

    def key_view(self, value: Any) -> Any:
        """The part of a bound, redacted input that identifies the call."""
        if not isinstance(value, dict):
            return value
        if self.key_fields is not None:
            return {k: value[k] for k in self.key_fields if k in value}
        if self.ignore:
            return {k: v for k, v in value.items() if k not in self.ignore}
        return value

    def encode_output(self, value: Any) -> Any:
        """The JSON-able form of a return value (or chunk): the codec's, else the value itself."""
        return self.codec.encode(value) if self.codec is not None else value

    def decode_output(self, data: Any) -> Any:
        """Rebuild a return value from its recorded JSON: codec, then return annotation."""
        if self.codec is not None:
            return self.codec.decode(data)
        target = self._return_type
        if target is _MISSING:
            target = self._resolve_return_type()
        if target is None or data is None:
            return data
        try:
            if hasattr(target, "model_validate"):
                return target.model_validate(data)
            if dataclasses.is_dataclass(target) and isinstance(data, dict):
                return typing.cast(Any, target)(**data)
        except Exception:
            return data
        return data

    def _resolve_return_type(self) -> Any:
        if self._return_type is _MISSING:
            target: Any = None
            try:
                hints = typing.get_type_hints(self.fn)
                ret = hints.get("return")
                if isinstance(ret, type) and (
                    hasattr(ret, "model_validate") or dataclasses.is_dataclass(ret)
                ):
                    target = ret
            except Exception:
                target = None
            self._return_type = target
        return self._return_type

    def __repr__(self) -> str:
        return f"<Boundary {self.name} kind={self.kind}>"


def get_boundary(fn_or_name: Any) -> Boundary:
    """The :class:`Boundary` behind a decorated function, or registered under a name.

    >>> @boundary(kind="tool", side_effects=True, name="app.tools:erase")
    ... def erase(record_id: int) -> None: ...
    >>> get_boundary(erase).side_effects
    True
    >>> get_boundary("app.tools:erase").kind
    'tool'
    """
    b = getattr(fn_or_name, "__replayable__", None)
    if isinstance(b, Boundary):
        return b
    if isinstance(fn_or_name, str):
        return _REGISTRY[resolve_name(fn_or_name, _REGISTRY)]
    raise UnknownBoundary(f"{fn_or_name!r} is not a replayable boundary")


def bare_name(name: str) -> str:
    """A boundary's bare function name: ``pkg.mod:Class.method`` -> ``method``."""
    return name.rsplit(":", 1)[-1].rsplit(".", 1)[-1]


@overload
def resolve_name(name: str, names: Iterable[str]) -> str: ...


@overload
def resolve_name(name: str, names: Iterable[str], *, missing_ok: bool) -> str | None: ...


def resolve_name(name: str, names: Iterable[str], *, missing_ok: bool = False) -> str | None:
    """Resolve a full ``module:qualname`` or an unambiguous bare function name to a full name.

    Raises :class:`UnknownBoundary` when the name is ambiguous, or unknown (unless
    ``missing_ok``, which returns None instead).
    """
    pool = set(names)
    if name in pool:
        return name
    matches = sorted(n for n in pool if bare_name(n) == name)
    if len(matches) > 1:  # a user's bare name means their boundary, not one of ours
        own = [n for n in matches if not n.startswith(("replayable:", "replayable."))]
        matches = own if len(own) == 1 else matches
    if len(matches) == 1:
        return matches[0]
    if not matches:
        if missing_ok:
            return None
        known = ", ".join(sorted(pool)[:10]) or "none"
        raise UnknownBoundary(
            f"no boundary named {name!r} (known: {known}); "
            "import the module that defines it, or use its full module:qualname"
        )
    raise UnknownBoundary(f"boundary name {name!r} is ambiguous; use one of: {', '.join(matches)}")


def resolve_live(
    entries: Iterable[str], recorded: set[str]
) -> tuple[set[str], set[tuple[str, int]]]:
    """Resolve ``live=`` entries to (full names, (full name, N) pairs).

    An entry is a full ``module:qualname``, a bare function name (resolved among the recording's
    boundaries first, then among every registered one; ambiguous is an error), or ``name#N``:
    only the N-th call of that boundary (1-based, in start order).
    """
    names: set[str] = set()
    calls: set[tuple[str, int]] = set()
    known: set[str] | None = None
    for entry in entries:
        name, _, nth = entry.partition("#")
        full = resolve_name(name, recorded, missing_ok=True)
        if full is None:
            if known is None:
                known = set(registry()) | recorded
            full = resolve_name(name, known)
        if nth:
            if not nth.isdigit() or int(nth) < 1:
                raise UnknownBoundary(f"bad call number in {entry!r}: use name#N with N >= 1")
            calls.add((full, int(nth)))
        else:
            names.add(full)
    return names, calls


def _wrapper(b: Boundary, func: Callable[..., Any]) -> Callable[..., Any]:
    """What the decorator puts in the function's place: a call outside any run goes straight
    to ``func``; inside one, to the run's session, as the function's shape (generator, async
    generator, coroutine or plain) needs."""
    if b.is_agen:
        return _agen_wrapper(b, func)
    if b.is_gen:
        return _gen_wrapper(b, func)
    if b.is_async:
        return _async_wrapper(b, func)
    return _plain_wrapper(b, func)


def _agen_wrapper(b: Boundary, func: Callable[..., Any]) -> Callable[..., Any]:
    """The wrapper of an async generator."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        session = SESSION.get()
        if session is None:
            if context.ACTIVE:
                context.orphan_call(b)
            return func(*args, **kwargs)
        return session.call_agen(b, args, kwargs)

    return wrapper


def _gen_wrapper(b: Boundary, func: Callable[..., Any]) -> Callable[..., Any]:
    """The wrapper of a generator."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        session = SESSION.get()
        if session is None:
            if context.ACTIVE:
                context.orphan_call(b)
            return func(*args, **kwargs)
        return session.call_gen(b, args, kwargs)

    return wrapper


def _async_wrapper(b: Boundary, func: Callable[..., Any]) -> Callable[..., Any]:
    """The wrapper of a coroutine function."""

    async def wrapper(*args: Any, **kwargs: Any) -> Any:
        session = SESSION.get()
        if session is None:
            if context.ACTIVE:
                context.orphan_call(b)
            return await func(*args, **kwargs)
        return await session.call_async(b, args, kwargs)

    return wrapper


def _plain_wrapper(b: Boundary, func: Callable[..., Any]) -> Callable[..., Any]:
    """The wrapper of a plain function."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        session = SESSION.get()
        if session is None:
            if context.ACTIVE:
                context.orphan_call(b)
            return func(*args, **kwargs)
        return session.call(b, args, kwargs)

    return wrapper


@overload
def boundary(fn: F) -> F: ...


@overload
def boundary(
    fn: None = None,
    *,
    name: str | None = None,
    kind: Kind | str = "tool",
    side_effects: bool = False,
    key: Iterable[str] | None = None,
    ignore: Iterable[str] = (),
    redact: Any = None,
    codec: Codec | None = None,
    transient: Iterable[str] = (),
    serve_cut: bool = False,
) -> Callable[[F], F]: ...


def boundary(
    fn: F | None = None,
    *,
    name: str | None = None,
    kind: Kind | str = "tool",
    side_effects: bool = False,
    key: Iterable[str] | None = None,
    ignore: Iterable[str] = (),
    redact: Any = None,
    codec: Codec | None = None,
    transient: Iterable[str] = (),
    serve_cut: bool = False,
) -> F | Callable[[F], F]:
    """Mark a function as a replayable boundary.

    Works on sync and async functions, generators and async generators (streamed chunks are
    recorded and replayed in order) and methods (``self``/``cls`` are left out of the input).

    - ``name``: defaults to ``module:qualname``; used to name the boundary in ``live=``.
    - ``kind``: ``"llm"``, ``"tool"``, ``"retrieval"``, ``"agent"`` (agents run live in replay)...
    - ``side_effects``: the function changes the world; replay never calls it unless told to.
    - ``key``: allow-list of argument names that identify the call; ``ignore``: names left out
      of the key (still stored); ``transient``: extra keys dropped from the key at any depth.
    - ``redact``: extra secret key names, or a callable applied to the JSON input and output.
    - ``codec``: an object with ``encode(value)`` / ``decode(json)`` for the return value.
    - ``serve_cut``: a replay serves an output stored cut (over the recording's size cap) as
      its ``{"$cut": {...}}`` marker instead of raising :class:`~replayable.errors.CutValue`.

    >>> @boundary(kind="tool", side_effects=True)
    ... def delete_record(record_id: int) -> bool: ...
    """

    def decorate(func: F) -> F:
        bname = name or f"{func.__module__}:{func.__qualname__}"
        b = Boundary(
            func,
            name=bname,
            kind=kind,
            side_effects=side_effects,
            key=key,
            ignore=ignore,
            redact=redact,
            codec=codec,
            transient=transient,
            serve_cut=serve_cut,
        )
        wrapper = _wrapper(b, func)
        functools.update_wrapper(wrapper, func)
        setattr(wrapper, "__replayable__", b)  # noqa: B010
        b.wrapper = wrapper
        register(b)
        return typing.cast(F, wrapper)

    if fn is not None:
        return decorate(fn)
    return decorate


publish(globals())
