"""Secrets out before anything is written.

Two rules, applied to every recorded value (arguments, outputs, stream chunks, errors,
annotations, run tags, metadata, environment and command line):

- **Key names.** A dict value is replaced when its key names a secret by whole name part (split
  at ``_``, ``-``, ``.``, spaces and camelCase humps): ``password``, ``secret``, ``cookie``,
  ``authorization``, ``api key``, ``private key``, ``AccountKey``, ``connection_string``,
  ``database_url``... ``token`` only where it names a credential: as the last part
  (``access_token``, ``X-Auth-Token``, bare ``token``), never as a count or type
  (``token_usage``, ``token_count``, ``max_tokens``, ``usage.input_tokens``).
- **Value shapes.** Every string is matched against a rule set of credential shapes (cloud,
  VCS, chat-webhook, payment, model-hub and registry tokens, JWTs, PEM private keys, URL
  passwords, header and ``name=value`` lines), kept as data in ``secret_rules.toml`` and adapted
  from gitleaks (MIT). A string is only run against the rules whose literal keyword it holds,
  found in one Aho-Corasick pass, so most text costs one scan.

A dict **key** that holds a credential shape (a map from API keys to users, a cache keyed by
token) is replaced by a numbered marker, ``[REDACTED:1]``, ``[REDACTED:2]``...: numbered in the
sorted order of that dict's secret keys (so the same dict redacts the same way whatever order
it was built in) and skipping numbers already used as keys, so no two entries merge and no
value is lost; the values under them are redacted as usual.

Add your own with :func:`add_pattern` and :func:`add_key`; per boundary, ``redact=`` takes extra
key names or a callable. ``replayable scan`` finds what older recordings still hold.

>>> from replayable import redact
>>> redact.add_pattern(r"\\bacme_[0-9a-f]{32}\\b", name="acme-token", keywords=["acme_"])
Rule(id='acme-token', ...)
>>> redact.add_key("ssn")
>>> redact.redact({"note": "use acme_" + "0" * 32, "user_ssn": "123-45-6789"})
{'note': 'use [REDACTED]', 'user_ssn': '[REDACTED]'}
"""

from __future__ import annotations

import functools
import itertools
import re
import threading
import tomllib
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any, Protocol

import ahocorasick_rs
import orjson

if TYPE_CHECKING:
    from replayable.trace import Run

__all__ = [
    "REDACTED",
    "Finding",
    "Redactor",
    "Rule",
    "add_key",
    "add_pattern",
    "find",
    "holds_secret",
    "is_secret_key",
    "might_hold_secrets",
    "might_hold_secrets_or",
    "names_clean",
    "redact",
    "redact_argv",
    "redact_run",
    "redact_split",
    "rules",
    "scrub",
]

REDACTED = "[REDACTED]"

_SECRET_PARTS = frozenset(
    {
        "password",
        "passwd",
        "passphrase",
        "pwd",
        "secret",
        "cookie",
        "authorization",
        "auth",
        "apikey",
        "credential",
        "credentials",
    }
)
_SECRET_PAIRS = frozenset(
    {
        ("api", "key"),
        ("private", "key"),
        ("access", "key"),
        ("account", "key"),
        ("signing", "key"),
        ("encryption", "key"),
        ("master", "key"),
        ("connection", "string"),
        ("database", "url"),
        ("db", "url"),
    }
)
_TOKEN = "token"
"""Secret only as the last name part: ``access_token`` is a credential, ``token_count`` is not."""

_PARTS = re.compile(r"[A-Z]?[a-z0-9]+|[A-Z]+(?![a-z])")

_user_parts: set[tuple[str, ...]] = set()
_lock = threading.Lock()


class Redactor(Protocol):
    """A user redactor: takes a JSON value, returns it with secrets removed."""

    def __call__(self, value: Any, /) -> Any: ...


def _parts(name: str) -> list[str]:
    return [p.lower() for p in _PARTS.findall(name)]


@functools.lru_cache(maxsize=4096)
def is_secret_key(name: str) -> bool:
    """True when a dict key (or flag, or header) names a secret by its whole name parts.

    >>> is_secret_key("api_key"), is_secret_key("access_token"), is_secret_key("token_usage")
    (True, True, False)
    """
    parts = _parts(name)
    if not parts:
        return False
    if any(p in _SECRET_PARTS for p in parts) or parts[-1] == _TOKEN:
        return True
    if any(pair in _SECRET_PAIRS for pair in itertools.pairwise(parts)):
        return True
    for user in _user_parts:
        n = len(user)
        if any(tuple(parts[i : i + n]) == user for i in range(len(parts) - n + 1)):
            return True
    return False


def _looks_random(value: str) -> bool:
    """A credential body rather than a word: it holds a digit, or a 20+ character run, or mixes
    cases over 16+ characters ("a basic introduction" and "sk-learn-estimators" are prose)."""
    if any(c.isdigit() for c in value):
        return True
    if max((len(s) for s in re.split(r"[^A-Za-z]+", value)), default=0) >= 20:
        return True
    return len(value) >= 16 and not value.islower() and not value.isupper()


@dataclass(frozen=True, slots=True)
class Rule:
    """One credential shape: where it came from, its pattern and the literals that gate it."""

    id: str
    pattern: re.Pattern[str]
    keywords: tuple[str, ...]
    group: str | None = None
    """Replace only this named group (the rest of the match, e.g. ``Authorization:``, stays)."""
    check: str | None = None
    """``random``: the ``secret`` group must look random; ``name``: the ``name`` group must be
    a secret key name (see :func:`is_secret_key`)."""
    by_name: bool = False
    """Only fires next to a secret key name, so the byte pre-check's name hints cover it."""
    source: str = "replayable"

    def hits(self, text: str) -> Iterator[re.Match[str]]:
        """Matches that pass the rule's check, left to right, not overlapping.

        A match that fails its check is retried one character later, so "request:
        api_key=..." still finds ``api_key`` after rejecting ``request``.
        """
        pos = 0
        while pos <= len(text):
            m = self.pattern.search(text, pos)
            if m is None:
                return
            if self._ok(m):
                yield m
                pos = m.end() if m.end() > m.start() else m.end() + 1
            else:
                pos = m.start() + 1

    def _ok(self, m: re.Match[str]) -> bool:
        if self.check == "random":
            return _looks_random(m["secret"] if "secret" in self.pattern.groupindex else m[0])
        if self.check == "name":
            if not is_secret_key(m["name"]):
                return False
            # "name: word" in prose is not a credential; "name=word" or "name": "word" is.
            value = m["secret"]
            return m["sep"] == "=" or m["quote"] is not None or not value.isalpha()
        return True

    def sub(self, text: str) -> str:
        """``text`` with every match (or its ``group``) replaced by the marker."""
        out: list[str] = []
        last = 0
        for m in self.hits(text):
            start, end = m.span(self.group) if self.group is not None else m.span()
            out.append(text[last:start])
            out.append(REDACTED)
            last = end
        if not out:
            return text
        out.append(text[last:])
        return "".join(out)


def _load_rules() -> list[Rule]:
    data = tomllib.loads(resources.files("replayable").joinpath("secret_rules.toml").read_text())
    out = []
    for r in data["rules"]:
        out.append(
            Rule(
                id=r["id"],
                pattern=re.compile(r["regex"], re.ASCII),
                keywords=tuple(k.lower() for k in r.get("keywords", ())),
                group=r.get("group"),
                check=r.get("check"),
                by_name=bool(r.get("by_name", False)),
                source=r.get("source", "replayable"),
            )
        )
    return out


_DFA = ahocorasick_rs.Implementation.DFA


class _RuleSet:
    """The rules with their two gates: one over strings (which rules to run) and one over the
    serialized bytes of a whole event (whether to parse it at all)."""

    def __init__(self, rules: Sequence[Rule], user_parts: Iterable[tuple[str, ...]]) -> None:
        self.rules = tuple(rules)
        words: list[str] = []
        owners: list[list[int]] = []
        seen: dict[str, int] = {}
        self.always: tuple[int, ...] = tuple(i for i, r in enumerate(self.rules) if not r.keywords)
        user_words = tuple(sorted({u[-1] for u in user_parts}))
        for i, rule in enumerate(self.rules):
            # a rule gated on key names also fires near the names users added
            extra = user_words if rule.check == "name" else ()
            for kw in (*rule.keywords, *extra):
                if kw not in seen:
                    seen[kw] = len(words)
                    words.append(kw)
                    owners.append([])
                owners[seen[kw]].append(i)
        self.owners = [tuple(o) for o in owners]
        # DFA: three times faster than the default NFA on this many patterns (built once)
        self.matcher = ahocorasick_rs.AhoCorasick(words, implementation=_DFA) if words else None
        # Byte gate: literal keywords of shape rules; secret words checked to end a name part;
        # pair seconds ("key", "string", "url") checked to follow their first word.
        patterns: list[bytes] = []
        self.kinds: list[tuple[str, Any]] = []
        for kw in words:
            if all(self.rules[i].by_name for i in owners[seen[kw]]):
                continue
            patterns.append(kw.encode())
            self.kinds.append(("url", None) if kw == "://" else ("any", None))
        for word in sorted(_SECRET_PARTS):
            patterns.append(word.encode())
            self.kinds.append(("part", None))
        patterns.append(_TOKEN.encode())
        self.kinds.append(("token", None))
        seconds: dict[str, list[bytes]] = {}
        for first, second in sorted(_SECRET_PAIRS):
            seconds.setdefault(second, []).append(first.encode())
        for second, firsts in seconds.items():
            patterns.append(second.encode())
            self.kinds.append(("pair", tuple(firsts)))
        for user in sorted(user_parts):
            patterns.append(user[-1].encode())
            self.kinds.append(("any", None))
        self.byte_patterns = patterns
        self.byte_matcher = ahocorasick_rs.BytesAhoCorasick(patterns, implementation=_DFA)
        self.always_bytes = bool(self.always)

    def candidates(self, text: str) -> list[int]:
        """Indexes of the rules worth running on ``text``, in rule order."""
        found: set[int] = set(self.always)
        if self.matcher is not None:
            for index, _, _ in self.matcher.find_matches_as_indexes(text.lower(), overlapping=True):
                found.update(self.owners[index])
        return sorted(found)


_RULES = _RuleSet(_load_rules(), ())
_FLAG = re.compile(r"--?[A-Za-z][A-Za-z0-9_.\-]*\Z")
_URL_USERINFO = re.compile(rb"[^\s/?#@\"'<>]*:[^\s/?#@\"'<>]*@")


def rules() -> list[Rule]:
    """The active rules, built-in then user-added, in the order they are applied."""
    return list(_RULES.rules)


def add_pattern(
    pattern: str | re.Pattern[str], *, name: str = "custom", keywords: Iterable[str] = ()
) -> Rule:
    """Redact every match of ``pattern`` (a named group ``secret``, if any, is all that goes).

    ``keywords`` are literals every match contains: without them the pattern runs on every
    recorded event (correct, but slower). Affects calls recorded from now on.

    >>> add_pattern(r"\\bacme_[0-9a-f]{32}\\b", name="acme-token", keywords=["acme_"]).id
    'acme-token'
    >>> scrub("token acme_" + "0" * 32)
    'token [REDACTED]'
    """
    global _RULES
    compiled = re.compile(pattern, re.ASCII) if isinstance(pattern, str) else pattern
    kws = tuple(k.lower() for k in keywords if k)
    rule = Rule(
        id=name,
        pattern=compiled,
        keywords=kws,
        group="secret" if "secret" in compiled.groupindex else None,
        source="user",
    )
    with _lock:
        _RULES = _RuleSet([*_RULES.rules, rule], _user_parts)
    return rule


def add_key(name: str) -> None:
    """Treat dict keys (and flags) whose name parts contain ``name``'s parts as secret.

    >>> add_key("ssn")
    >>> is_secret_key("ssn"), is_secret_key("user_ssn"), is_secret_key("customerSSN")
    (True, True, True)
    """
    global _RULES
    parts = tuple(_parts(name))
    if not parts:
        raise ValueError(f"add_key: {name!r} has no name parts (letters or digits)")
    with _lock:
        _user_parts.add(parts)
        is_secret_key.cache_clear()
        _RULES = _RuleSet(_RULES.rules, _user_parts)


def scrub(text: str) -> str:
    """``text`` with every credential shape replaced by ``[REDACTED]``.

    >>> scrub("curl -H 'Authorization: Token 9f8e7d6c5b4a' https://api")
    "curl -H 'Authorization: [REDACTED]' https://api"
    """
    rs = _RULES
    for i in rs.candidates(text):
        text = rs.rules[i].sub(text)
    return text


_NAMES_MEMO: dict[frozenset[str], tuple[Any, bool]] = {}


def names_clean(names: frozenset[str]) -> bool:
    """True when an object whose keys are among ``names`` and whose values are all booleans,
    numbers or null (lists of them too) is left as it is by :func:`redact` under the active
    rules: no key is a secret's name. Remembered per rule set (the engine asks on every call).

    >>> names_clean(frozenset({"served", "source_seq"})), names_clean(frozenset({"password"}))
    (True, False)
    """
    memo = _NAMES_MEMO.get(names)
    rs = _RULES
    if memo is not None and memo[0] is rs:
        return bool(memo[1])
    clean = not might_hold_secrets(orjson.dumps(dict.fromkeys(sorted(names), 0)))
    _NAMES_MEMO[names] = (rs, clean)
    return clean


def might_hold_secrets(data: bytes) -> bool:
    """Cheap pre-check on serialized JSON: False means :func:`redact` would change nothing.

    One Aho-Corasick pass over the lowercased bytes; a secret word only counts where it ends a
    name part, so a usage block (``max_tokens``, ``input_tokens``) does not force a parse.
    """
    rs = _RULES
    if rs.always_bytes:
        return True
    return _scan(data, rs, rs.byte_matcher) is not False


def might_hold_secrets_or(data: bytes, words: tuple[bytes, ...]) -> tuple[bool, bool]:
    """:func:`might_hold_secrets` of ``data``, and whether any of ``words`` may occur in it,
    in the one pass: (secrets, words). False for ``words`` means none occurs (they are looked
    for lowercased in the lowercased bytes); True may be wrong either way once secrets is."""
    rs = _RULES
    if rs.always_bytes:
        return True, True
    found = _scan(data, rs, _with_words(rs, words))
    return found is None, found is not False


@functools.lru_cache(maxsize=16)  # a boundary's transient fields under the rules in force
def _with_words(rs: _RuleSet, words: tuple[bytes, ...]) -> ahocorasick_rs.BytesAhoCorasick:
    """The byte gate of ``rs`` with ``words`` (lowercased) after its own patterns."""
    patterns = [*rs.byte_patterns, *(w.lower() for w in words)]
    return ahocorasick_rs.BytesAhoCorasick(patterns, implementation=_DFA)


def _scan(data: bytes, rs: _RuleSet, matcher: ahocorasick_rs.BytesAhoCorasick) -> bool | None:
    """One pass of ``matcher`` (``rs``'s byte gate, maybe with more patterns after its own)
    over ``data`` lowercased: None when a secret's shape may be in it (the pass stops there),
    else whether a pattern after the gate's own occurs."""
    low = data.lower()
    n = len(data)
    kinds = rs.kinds
    own = len(kinds)
    found = False
    for index, start, stop in matcher.find_matches_as_indexes(low, overlapping=True):
        if index >= own:
            found = True
            continue
        kind, firsts = kinds[index]
        if kind == "any":
            return None
        if kind == "url":
            if _URL_USERINFO.match(low, stop) is not None:
                return None
            continue
        if stop < n and 97 <= data[stop] <= 122:  # the part goes on: "tokens", "author"
            continue
        if kind == "part":
            return None
        if kind == "token":
            # a last name part: not followed by a letter/digit, nor by a separator and more name
            nxt = data[stop : stop + 2]
            if nxt[:1].isalnum() or (nxt[:1] in (b"_", b"-", b".", b" ") and nxt[1:].isalnum()):
                continue
            return None
        before = start  # a pair: skip separators back to the part before "key"/"url"/...
        while before > 0 and not low[before - 1 : before].isalnum():
            before -= 1
        if low.endswith(firsts, 0, before):
            return None
    return found


def redact(
    value: Any,
    *,
    extra_keys: Iterable[str] = (),
    redactors: Iterable[Callable[[Any], Any]] = (),
) -> Any:
    """Return ``value`` (JSON types) with secret keys and credential strings replaced.

    >>> redact({"api_key": "k", "max_tokens": 5, "h": "Bearer abcdefgh12"})
    {'api_key': '[REDACTED]', 'max_tokens': 5, 'h': 'Bearer [REDACTED]'}
    """
    extra = frozenset(k.lower() for k in extra_keys)
    out = _walk(value, extra)
    for fn in redactors:
        out = fn(out)
    return out


def _key_rule(key: str, rs: _RuleSet) -> str | None:
    """The id of the first rule that finds a credential in a dict key, or None."""
    for i in rs.candidates(key):
        rule = rs.rules[i]
        if rule.sub(key) != key:
            return rule.id
    return None


_CLEAN_KEYS: tuple[_RuleSet | None, set[str]] = (None, set())
"""Dict keys known to hold no credential under a rule set: most keys repeat in every event
(secret ones are never kept)."""


def _key_markers(keys: Iterable[str]) -> dict[str, str]:
    """The keys of one dict that hold a credential, each with the marker that replaces it:
    ``[REDACTED:N]``, numbered in sorted key order, skipping markers the dict already uses."""
    global _CLEAN_KEYS
    rs = _RULES
    owner, clean = _CLEAN_KEYS
    if owner is not rs:
        clean = set()
        _CLEAN_KEYS = (rs, clean)
    secret: list[str] = []
    for k in keys:
        if k in clean:
            continue
        if _key_rule(k, rs) is None:
            if len(clean) < 65536:
                clean.add(k)
        else:
            secret.append(k)
    if not secret:
        return _NO_MARKERS
    taken = set(keys).difference(secret)
    out: dict[str, str] = {}
    n = 0
    for k in sorted(secret):
        n += 1
        while f"[REDACTED:{n}]" in taken:
            n += 1
        out[k] = f"[REDACTED:{n}]"
    return out


_NO_MARKERS: dict[str, str] = {}


def _walk(value: Any, extra: frozenset[str]) -> Any:
    if isinstance(value, str):
        return scrub(value)
    if isinstance(value, dict):
        if len(value) == 1 and isinstance(value.get("$dict"), list):
            # A dict whose keys collide as strings, stored as its [key, value] pairs
            # (replayable.canonical.TAGGED_DICT): its keys are names like any dict's.
            return {"$dict": [_walk_pair(p, extra) for p in value["$dict"]]}
        out: dict[str, Any] = {}
        markers = _key_markers(value)
        for key, v in value.items():
            k = markers[key] if markers and key in markers else key
            if (is_secret_key(key) or (extra and key.lower() in extra)) and holds_secret(v):
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


def _walk_pair(pair: Any, extra: frozenset[str]) -> Any:
    """One ``[key, value]`` pair of a tagged dict, redacted as that key's entry would be."""
    if not (isinstance(pair, list) and len(pair) == 2 and isinstance(pair[0], str)):
        return _walk(pair, extra)
    key, v = pair
    if (is_secret_key(key) or (extra and key.lower() in extra)) and holds_secret(v):
        return [scrub(key), REDACTED]
    return [scrub(key), _walk(v, extra)]


def redact_split(chunks: list[Any]) -> list[Any]:
    """A stream's text chunks with secrets removed even where one spans several chunks
    (a model streaming a key token by token): every chunk a secret touches loses its part of
    it, and the first one gets the marker. Non-text chunks are left to :func:`redact`.

    >>> redact_split(["key: sk-proj-", "Ab3dEf6hIj9kLm2n", " ok"])
    ['key: sk-[REDACTED]', '', ' ok']
    """
    out: list[Any] = []
    run: list[str] = []
    for chunk in [*chunks, None]:
        if isinstance(chunk, str):
            run.append(chunk)
            continue
        out.extend(_split_run(run) if len(run) > 1 else run)
        run = []
        if chunk is not None:
            out.append(chunk)
    return out


def _split_run(run: list[str]) -> list[str]:
    joined = "".join(run)
    rs = _RULES
    bounds = list(itertools.accumulate(len(c) for c in run))
    starts = [0, *bounds[:-1]]
    # a match inside one chunk is scrubbed there; one across chunks is cut out here
    spans: list[tuple[int, int]] = []
    for i in rs.candidates(joined):
        rule = rs.rules[i]
        for m in rule.hits(joined):
            if any(m.start() < e < m.end() for e in bounds[:-1]):
                spans.append(m.span(rule.group) if rule.group is not None else m.span())
    crossing: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if crossing and a <= crossing[-1][1]:
            crossing[-1] = (crossing[-1][0], max(b, crossing[-1][1]))
        else:
            crossing.append((a, b))
    if not crossing:
        return run
    out = []
    for lo, hi in zip(starts, bounds, strict=True):
        pieces: list[str] = []
        pos = lo
        for a, b in crossing:
            if b <= pos or a >= hi:
                continue
            if a >= lo:
                pieces.append(joined[pos:a])
                pieces.append(REDACTED)
            pos = max(pos, min(b, hi))
        pieces.append(joined[pos:hi])
        out.append("".join(pieces))
    return out


def holds_secret(value: Any) -> bool:
    """Any value under a secret key is replaced (a numeric PIN is a secret too); None, flags
    (``{"password": False}``) and empty values stay, as they leak nothing."""
    return value is not None and not isinstance(value, bool) and value not in ("", [], {})


@dataclass(frozen=True, slots=True)
class Finding:
    """Where a secret sits in a value (never the secret itself): a field path and a rule name."""

    path: str
    rule: str


def find(value: Any, path: str = "") -> list[Finding]:
    """Every place :func:`redact` would change in ``value``, with the rule that fires there.

    >>> find({"headers": {"x": "Bearer 0123456789ab"}, "api_key": "k"})
    [Finding(path='headers.x', rule='bearer-token'), Finding(path='api_key', rule='secret-key')]
    """
    out: list[Finding] = []
    _find(value, path, out)
    return out


def _find(value: Any, path: str, out: list[Finding]) -> None:
    if isinstance(value, str):
        rs = _RULES
        for i in rs.candidates(value):
            rule = rs.rules[i]
            new = rule.sub(value)
            if new != value:
                out.append(Finding(path, rule.id))
                value = new
    elif isinstance(value, dict):
        markers = _key_markers(value)
        for k, v in value.items():
            if k in markers:  # the path names the marker, never the key itself
                sub = f"{path}.{markers[k]}" if path else markers[k]
                out.append(Finding(sub, _key_rule(k, _RULES) or "secret-key"))
            else:
                sub = f"{path}.{k}" if path else str(k)
            if is_secret_key(k) and holds_secret(v) and v != REDACTED:
                out.append(Finding(sub, "secret-key"))
            else:
                _find(v, sub, out)
    elif isinstance(value, list):
        for i, v in enumerate(value):
            _find(v, f"{path}[{i}]", out)


def redact_argv(argv: Sequence[str]) -> list[str]:
    """A command line with secrets out: a flag named like a secret loses its value (``--api-key
    X`` or ``--api-key=X``), and every argument is scrubbed (URLs lose their password).

    >>> redact_argv(["agent.py", "--api-key", "abc", "--store", "postgresql://u:pw@db/x"])
    ['agent.py', '--api-key', '[REDACTED]', '--store', 'postgresql://u:[REDACTED]@db/x']
    """
    out: list[str] = []
    hide_next = False
    for arg in argv:
        if hide_next:
            out.append(REDACTED)
            hide_next = False
            continue
        flag, eq, _ = arg.partition("=")
        if _FLAG.match(flag) and is_secret_key(flag.lstrip("-")):
            if eq:
                out.append(f"{flag}={REDACTED}")
            else:
                out.append(arg)
                hide_next = True
            continue
        out.append(scrub(arg))
    return out


_ENV_MEMO: tuple[Any, bytes, dict[str, Any]] | None = None


def _redact_environment(environment: dict[str, Any]) -> dict[str, Any]:
    """A run's environment redacted; the last one is remembered (under the same rules), as
    every run of a process records the same environment (a short run's fixed cost)."""
    global _ENV_MEMO
    try:
        data = orjson.dumps(environment, option=orjson.OPT_SORT_KEYS)
    except TypeError:
        data = b""
    memo = _ENV_MEMO
    if data and memo is not None and memo[0] is _RULES and memo[1] == data:
        copy: dict[str, Any] = orjson.loads(orjson.dumps(memo[2]))
        return copy
    env: dict[str, Any] = dict(environment)
    argv = env.pop("argv", None)
    env = redact(env)
    if isinstance(argv, list):
        env["argv"] = redact_argv([str(a) for a in argv])
    if data:
        _ENV_MEMO = (_RULES, data, orjson.loads(orjson.dumps(env)))
    return env


def redact_run(run: Run) -> None:
    """Redact a run's header in place: name, tags, metadata, environment (and its argv), error."""
    if run.name is not None:
        run.name = scrub(run.name)
    run.tags = redact(run.tags)
    run.metadata = redact(run.metadata)
    run.environment = _redact_environment(run.environment)
    if run.error is not None:
        run.error = redact(run.error)
