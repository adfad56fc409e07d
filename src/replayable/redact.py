"""Secrets out before anything is written.

A dict key is secret when one of its name parts (split at ``_``, ``-``, ``.``, spaces and
camelCase humps) is a secret word: ``password``, ``token``, ``secret``, ``cookie``,
``authorization``, ``api key``... so ``access_token`` and ``X-Api-Key`` are redacted while
``max_tokens`` and ``usage.input_tokens`` are not. Any string value is scrubbed of bearer and
``sk-`` style credentials wherever they appear. User redactors (plain callables) run on top.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Callable, Iterable
from typing import Any, Protocol

import ahocorasick_rs

__all__ = ["REDACTED", "Redactor", "is_secret_key", "might_hold_secrets", "redact", "scrub"]

REDACTED = "[REDACTED]"

_SECRET_PARTS = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
        "pwd",
        "token",
        "secret",
        "cookie",
        "authorization",
        "auth",
        "apikey",
        "credential",
        "credentials",
    }
)
_SECRET_PAIRS = frozenset({("api", "key"), ("private", "key"), ("access", "key")})

_PARTS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")

_VALUE_PATTERNS = re.compile(
    r"(?:"
    r"\bsk-[A-Za-z0-9_\-]{16,}"
    r"|(?i:\bbearer)\s+[A-Za-z0-9._~+/=\-]{8,}"
    r"|(?i:\bbasic)\s+[A-Za-z0-9+/]{8,}={0,2}"
    r"|\bgh[pousr]_[A-Za-z0-9]{20,}"
    r"|\bAKIA[0-9A-Z]{16}\b"
    r"|\bxox[abprs]-[A-Za-z0-9\-]{10,}"
    r")",
    re.ASCII,  # no Unicode case folding or spaces: the byte-level pre-check must see every match
)

# might_hold_secrets is true when the lowercased data holds one of _HINT_ANY; or a secret word
# (_HINT_PARTS: found by a short prefix, then completed) that ends a name part, i.e. is not
# followed by a lowercase letter in the original bytes ("tokens", "author" and "passport" cannot
# make is_secret_key true, so a usage block does not force a redaction pass); or a secret pair
# ending in "key" (_KEY_PREFIXES); or _HINT_GH. All prefixes are found in one Aho-Corasick pass
# over the bytes: this pre-check runs twice per recorded event and was the writer's largest cost
# as ~15 scans.
_HINT_ANY = (b"sk-", b"bearer", b"basic", b"akia", b"xox")
_HINT_PARTS: tuple[tuple[bytes, tuple[bytes, ...]], ...] = (
    (b"token", (b"token",)),
    (b"pass", (b"password", b"passwd", b"passphrase")),
    (b"pwd", (b"pwd",)),
    (b"secret", (b"secret",)),
    (b"cookie", (b"cookie",)),
    (b"auth", (b"authorization", b"auth")),
    (b"credential", (b"credentials", b"credential")),
)
assert {w for _, ws in _HINT_PARTS for w in ws} | {b"apikey"} == {w.encode() for w in _SECRET_PARTS}
_PATTERNS: list[bytes] = [*_HINT_ANY, *(p for p, _ in _HINT_PARTS), b"key", b"gh"]
_N_ANY = len(_HINT_ANY)
_KEY_INDEX = len(_PATTERNS) - 2
_COMPLETIONS = {i + _N_ANY: words for i, (_, words) in enumerate(_HINT_PARTS)}
_MATCHER = ahocorasick_rs.BytesAhoCorasick(_PATTERNS)
_KEY_PREFIXES = (b"api", b"private", b"access")
_HINT_GH = re.compile(rb"gh[pousr]_")
_GH = re.compile(r"gh[pousr]_")


class Redactor(Protocol):
    """A user redactor: takes a JSON value, returns it with secrets removed."""

    def __call__(self, value: Any, /) -> Any: ...


@functools.lru_cache(maxsize=4096)
def is_secret_key(name: str) -> bool:
    """True when a dict key names a secret by one of its whole name parts.

    >>> is_secret_key("api_key"), is_secret_key("max_tokens")
    (True, False)
    """
    parts = [p.lower() for p in _PARTS.findall(name)]
    if any(p in _SECRET_PARTS for p in parts):
        return True
    return any(pair in _SECRET_PAIRS for pair in itertools.pairwise(parts))


def scrub(text: str) -> str:
    """Replace bearer, ``sk-`` and similar credentials inside a string."""
    # Every credential pattern holds one of these literals; most text holds none, and plain
    # substring tests are far cheaper than running the full pattern over it.
    if (
        not text.isascii()  # Unicode case folding: leave it to the pattern
        or "sk-" in text
        or "AKIA" in text
        or "xox" in text
        or ("gh" in text and _GH.search(text) is not None)
    ):
        return _VALUE_PATTERNS.sub(REDACTED, text)
    low = text.lower()
    if "bearer" in low or "basic" in low:
        return _VALUE_PATTERNS.sub(REDACTED, text)
    return text


def might_hold_secrets(data: bytes) -> bool:
    """Cheap pre-check on serialized JSON: False means :func:`redact` would change nothing."""
    low = data.lower()
    n = len(data)
    for index, start, _ in _MATCHER.find_matches_as_indexes(low, overlapping=True):
        if index < _N_ANY:
            return True
        if index == _KEY_INDEX:
            before = start  # skip any separators back to the part before "key"
            while before > 0 and not low[before - 1 : before].isalnum():
                before -= 1
            if low.endswith(_KEY_PREFIXES, 0, before):
                return True
        elif index == _KEY_INDEX + 1:
            if _HINT_GH.match(low, start) is not None:
                return True
        else:
            for word in _COMPLETIONS[index]:
                stop = start + len(word)
                if low.startswith(word, start) and not (stop < n and 97 <= data[stop] <= 122):
                    return True
    return False


def redact(
    value: Any,
    *,
    extra_keys: Iterable[str] = (),
    redactors: Iterable[Callable[[Any], Any]] = (),
) -> Any:
    """Return ``value`` (JSON types) with secret keys and credential strings replaced.

    >>> redact({"api_key": "k", "max_tokens": 5, "h": "Bearer abcdefgh12"})
    {'api_key': '[REDACTED]', 'max_tokens': 5, 'h': '[REDACTED]'}
    """
    extra = frozenset(k.lower() for k in extra_keys)
    out = _walk(value, extra)
    for fn in redactors:
        out = fn(out)
    return out


def _walk(value: Any, extra: frozenset[str]) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        out: dict[str, Any] = {}
        for k, v in value.items():
            if (is_secret_key(k) or (extra and k.lower() in extra)) and holds_secret(v):
                out[k] = REDACTED
            elif isinstance(v, str):
                out[k] = scrub(v)
            elif isinstance(v, dict | list):
                out[k] = _walk(v, extra)
            else:  # numbers, booleans, None: nothing to redact, no call needed
                out[k] = v
        return out
    if isinstance(value, list):
        return [_walk(v, extra) for v in value]
    return value


def holds_secret(value: Any) -> bool:
    """Any value under a secret key is replaced (a numeric PIN is a secret too); None and empty
    values stay, as they leak nothing."""
    return value is not None and value not in ("", [], {})
