"""Canonical form of values, and the keys that identify a call.

``canonicalize`` turns a Python value into stable JSON types: dict keys sorted, transient keys
(``run_id``, ``timestamp``, ...) dropped at any depth, datetimes as ISO 8601 with offset, Decimal,
UUID, Enum, Path, bytes, sets (sorted), tuples, dataclasses, Pydantic models and attrs classes
handled, ``-0.0`` folded into ``0.0`` and non-finite floats into ``null`` (as JSON has no NaN).
Anything else raises :class:`~replayable.errors.Unserializable` naming the path of the value.

``key`` is the SHA-256 of the canonical JSON. One orjson pass does the work; Python only walks the
value again when there is something to drop or fold, or to find the path of a bad value.

Sorting is for keys, hashes and diffs only. A *snapshot* (:func:`snapshot`, what a store, trace
file or cassette keeps and what a replay serves) keeps dicts in the order they were built, so an
agent that serializes a served value sees exactly what it saw when it was recorded.
:func:`clean_input` and :func:`input_key` turn a boundary's input snapshot into what is stored
(redacted, order kept) and into its key (over the sorted form, per the boundary's key rules).
"""

from __future__ import annotations

import base64
import contextlib
import dataclasses
import datetime as _dt
import functools
import hashlib
import re
from collections.abc import Iterable, Mapping
from decimal import Decimal
from enum import Enum
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

import ahocorasick_rs
import orjson

from replayable.errors import Unserializable
from replayable.redact import might_hold_secrets, redact, redact_split

if TYPE_CHECKING:
    from replayable.boundary import Boundary

__all__ = [
    "DEFAULT_TRANSIENT_KEYS",
    "JSON",
    "TAGGED_DICT",
    "TAGGED_META",
    "canonical_json",
    "canonicalize",
    "clean_input",
    "clean_output",
    "dumps",
    "has_tagged",
    "input_key",
    "key",
    "key_of_json",
    "keyed_input",
    "loads",
    "normalize",
    "normalize_words",
    "sanitize",
    "snapshot",
    "sorted_json",
    "untag",
]

JSON = Any
"""A value made only of dict (str keys), list, str, int, float, bool and None."""

DEFAULT_TRANSIENT_KEYS: frozenset[str] = frozenset(
    {"run_id", "trace_id", "span_id", "request_id", "timestamp", "created_at"}
)
"""Keys dropped from *keys* (never from stored values) wherever they appear."""

# Dataclasses go through ``_default`` (as dicts) so that sorting applies to their fields too:
# orjson's native dataclass output keeps declaration order even under OPT_SORT_KEYS.
_STR_KEYS = orjson.OPT_NAIVE_UTC | orjson.OPT_SERIALIZE_NUMPY | orjson.OPT_PASSTHROUGH_DATACLASS
_OPTS = _STR_KEYS | orjson.OPT_NON_STR_KEYS
_SORTED = _OPTS | orjson.OPT_SORT_KEYS


def _default(value: Any) -> Any:
    """orjson's fallback for the types it does not know natively."""
    if isinstance(value, Decimal):
        return str(value)
    if isinstance(value, PurePath):
        return str(value)
    if isinstance(value, bytes | bytearray | memoryview):
        return {"$bytes": base64.b64encode(bytes(value)).decode("ascii")}
    if isinstance(value, set | frozenset):
        return sorted(value, key=lambda item: orjson.dumps(item, default=_default, option=_SORTED))
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, Enum):
        return value.value
    dump = getattr(value, "model_dump", None)
    if dump is not None and callable(dump) and hasattr(type(value), "model_fields"):
        return dump(mode="json")
    if hasattr(type(value), "__attrs_attrs__"):
        return {a.name: getattr(value, a.name) for a in type(value).__attrs_attrs__}
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError


def _encode(value: Any, option: int) -> bytes:
    """orjson, with dict keys that are not strings checked first: a dict with two keys that
    are one JSON string (``1`` and ``"1"``, ``True`` and ``"true"``) is written as its
    ``[key, value]`` pairs under :data:`TAGGED_DICT`, so neither value is lost (:func:`untag`
    rebuilds it). Costs nothing for string keys (the first try)."""
    try:
        return orjson.dumps(value, default=_default, option=option & ~orjson.OPT_NON_STR_KEYS)
    except (TypeError, orjson.JSONEncodeError):
        pass
    if _collides(value, 0):
        value = _tag(value, option, 0)
    return orjson.dumps(value, default=_default, option=option)


TAGGED_DICT = "$dict"
"""The key under which a dict whose keys collide as JSON strings is stored as its pairs:
``{1: "a", "1": "b"}`` is ``{"$dict": [[1, "a"], ["1", "b"]]}``. Keys starting with ``$`` are
replayable's markers (``$bytes``, ``$unserializable``, ``$dict``)."""
_TAGGED_NEEDLE = b'"$dict"'
TAGGED_META = "dict_pairs"
"""The step metadata flag (``True``) the writer sets when a stored output holds a
:data:`TAGGED_DICT`: a replay rebuilds the dict (:func:`untag`) when it serves that output, so
the agent gets back what it got when the run was recorded. A recorded value that only looks
tagged and holds pairs (``{"$dict": [["k", 1]]}``, written by the agent itself) is rebuilt
too: ``$``-keys are replayable's markers."""


def _key_text(key: Any) -> str | None:
    """The JSON string a non-string dict key becomes, or None if it has none."""
    try:
        text: str = next(iter(orjson.loads(orjson.dumps({key: None}, option=_OPTS))))
    except (TypeError, orjson.JSONEncodeError, StopIteration):
        return None
    return text


def _walk(value: Any, depth: int) -> Any:
    """The container ``value`` is to the encoder: a dict, a list or tuple, what ``_default``
    turns an object into, or None for a leaf (or a value with no JSON form)."""
    if depth > 200 or isinstance(value, str | int | float | bool | type(None)):
        return None
    if isinstance(value, dict | list | tuple):
        return value
    try:
        converted = _default(value)
    except Exception:
        return None
    return converted if converted is not value else None


def _collides(value: Any, depth: int) -> bool:
    """Whether any dict in ``value`` has keys that collide as JSON strings."""
    node = _walk(value, depth)
    if node is None:
        return False
    if isinstance(node, dict):
        seen: set[str] = set()
        for k, v in node.items():
            text = k if isinstance(k, str) else _key_text(k)
            if text is not None:
                if text in seen:
                    return True
                seen.add(text)
            if _collides(v, depth + 1):
                return True
        return False
    return any(_collides(v, depth + 1) for v in node)


def _tag(value: Any, option: int, depth: int) -> Any:
    """``value`` with each dict whose keys collide written as its pairs (see ``_encode``)."""
    node = _walk(value, depth)
    if node is None:
        return value
    if isinstance(node, dict):
        items = [(k, _tag(v, option, depth + 1)) for k, v in node.items()]
        texts = [k if isinstance(k, str) else _key_text(k) for k, _ in items]
        named = [t for t in texts if t is not None]
        if len(set(named)) == len(named):
            return dict(items)
        pairs = [[k, v] for k, v in items]
        if option & orjson.OPT_SORT_KEYS:  # keys and hashes: one order, however it was built
            pairs.sort(key=lambda kv: orjson.dumps(kv[0], default=_default, option=_SORTED))
        return {TAGGED_DICT: pairs}
    return [_tag(v, option, depth + 1) for v in node]


def has_tagged(data: bytes) -> bool:
    """Whether stored JSON bytes may hold a :data:`TAGGED_DICT`: a ``memchr`` for ``$``
    first (most JSON has none; the whole needle costs ~1 µs per KB of quotes), then the
    needle."""
    return b"$" in data and _TAGGED_NEEDLE in data


def untag(value: JSON) -> Any:
    """A parsed value with every :data:`TAGGED_DICT` rebuilt as the dict it was recorded from
    (keys with their JSON types: ``1`` and ``"1"`` both kept). Anything else is returned as
    is, so a stored value that only looks tagged (pairs whose keys cannot be dict keys) stays
    data.

    >>> untag(loads(snapshot({1: "a", "1": "b"})))
    {1: 'a', '1': 'b'}
    """
    if isinstance(value, list):
        return [untag(v) for v in value]
    if not isinstance(value, dict):
        return value
    pairs = value.get(TAGGED_DICT) if len(value) == 1 else None
    if isinstance(pairs, list) and all(
        isinstance(p, list) and len(p) == 2 and isinstance(p[0], str | int | float | bool | None)
        for p in pairs
    ):
        return {p[0]: untag(p[1]) for p in pairs}
    return {k: untag(v) for k, v in value.items()}


def dumps(value: Any, *, sort_keys: bool = True) -> bytes:
    """Serialize ``value`` to JSON bytes in one orjson pass (keys sorted by default).

    Raises :class:`Unserializable` naming the path of the first value with no JSON form. A dict
    whose keys collide once made strings (``{1: "a", "1": "b"}``) is kept whole as its pairs
    (see :data:`TAGGED_DICT`).
    """
    try:
        return _encode(value, _SORTED if sort_keys else _OPTS)
    except Unserializable:
        raise
    except Exception as exc:  # also user code failing (a Mapping's __getitem__, a property)
        raise _locate(value, "", 0, exc) from None


def snapshot(value: Any) -> bytes:
    """JSON bytes of ``value`` with dicts in their own order: what is stored and served.

    >>> snapshot({"b": 1, "a": 2})
    b'{"b":1,"a":2}'
    """
    try:  # the common case, string keys: one orjson pass (what _encode tries first)
        return orjson.dumps(value, default=_default, option=_STR_KEYS)
    except Exception:
        return dumps(value, sort_keys=False)  # other keys, or why it has no JSON form


def sorted_json(data: bytes) -> bytes:
    """The same JSON with keys sorted at every depth: what keys and hashes are computed over.

    >>> sorted_json(b'{"b":1,"a":{"d":2,"c":3}}')
    b'{"a":{"c":3,"d":2},"b":1}'
    """
    value = orjson.loads(data)
    if has_tagged(data):
        value = _sort_pairs(value)
    return orjson.dumps(value, option=_SORTED)


def _sort_pairs(value: JSON) -> JSON:
    """Parsed JSON with the pairs of each :data:`TAGGED_DICT` in key order (as ``dumps``
    writes them), so a key does not depend on the order a colliding dict was built in."""
    if isinstance(value, list):
        return [_sort_pairs(v) for v in value]
    if not isinstance(value, dict):
        return value
    out = {k: _sort_pairs(v) for k, v in value.items()}
    pairs = out.get(TAGGED_DICT)
    if len(out) == 1 and isinstance(pairs, list):
        # Data that only looks tagged (an agent's own ``{"$dict": [null]}``) has items with no
        # first element: it stays in its order rather than failing the key (which lost the
        # whole event). Wherever each item has one, the order is what it always was.
        with contextlib.suppress(TypeError, IndexError, KeyError):
            out[TAGGED_DICT] = sorted(pairs, key=lambda p: orjson.dumps(p[0], option=_SORTED))
    return out


def loads(data: bytes | str) -> JSON:
    """Parse JSON bytes or text."""
    return orjson.loads(data)


def _join(path: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    if _PLAIN_NAME.fullmatch(part):
        return f"{path}.{part}" if path else part
    return f"{path}[{part!r}]"


_PLAIN_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


def _children(value: Any) -> Iterable[tuple[str | int, Any]]:
    if isinstance(value, Mapping):
        return ((k if isinstance(k, str) else str(k), v) for k, v in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return enumerate(value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return ((f.name, getattr(value, f.name)) for f in dataclasses.fields(value))
    if hasattr(type(value), "__attrs_attrs__"):
        return ((a.name, getattr(value, a.name)) for a in type(value).__attrs_attrs__)
    return ()


def _locate(value: Any, path: str, depth: int, exc: Exception) -> Unserializable:
    """Walk ``value`` to find the first part orjson refused, and name its path.

    Never raises: a value whose own code fails while being read (a ``Mapping`` whose
    ``__getitem__`` raises) is reported as unserializable at its path.
    """
    if depth > 200:
        return Unserializable(path, _type_name(value), "nesting too deep (a cycle?)")
    try:
        for part, child in _children(value):
            try:
                _encode(child, _SORTED)
            except Exception as child_exc:
                return _locate(child, _join(path, part), depth + 1, child_exc)
    except Exception as read_exc:
        return Unserializable(
            path, _type_name(value), f"reading it raised {type(read_exc).__name__}"
        )
    if isinstance(exc, Unserializable) and exc.path == "":
        return Unserializable(path, exc.type_name, _hint(exc))
    if not isinstance(exc, TypeError | orjson.JSONEncodeError):
        return Unserializable(path, _type_name(value), f"reading it raised {type(exc).__name__}")
    if isinstance(value, Mapping):
        bad = next((k for k in value if not isinstance(k, str | int | float | bool)), None)
        if bad is not None:
            return Unserializable(path, type(value).__name__, f"dict key {bad!r} is not a string")
    if isinstance(value, int) and not isinstance(value, bool):
        return Unserializable(path, "int", "integer outside the 64-bit range; pass it as a string")
    return Unserializable(path, _type_name(value))


def _type_name(value: Any) -> str:
    name = f"{type(value).__module__}.{type(value).__qualname__}"
    return name.removeprefix("builtins.")


def _hint(exc: Unserializable) -> str | None:
    text = str(exc)
    return text.split("; ", 1)[1] if "; " in text else None


def sanitize(value: Any, path: str = "", depth: int = 0) -> tuple[Any, list[str]]:
    """``value`` with each part that has no JSON form replaced by a marker naming its path.

    Returns (the sanitized value, the paths replaced). Only called once :func:`dumps` has
    failed, so everything that serializes is kept as it is.

    >>> sanitize({"uid": 7, "session": object()})[1]
    ['session']
    """
    try:
        _encode(value, _SORTED)
    except Exception as exc:
        try:
            children = list(_children(value)) if depth < 200 else []
        except Exception:  # its own code fails when read: it is marked whole
            children = []
        if not children:
            err = _locate(value, path, depth, exc)
            return {"$unserializable": err.path, "type": err.type_name}, [err.path]
        out: Any = {} if not isinstance(value, list | tuple | set | frozenset) else []
        bad: list[str] = []
        for part, child in children:
            clean, paths = sanitize(child, _join(path, part), depth + 1)
            bad.extend(paths)
            if isinstance(out, list):
                out.append(clean)
            else:
                out[part if isinstance(part, str) else str(part)] = clean
        return out, bad
    return value, []


def normalize(value: JSON, drop: frozenset[str] = DEFAULT_TRANSIENT_KEYS) -> JSON:
    """Drop ``drop`` keys at every depth and fold ``-0.0``; ``value`` is already JSON types."""
    if isinstance(value, dict):
        return {k: normalize(v, drop) for k, v in value.items() if k not in drop}
    if isinstance(value, list):
        return [normalize(v, drop) for v in value]
    if isinstance(value, float) and value == 0.0:
        return 0.0
    return value


@functools.lru_cache(maxsize=256)
def normalize_words(drop: frozenset[str]) -> tuple[bytes, ...]:
    """What a snapshot holds where keying it needs a Python pass: ``-0`` (of ``-0.0``) and
    each ``drop`` key as orjson writes it, ``"k":``. With none of them in it, an input is
    keyed from its sorted bytes as they are."""
    return (b"-0", *(b'"' + k.encode() + b'":' for k in drop))


@functools.lru_cache(maxsize=256)
def _normalize_matcher(drop: frozenset[str]) -> ahocorasick_rs.BytesAhoCorasick:
    """One pass finds both ``-0`` and how each dropped key appears in orjson output: ``"k":``."""
    return ahocorasick_rs.BytesAhoCorasick(list(normalize_words(drop)))


def _needs_normalize(data: bytes, drop: frozenset[str]) -> bool:
    """True when ``data`` may hold ``-0.0`` or a ``drop`` key (so a Python pass is needed)."""
    for index, _, end in _normalize_matcher(drop).find_matches_as_indexes(data):
        if index or data.startswith((b".0", b"e"), end):
            return True
    return False


def canonicalize(value: Any, *, drop: Iterable[str] | None = None) -> JSON:
    """Return the canonical JSON form of ``value``.

    >>> canonicalize({"b": 1, "a": {2, 1}, "request_id": "r-1"})
    {'a': [1, 2], 'b': 1}
    """
    dropped = DEFAULT_TRANSIENT_KEYS if drop is None else frozenset(drop)
    return normalize(orjson.loads(dumps(value)), dropped)


def canonical_json(value: Any, *, drop: Iterable[str] | None = None) -> bytes:
    """The canonical JSON bytes of ``value``: what :func:`key` hashes."""
    dropped = DEFAULT_TRANSIENT_KEYS if drop is None else frozenset(drop)
    data = dumps(value)
    if not _needs_normalize(data, dropped):
        return data
    return orjson.dumps(normalize(orjson.loads(data), dropped), option=_SORTED)


def key(value: Any, *, drop: Iterable[str] | None = None) -> str:
    """SHA-256 (hex) of the canonical JSON of ``value``.

    Equal for values that differ only in dict order or transient keys; raises
    :class:`Unserializable` for values with no canonical form.

    >>> key({"a": 1, "b": 2}) == key({"b": 2, "a": 1})
    True
    """
    return hashlib.sha256(canonical_json(value, drop=drop)).hexdigest()


def key_of_json(value: JSON, drop: frozenset[str] = DEFAULT_TRANSIENT_KEYS) -> str:
    """:func:`key` for a value that is already JSON types (as read back from a store)."""
    data = orjson.dumps(value, option=_SORTED)
    if has_tagged(data):  # pairs of a colliding dict in key order, however it was built
        value = _sort_pairs(value)
        data = orjson.dumps(value, option=_SORTED)
    if _needs_normalize(data, drop):
        data = orjson.dumps(normalize(value, drop), option=_SORTED)
    return hashlib.sha256(data).hexdigest()


def clean_input(
    b: Boundary, data: bytes, pii: Any = None, *, secrets: bool | None = None
) -> tuple[bytes, Any]:
    """Redact an input snapshot, keeping its order; with ``pii`` (a run's pseudonymizer),
    pseudonymize its personal data too. Recording and replay both call this, so a live
    input is stored, keyed and compared in the same form. ``secrets``: what
    :func:`~replayable.redact.might_hold_secrets` said of ``data``, when the caller asked it
    already (None: ask it).

    Returns (bytes, the parsed value, or None when nothing needed parsing).
    """
    value = None
    if b.redact_keys or b.redactors or (might_hold_secrets(data) if secrets is None else secrets):
        value = redact(orjson.loads(data), extra_keys=b.redact_keys, redactors=b.redactors)
        data = orjson.dumps(value, option=_OPTS)
    if pii is not None:
        return pii.clean(data, value)  # type: ignore[no-any-return]
    return data, value


def clean_output(
    b: Boundary,
    data: bytes,
    *,
    stream: bool = False,
    pii: Any = None,
    secrets: bool | None = None,
) -> bytes:
    """Redact an output snapshot, keeping its order: the one way every mode does it. A
    stream's text chunks are redacted as one text (a secret may span several chunks). With
    ``pii`` (a run's pseudonymizer), personal data is pseudonymized too, a stream's chunks
    read as one text the same way (a model streams an address token by token). ``secrets``:
    what :func:`~replayable.redact.might_hold_secrets` said of ``data``, when the caller asked
    it already (None: ask it)."""
    if stream and data.startswith(b'["'):
        chunks = redact_split(orjson.loads(data))
        data = snapshot(redact(chunks, extra_keys=b.redact_keys, redactors=b.redactors))
    elif b.redactors or b.redact_keys or (might_hold_secrets(data) if secrets is None else secrets):
        data = snapshot(redact(orjson.loads(data), extra_keys=b.redact_keys, redactors=b.redactors))
    if pii is None:
        return data
    if stream and data.startswith(b"[") and pii.might_hold(data):
        return snapshot(pii.chunks(orjson.loads(data)))
    return pii.json(data)  # type: ignore[no-any-return]


def keyed_input(
    b: Boundary, data: bytes, pii: Any = None, *, secrets: bool | None = None
) -> tuple[bytes, Any, str]:
    """An input snapshot redacted (and with ``pii``, pseudonymized) and keyed, the one way
    every mode does it: (the cleaned bytes, their parsed value or None when nothing needed
    parsing, the key). Recording and replay both call this, so a live input is stored, keyed
    and compared in the same form. ``secrets``: as :func:`clean_input` takes it."""
    data, value = clean_input(b, data, pii, secrets=secrets)
    return data, value, input_key(b, data, value)


def input_key(
    b: Boundary,
    data: bytes,
    value: Any = None,
    *,
    sorted_data: bytes | None = None,
    plain: bool = False,
) -> str:
    """The key of a redacted input snapshot, per the boundary's key rules (``key=``,
    ``ignore=``, transient fields); independent of dict order.

    ``value`` is ``data`` parsed, and ``sorted_data`` its sorted form, when the caller has them.
    ``plain``: the caller found none of :func:`normalize_words` of the boundary's transient
    fields in ``data`` (so it is not looked at again).
    """
    if b.key_fields is None and not b.ignore and (plain or not _needs_normalize(data, b.transient)):
        if sorted_data is None:
            if value is None:
                sorted_data = sorted_json(data)
            else:  # pairs of a colliding dict in key order, as sorted_json puts them
                sorted_data = orjson.dumps(
                    _sort_pairs(value) if has_tagged(data) else value, option=_SORTED
                )
        return hashlib.sha256(sorted_data).hexdigest()
    if value is None:
        value = orjson.loads(data)
    return key_of_json(b.key_view(value), b.transient)
