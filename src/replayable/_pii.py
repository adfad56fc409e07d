"""Personal data out before anything is written, as keyed pseudonyms that keep replay exact.

``rp.record(..., pii=True)`` (or ``pii=rp.PII(...)``, ``$REPLAYABLE_PII=1``, or the store's
default from ``rp.open_store(url, pii=...)``) replaces every personal value the detectors find
(:mod:`replayable._pii_detect`) in every recorded string with a pseudonym:

- **keyed**: HMAC-SHA256 under the key (``PII(key=...)``, ``$REPLAYABLE_PII_KEY`` or the file
  named by ``$REPLAYABLE_PII_KEY_FILE``), never a plain hash, which a dictionary of likely
  values reverses; the same value gives the same pseudonym in every run under one key;
- **shape-keeping**: an email stays an address (at ``example.com``), a phone number a valid
  number in a range reserved for fiction (US ``555-01xx``, UK ``020 7946 0xxx``, France
  ``01 99 00 xx xx``, Australia ``02 5550 xxxx``), a card number passes Luhn in the ``400000``
  test range, an IBAN keeps its country, length and a valid checksum, an IP address moves to a
  documentation range, an SSN to the never-issued 900 area; listed names and named fields
  become made-up names of as many words (``Dana Whitfield`` -> ``Rokabel Tusimev``), which
  carry a keyed check so that a pseudonym is known for one;
- **idempotent**: pseudonyms sit in those reserved ranges, which are not personal data, so
  pseudonymizing twice changes nothing.

A replay reads the settings (never the key) from the source run's metadata and pseudonymizes
each live input the same way before keying and comparing it, so unchanged code matches.
"""

from __future__ import annotations

import base64
import bisect
import functools
import hashlib
import hmac
import ipaddress
import itertools
import json
import os
import re
import threading
import weakref
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

from replayable._pii_detect import KINDS, Detector, Hit, could_hold, norm_text
from replayable.errors import PIIKeyError, ReplayableError

if TYPE_CHECKING:
    from replayable.trace import Run

__all__ = [
    "KEY_ENV",
    "KEY_FILE_ENV",
    "PII",
    "PII_ENV",
    "Pseudonymizer",
    "active",
    "derive",
    "for_record",
    "for_replay",
    "load_key",
    "set_store_default",
]

PII_ENV = "REPLAYABLE_PII"
KEY_ENV = "REPLAYABLE_PII_KEY"
KEY_FILE_ENV = "REPLAYABLE_PII_KEY_FILE"
NER_ENV = "REPLAYABLE_PII_NER"
"""The spaCy pipeline a replay may load for a run recorded with ``PII(ner="pipeline")``."""
META_KEY = "pii"
"""The run metadata entry that holds the settings (kinds, fields, key id; never the key)."""
MIN_KEY_BYTES = 16

_CONSONANTS = "bdfghjklmnprstvz"
_VOWELS = "aeio"
_NAME_WORD = re.compile(
    r"[BDFGHJKLMNPRSTVZ][aeio][bdfghjklmnprstvz][aeio][bdfghjklmnprstvz][aeio]"
    r"[bdfghjklmnprstvz](?:[aeio][bdfghjklmnprstvz])?"
)
_CHECK_BITS = {1: 12, 2: 16, 3: 16}
"""Bits of a made-up name given to its keyed check (the rest name the value): a real name
of exactly the made-up shape passes the check once in 4,096 (one word) or 65,536 times."""
_B32 = "abcdefghijklmnopqrstuvwxyz234567"
_CAPITAL = re.compile(rb"[A-Z\x80-\xff]")
"""Where a name could start, in an event's bytes (a capital, or any non-ASCII letter)."""


@dataclass(frozen=True)
class PII:
    """What to pseudonymize, and under which key.

    ``kinds``: any of ``email``, ``phone``, ``card``, ``iban``, ``ip``, ``ssn`` (all by
    default). ``fields``: dotted field paths whose whole value is personal
    (``"customer.name"``, ``"*.address"``; ``*`` is one field; a path matches the end of a
    value's path, so ``"name"`` is every field called ``name``). ``names``: values to find in
    any text (a customer list), case and spacing aside. ``key``: the HMAC key (at least 16
    bytes), else ``$REPLAYABLE_PII_KEY``, else the file ``key_file`` or
    ``$REPLAYABLE_PII_KEY_FILE`` names. ``region``: how numbers written without a country code
    are read (``"US"``). ``vault``: a file path where each pseudonym's value is kept encrypted
    (AES-GCM under the key), for ``replayable show --reveal``; apart from the runs. ``ner``:
    names in free text too, with the NER extra (``pip install "replayable[ner]"``): ``True``
    for spaCy cue patterns on a blank pipeline (``I'm Dana Whitfield``, ``Dear Mr Smith``), or
    the name of an installed spaCy pipeline whose ``PERSON`` entities count as well.

    >>> import replayable as rp
    >>> p = rp.PII(fields=["customer.name"], key="k" * 32)
    >>> p.pseudonymizer().value({"customer": {"name": "Dana Whitfield"}, "n": "dana@acme.io"})
    {'customer': {'name': '... ...'}, 'n': 'user-...@example.com'}
    """

    kinds: Sequence[str] = KINDS
    fields: Sequence[str] = ()
    names: Sequence[str] = field(default=(), repr=False)
    key: bytes | str | None = field(default=None, repr=False)
    key_file: str | os.PathLike[str] | None = None
    region: str = "US"
    vault: str | os.PathLike[str] | None = None
    ner: bool | str = False

    def __post_init__(self) -> None:
        for name in ("kinds", "fields", "names"):
            value = getattr(self, name)
            if isinstance(value, str):
                raise TypeError(f"PII({name}=...) takes a list of strings, not one string")
            object.__setattr__(self, name, tuple(value))
        unknown = sorted(set(self.kinds) - set(KINDS))
        if unknown:
            raise ValueError(f"PII(kinds=...): unknown kind(s) {unknown}; known: {list(KINDS)}")
        if not isinstance(self.ner, bool | str) or self.ner == "":
            raise TypeError(f"PII(ner=...) takes True or a spaCy pipeline's name, not {self.ner!r}")

    def pseudonymizer(self) -> Pseudonymizer:
        """The compiled policy (its key loaded now: a missing key is an error here)."""
        return _compiled(self, load_key(self.key, self.key_file))


@functools.lru_cache(maxsize=32)
def _compiled(pii: PII, key: bytes) -> Pseudonymizer:
    vault = None
    if pii.vault is not None:
        from replayable._pii_vault import Vault

        vault = Vault(Path(pii.vault), key)
    return Pseudonymizer(
        key,
        kinds=pii.kinds,
        fields=pii.fields,
        names=pii.names,
        region=pii.region,
        on_new=vault.add if vault is not None else None,
        vault=None if pii.vault is None else os.fspath(pii.vault),
        key_file=None if pii.key_file is None else os.path.abspath(pii.key_file),
        ner=_ner_model(pii.ner),
    )


def _ner_model(ner: bool | str | None) -> str | None:
    """The NER extra's model as a run's settings name it (``rules`` for ``ner=True``)."""
    if ner is True:
        from replayable._pii_ner import RULES

        return RULES
    return ner or None


@functools.lru_cache(maxsize=4)
def _recognizer(model: str) -> Any:
    """One spaCy pipeline per model in a process (building one takes a second)."""
    from replayable._pii_ner import NameRecognizer

    return NameRecognizer(model)


def load_key(
    key: bytes | str | None = None, key_file: str | os.PathLike[str] | None = None
) -> bytes:
    """The pseudonymization key: ``key``, else ``$REPLAYABLE_PII_KEY``, else the file
    ``key_file`` or ``$REPLAYABLE_PII_KEY_FILE`` names. There is no default key: a key made up
    on the spot would be lost with the process, and every run after it would pseudonymize the
    same person differently."""
    where = "PII(key=...)"
    if key is None and os.environ.get(KEY_ENV):
        key, where = os.environ[KEY_ENV], f"${KEY_ENV}"
    if key is None:
        path = key_file or os.environ.get(KEY_FILE_ENV) or None
        if path is not None:
            where = f"key file {os.fspath(path)}"
            try:
                key = Path(path).read_bytes().strip()
            except OSError as exc:
                raise PIIKeyError(
                    f"cannot read the personal-data key from {where}: {exc.strerror or exc}"
                ) from exc
    if key is None:
        raise PIIKeyError(
            "pii is on but no key is set: set $REPLAYABLE_PII_KEY (or "
            "$REPLAYABLE_PII_KEY_FILE, or PII(key=...)) to a secret of at least 16 bytes, e.g. "
            "python -c 'import secrets; print(secrets.token_hex(32))'; keep it apart from the "
            "store, and keep it: replays and reveals need the same key"
        )
    raw = key.encode() if isinstance(key, str) else bytes(key)
    if len(raw) < MIN_KEY_BYTES:
        raise PIIKeyError(
            f"the personal-data key from {where} is {len(raw)} bytes; use at least "
            f"{MIN_KEY_BYTES} (python -c 'import secrets; print(secrets.token_hex(32))')"
        )
    return raw


def derive(key: bytes, purpose: str) -> bytes:
    """A 32-byte key for one purpose (vault, sealed names, key id), from the PII key."""
    return hmac.digest(key, b"replayable/pii/" + purpose.encode(), "sha256")


def key_id(key: bytes) -> str:
    """A short public name for a key (an HMAC, so it tells nothing about the key)."""
    return derive(key, "key-id").hex()[:16]


def _b32(d: bytes, n: int) -> str:
    bits = int.from_bytes(d, "big")
    return "".join(_B32[(bits >> (5 * i)) & 31] for i in range(n))


def _stream(d: bytes) -> bytes:
    """More pseudo-random bytes from a digest (long IBANs need more than 32)."""
    return d + hashlib.sha256(d + b"\x01").digest()


def _luhn_digit(body: str) -> str:
    total = 0
    for i, ch in enumerate(reversed(body)):
        v = ord(ch) - 48
        if i % 2 == 0:
            v *= 2
            if v > 9:
                v -= 9
        total += v
    return str((10 - total % 10) % 10)


def _layout(original: str, chars: str) -> str:
    """``chars`` put where ``original`` has letters and digits (its spaces and dashes kept)."""
    it = iter(chars)
    return "".join(next(it) if c.isalnum() else c for c in original)


@functools.lru_cache(maxsize=1)
def _us_areas() -> tuple[int, ...]:
    """The US area codes for which ``AAA-555-01xx`` is a valid number."""
    from replayable._pii_detect import phonenumbers_module

    pn = phonenumbers_module()
    out = []
    for area in range(201, 990):
        if pn.is_valid_number(pn.parse(f"+1{area}5550100", None)):
            out.append(area)
    return tuple(out)


def _phone(d: bytes, hit: Hit) -> str:
    from replayable._pii_detect import phonenumbers_module

    pn = phonenumbers_module()
    country = pn.parse(hit.norm, None).country_code
    n = int.from_bytes(d[:8], "big")
    if country == 44:
        national = f"2079460{n % 1000:03d}"
    elif country == 33:
        national = f"19900{n % 10000:04d}"
    elif country == 61:
        national = f"25550{n % 10000:04d}"
    else:
        country = 1
        areas = _us_areas()
        national = f"{areas[n % len(areas)]}55501{(n // len(areas)) % 100:02d}"
    num = pn.parse(f"+{country}{national}", None)
    fmt = pn.PhoneNumberFormat
    return str(pn.format_number(num, fmt.INTERNATIONAL if hit.extra == "intl" else fmt.NATIONAL))


def _iban(d: bytes, norm: str, original: str) -> str:
    stream = _stream(d)
    country, bban = norm[:2], norm[4:]
    out = []
    for i, c in enumerate(bban):
        if i < 4:
            out.append("0" if c.isdigit() else "X")
        elif c.isdigit():
            out.append(str(stream[i] % 10))
        else:
            out.append(chr(65 + stream[i] % 26))
    body = "".join(out)
    moved = body + country + "00"
    check = 98 - int("".join(str(int(c, 36)) for c in moved)) % 97
    return _layout(original, f"{country}{check:02d}{body}")


def _shaped(kind: str, d: bytes, hit: Hit, original: str) -> str:
    """The pseudonym of one value of ``kind`` from its HMAC ``d``, in the value's shape."""
    if kind == "email":
        return f"user-{_b32(d, 10)}@example.com"
    if kind == "phone":
        return _phone(d, hit)
    if kind == "card":
        n = len(hit.norm)
        digits = "".join(str(b % 10) for b in _stream(d)[: n - 7])
        body = "400000" + digits
        return _layout(original, body + _luhn_digit(body))
    if kind == "iban":
        return _iban(d, hit.norm, original)
    if kind == "ip":
        if ":" in hit.norm:
            low = int.from_bytes(d[:12], "big")
            return str(ipaddress.IPv6Address((0x20010DB8 << 96) | low))
        idx = int.from_bytes(d[:2], "big") % 762
        net = ("192.0.2", "198.51.100", "203.0.113")[idx // 254]
        return f"{net}.{1 + idx % 254}"
    if kind == "ssn":
        area = 900 + d[0] % 100
        group = 1 + d[1] % 99
        serial = 1 + int.from_bytes(d[2:4], "big") % 9999
        return _layout(original, f"{area:03d}{group:02d}{serial:04d}")
    raise ValueError(f"no shaped pseudonym for {kind!r}")


def _word_bits(n: int) -> list[int]:
    """Letters of each word of an ``n``-word made-up name: 7 (CVCVCVC, 22 bits) each; a
    one-word name gets 9 (28 bits), as it has no second word to tell people apart."""
    return [9] if n == 1 else [7] * n


def _letters_bits(letters: int) -> int:
    consonants = (letters + 1) // 2
    return consonants * 4 + (letters - consonants) * 2


def _spell(bits: int, layout: list[int]) -> str:
    out = []
    for letters in layout:
        word = []
        for i in range(letters):
            if i % 2 == 0:
                word.append(_CONSONANTS[bits & 15])
                bits >>= 4
            else:
                word.append(_VOWELS[bits & 3])
                bits >>= 2
        out.append("".join(word).capitalize())
    return " ".join(out)


def _unspell(words: list[str]) -> int:
    bits = 0
    shift = 0
    for word in words:
        for i, ch in enumerate(word.lower()):
            if i % 2 == 0:
                bits |= _CONSONANTS.index(ch) << shift
                shift += 4
            else:
                bits |= _VOWELS.index(ch) << shift
                shift += 2
    return bits


class Pseudonymizer:
    """A compiled :class:`PII` with its key: pseudonymizes text, JSON values, input snapshots
    and stream chunks. Thread-safe (the writer thread and a replay's threads share one)."""

    def __init__(
        self,
        key: bytes,
        *,
        kinds: Iterable[str] = KINDS,
        fields: Iterable[str] = (),
        names: Iterable[str] = (),
        region: str = "US",
        on_new: Callable[[str, str], None] | None = None,
        vault: str | None = None,
        key_file: str | None = None,
        ner: str | None = None,
    ) -> None:
        self._key = key
        self.ner = ner
        """The NER extra's model (``rules`` or a spaCy pipeline), or None: names in free text
        are then found only when listed."""
        self.vault = vault
        self.key_file = key_file
        """The key file named in code (``PII(key_file=...)``): its path (never the key) is kept
        in the run's settings, so a replay on this machine finds the key without the env."""
        """Where the vault is (kept in the run's settings, so ``show --reveal`` finds it)."""
        self.key_id = key_id(key)
        self.kinds = tuple(k for k in KINDS if k in set(kinds))
        self.fields = tuple(fields)
        self.names = tuple(names)
        self.region = region
        self.detector = Detector(
            self.kinds,
            self.names,
            region,
            ner=None if ner is None else _recognizer(ner),
            made_up=self.is_made_up,
        )
        self._reserved = Detector(self.kinds, (), region, reserved=True)
        self._patterns = tuple(tuple(f.split(".")) for f in self.fields)
        self._lasts = frozenset(p[-1] for p in self._patterns)
        self._any_last = "*" in self._lasts
        self._on_new = on_new
        self._memo: dict[tuple[str, str], str] = {}
        self._lock = threading.Lock()
        self._kindset = frozenset(self.kinds)
        self._literals = tuple(orjson.dumps(k) + b":" for k in sorted(self._lasts - {"*"}))
        self._clean_keys: set[str] = set()
        self._texts: dict[str, str] = {}
        self._texts_size = 0
        """Texts seen, with their pseudonymized form (a clean one only when every kind was
        looked for)."""

    def __repr__(self) -> str:
        return f"Pseudonymizer(kinds={self.kinds!r}, fields={self.fields!r}, key_id={self.key_id})"

    # -- one value -----------------------------------------------------------------------------

    def pseudonym(self, hit: Hit, original: str) -> str:
        """The pseudonym of one found value (remembered: the same value recurs in every step)."""
        laid_out = hit.kind in ("card", "iban", "ssn", "phone")  # the original's layout is kept
        memo_key = (hit.kind, original if laid_out else hit.norm)
        got = self._memo.get(memo_key)
        if got is not None:
            return got
        family = "text" if hit.kind in ("name", "field") else hit.kind
        d = hmac.digest(self._key, family.encode() + b"\x00" + hit.norm.encode(), "sha256")
        if family == "text":
            out = self._made_up_name(d, len(original.split()))
        else:
            out = _shaped(family, d, hit, original)
        with self._lock:
            if len(self._memo) > 100_000:
                self._memo.clear()
            self._memo[memo_key] = out
        if self._on_new is not None:
            self._on_new(out, original)
        return out

    def text(self, text: str, only: frozenset[str] | None = None) -> str:
        """``text`` with every personal value found in it replaced by its pseudonym.

        >>> p = PII(key="k" * 32).pseudonymizer()
        >>> p.text("call +1 415 867 5309")
        'call +1 ...-555-01...'
        """
        memo = self._texts
        got = memo.get(text)
        if got is not None:  # an agent sends its whole history again with every call
            return got
        # Every shape kind is looked for in the text itself (its own check is the gate, and an
        # event's ``only`` holds what its strings do), so a clean verdict is whole and kept:
        # an agent sends its history again with every call, one new message at a time.
        whole = only is None or (
            ("name" in only or not self.names) and ("person" in only or self.ner is None)
        )
        hits = self.detector.find(text, None if whole else only)
        if not hits:
            if whole:
                self._remember(text, text)
            return text
        out: list[str] = []
        pos = 0
        for h in hits:
            out.append(text[pos : h.start])
            out.append(self.pseudonym(h, text[h.start : h.end]))
            pos = h.end
        out.append(text[pos:])
        new = "".join(out)
        self._remember(text, new)
        return new

    def _remember(self, text: str, new: str) -> None:
        """Keep a text's pseudonymized form, within about 8 MB of text (then start over)."""
        size = len(text)
        if size > 65536:
            return
        if self._texts_size + size > 8_000_000:
            self._texts.clear()
            self._texts_size = 0
        self._texts[text] = new
        self._texts_size += size

    def _dict_key(self, key: str, only: frozenset[str] | None) -> str:
        """A dict key pseudonymized (keys recur in every event: the clean ones are remembered)."""
        if key in self._clean_keys:
            return key
        new = self.text(key)
        if new == key and len(self._clean_keys) < 65536:
            self._clean_keys.add(key)
        return new

    def whole(self, value: Any) -> Any:
        """A named field's value: all of it is personal. A value of a detected kind keeps its
        shape; a pseudonym stays; anything else (a name, an address) becomes a made-up name."""
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, dict):
            return {k: self.whole(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.whole(v) for v in value]
        text = value if isinstance(value, str) else str(value)
        stripped = text.strip()
        if not stripped or self.is_made_up(stripped) or self._reserved.whole(stripped):
            return value
        if self.detector.whole(stripped) is not None:
            return self.text(text)
        return self.pseudonym(Hit(0, len(text), "field", norm_text(text)), text)

    def is_made_up(self, text: str) -> bool:
        """Whether ``text`` is a made-up name this key gave (its keyed check holds)."""
        words = text.split(" ")
        n = len(words)
        if not 1 <= n <= 3 or [len(w) for w in words] != _word_bits(n):
            return False
        if not all(_NAME_WORD.fullmatch(w) for w in words):
            return False
        bits = _unspell(words)
        check_bits = _CHECK_BITS[n]
        value = bits >> check_bits
        # the name spells (value, check); recompute the check from the value's own HMAC
        return self._name_check(value, n) == bits & ((1 << check_bits) - 1)

    def _made_up_name(self, d: bytes, words: int) -> str:
        """A name-shaped pseudonym: ``words`` (1 to 3) capitalized made-up words spelling
        part of the value's HMAC ``d`` and a keyed check of that part (:meth:`is_made_up`)."""
        n = min(max(words, 1), 3)
        layout = _word_bits(n)
        total = sum(_letters_bits(w) for w in layout)
        check_bits = _CHECK_BITS[n]
        value = int.from_bytes(d[:8], "big") & ((1 << (total - check_bits)) - 1)
        return _spell((value << check_bits) | self._name_check(value, n), layout)

    def _name_check(self, value: int, n: int) -> int:
        d = hmac.digest(self._key, b"name-check\x00" + f"{n}:{value}".encode(), "sha256")
        return int.from_bytes(d[:4], "big") & ((1 << _CHECK_BITS[n]) - 1)

    # -- JSON values -----------------------------------------------------------------------

    def value(self, value: Any) -> Any:
        """A JSON value with personal data replaced (dict keys too), named fields whole."""
        return self._walk(value, (), None)

    def _field(self, path: tuple[str, ...]) -> bool:
        if not self._patterns or not path:
            return False
        if not self._any_last and path[-1] not in self._lasts:
            return False
        n = len(path)
        for p in self._patterns:
            k = len(p)
            if k <= n and all(a in ("*", b) for a, b in zip(p, path[n - k :], strict=True)):
                return True
        return False

    def _walk(self, value: Any, path: tuple[str, ...], only: frozenset[str] | None) -> Any:
        if isinstance(value, str):
            return self.text(value, only)
        if isinstance(value, dict):
            if len(value) == 1 and isinstance(value.get("$dict"), list):
                # A dict whose keys collide as strings, stored as its [key, value] pairs
                # (replayable.canonical.TAGGED_DICT): each pair is that dict's entry.
                return {"$dict": [self._pair(p, path, only) for p in value["$dict"]]}
            out: dict[str, Any] = {}
            for k, v in value.items():
                sub = (*path, k) if self._patterns else path
                nk = self._dict_key(k, only) if isinstance(k, str) else k
                if nk in out:  # two keys met in one pseudonym: keep both apart
                    nk = self.pseudonym(Hit(0, len(k), "field", norm_text(k)), k)
                if self._patterns and self._field(sub):
                    out[nk] = self.whole(v)
                elif isinstance(v, str | dict | list):
                    out[nk] = self._walk(v, sub, only)
                else:
                    out[nk] = v
            return out
        if isinstance(value, list):
            return [self._walk(v, path, only) for v in value]
        return value

    def _pair(self, pair: Any, path: tuple[str, ...], only: frozenset[str] | None) -> Any:
        """One ``[key, value]`` pair of a tagged dict, pseudonymized as that key's entry."""
        if not (isinstance(pair, list) and len(pair) == 2):
            return self._walk(pair, path, only)
        k, v = pair
        name = k if isinstance(k, str) else orjson.dumps(k).decode()
        sub = (*path, name) if self._patterns else path
        nk = self._dict_key(k, only) if isinstance(k, str) else k
        if self._patterns and self._field(sub):
            return [nk, self.whole(v)]
        return [nk, self._walk(v, sub, only) if isinstance(v, str | dict | list) else v]

    def might_hold(self, data: bytes) -> bool:
        """Cheap pre-check on serialized JSON: False means :meth:`value` would change nothing."""
        return self._scan(data) is not None

    def _scan(self, data: bytes) -> frozenset[str] | None:
        """The kinds worth looking for in an event (``name`` for listed names), or None
        when nothing in its bytes could be personal data."""
        kinds = could_hold(data, self._kindset) if self._kindset else set()
        ac = self.detector.names_bytes
        if self.detector.names_always or (
            ac is not None and ac.find_matches_as_indexes(data.lower())
        ):
            kinds.add("name")
        if self.ner is not None and _CAPITAL.search(data) is not None:
            kinds.add("person")  # a name in free text starts with a capital
        if kinds:
            return frozenset(kinds)
        if self._any_last or (self._literals and any(lit in data for lit in self._literals)):
            return frozenset()
        return None

    def clean(self, data: bytes, value: Any = None) -> tuple[bytes, Any]:
        """An input snapshot (JSON bytes, maybe already parsed as ``value``) pseudonymized,
        its order kept: (bytes, the parsed value, or None when nothing needed parsing)."""
        only = self._scan(data)
        if only is None:
            return data, value
        parsed = orjson.loads(data) if value is None else value
        new = self._walk(parsed, (), only)
        if new == parsed:
            return data, value
        return orjson.dumps(new), new

    def json(self, data: bytes) -> bytes:
        """JSON bytes (an output, an error) pseudonymized; the same bytes when nothing is."""
        return self.clean(data)[0]

    def chunks(self, chunks: list[Any]) -> list[Any]:
        """A stream's chunks pseudonymized, including a value split over several chunks (a
        model streams an address token by token): the chunk where it starts gets the
        pseudonym, the others lose their part of it. Text at the same field path in
        consecutive chunks (``choices[0].delta.content``) is read as one text."""
        out = [self.value(c) for c in chunks]
        runs: dict[tuple[Any, ...], list[tuple[int, str]]] = {}
        for i, c in enumerate(out):
            _leaves(c, (), i, runs)
        for path, run in runs.items():
            if len(run) < 2:
                continue
            fixed = self._split([s for _, s in run])
            for (i, old), new in zip(run, fixed, strict=True):
                if new != old:
                    out[i] = _set(out[i], path, new)
        return out

    def _split(self, run: list[str]) -> list[str]:
        joined = "".join(run)
        hits = self.detector.find(joined)
        if not hits:
            return run
        bounds = list(itertools.accumulate(len(c) for c in run))
        inner = bounds[:-1]
        # Only the chunks a value spans change; each is found by bisection (a stream has
        # thousands of chunks, and a value in every few of them).
        touched: dict[int, list[Hit]] = {}
        for h in hits:
            k = bisect.bisect_right(inner, h.start)
            if k == len(inner) or inner[k] >= h.end:
                continue  # inside one chunk: pseudonymized with it already
            last = bisect.bisect_left(bounds, h.end)
            for i in range(k, last + 1):
                touched.setdefault(i, []).append(h)
        if not touched:
            return run
        out = list(run)
        for i, spanning in touched.items():
            lo, hi = bounds[i] - len(run[i]), bounds[i]
            pieces: list[str] = []
            pos = lo
            for h in spanning:
                if h.end <= pos or h.start >= hi:
                    continue
                if h.start >= lo:
                    pieces.append(joined[pos : h.start])
                    pieces.append(self.pseudonym(h, joined[h.start : h.end]))
                pos = max(pos, min(h.end, hi))
            pieces.append(joined[pos:hi])
            out[i] = "".join(pieces)
        return out

    # -- finding without replacing (``replayable scan --pii``) -------------------------------

    def find(self, value: Any, path: str = "") -> list[tuple[str, str]]:
        """Where personal data sits in a JSON value: (field path, kind) pairs, never the value.

        >>> PII(key="k" * 32).pseudonymizer().find({"to": ["dana@acme.io"]})
        [('to[0]', 'email')]
        """
        out: list[tuple[str, str]] = []
        self._find(value, path, (), out)
        return out

    def _find(
        self, value: Any, path: str, keys: tuple[str, ...], out: list[tuple[str, str]]
    ) -> None:
        if isinstance(value, str):
            out.extend((path, h.kind) for h in self.detector.find(value))
        elif isinstance(value, dict):
            for k, v in value.items():
                sub = f"{path}.{k}" if path else str(k)
                if isinstance(k, str) and self.detector.find(k):
                    sub = f"{path}.<key>" if path else "<key>"  # the path never names the value
                    out.append((sub, self.detector.find(k)[0].kind))
                fkeys = (*keys, str(k))
                if self._field(fkeys) and self.whole(v) != v:
                    out.append((sub, "field"))
                else:
                    self._find(v, sub, fkeys, out)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                self._find(v, f"{path}[{i}]", keys, out)

    # -- a run's header ----------------------------------------------------------------------

    def run(self, run: Run) -> None:
        """Pseudonymize a run's header in place (name, tags, metadata, environment, error)
        and note the settings a replay needs in its metadata (``pii``)."""
        if run.name is not None:
            run.name = self.text(run.name)
        run.tags = self.value(run.tags)
        metadata = {k: v for k, v in run.metadata.items() if k != META_KEY}
        run.metadata = {**self.value(metadata), META_KEY: self.settings()}
        run.environment = self.value(run.environment)
        if run.error is not None:
            run.error = self.value(run.error)

    # -- settings kept with a run ------------------------------------------------------------

    def settings(self) -> dict[str, Any]:
        """What a replay needs to pseudonymize the same way, for the run's metadata: kinds,
        fields, region, the key's id, and the listed names sealed under the key. Never the
        key, never a name in clear."""
        out: dict[str, Any] = {
            "v": 1,
            "kinds": list(self.kinds),
            "fields": list(self.fields),
            "region": self.region,
            "key_id": self.key_id,
        }
        if self.vault is not None:
            out["vault"] = self.vault
        if self.key_file is not None:
            out["key_file"] = self.key_file
        if self.ner is not None:
            out["ner"] = self.ner
        if self.names:
            out["names"] = _seal(self._key, json.dumps(list(self.names)).encode())
        return out


def _leaves(
    value: Any, path: tuple[Any, ...], i: int, runs: dict[tuple[Any, ...], list[tuple[int, str]]]
) -> None:
    if isinstance(value, str):
        runs.setdefault(path, []).append((i, value))
    elif isinstance(value, dict):
        for k, v in value.items():
            _leaves(v, (*path, k), i, runs)
    elif isinstance(value, list):
        for j, v in enumerate(value):
            _leaves(v, (*path, j), i, runs)


def _set(value: Any, path: tuple[Any, ...], new: str) -> Any:
    if not path:
        return new
    head, rest = path[0], path[1:]
    if isinstance(value, dict):
        return {**value, head: _set(value[head], rest, new)}
    copy = list(value)
    copy[head] = _set(copy[head], rest, new)
    return copy


# -- sealing the listed names in the run's metadata --------------------------------------------


def _seal(key: bytes, plain: bytes) -> str:
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    nonce = os.urandom(12)
    box = AESGCM(derive(key, "names")).encrypt(nonce, plain, b"replayable/pii/names")
    return base64.b64encode(nonce + box).decode()


def _unseal(key: bytes, sealed: str, run_id: str) -> bytes:
    from cryptography.exceptions import InvalidTag
    from cryptography.hazmat.primitives.ciphers.aead import AESGCM

    raw = base64.b64decode(sealed)
    try:
        return AESGCM(derive(key, "names")).decrypt(raw[:12], raw[12:], b"replayable/pii/names")
    except InvalidTag as exc:
        raise PIIKeyError(
            f"run {run_id}: its listed names do not open with this key", run_id=run_id
        ) from exc


def run_key(run_id: str, settings: dict[str, Any], explicit: PII | None, doing: str) -> bytes:
    """The key to replay or reveal a run with: ``explicit``'s, else the environment's, else
    the key file the run's code named (checked: a regular file readable by its owner only,
    holding the run's key, so an edited store cannot make us use some other file)."""
    try:
        return load_key(explicit.key if explicit else None, explicit.key_file if explicit else None)
    except PIIKeyError as exc:
        missing = exc
    named = settings.get("key_file")
    if isinstance(named, str) and named:
        path = Path(named)
        try:
            private = path.is_file() and not path.stat().st_mode & 0o077
            raw = path.read_bytes().strip() if private else b""
        except OSError:
            raw = b""
        if len(raw) >= MIN_KEY_BYTES and key_id(raw) == settings.get("key_id"):
            return raw
    raise PIIKeyError(
        f"run {run_id} was recorded with personal data pseudonymized (key id "
        f"{settings.get('key_id')}); {doing} it needs the same key: {missing}",
        run_id=run_id,
    ) from missing


# -- which policy a run records under ---------------------------------------------------------

_STORE_DEFAULTS: weakref.WeakKeyDictionary[Any, PII] = weakref.WeakKeyDictionary()


def set_store_default(store: Any, pii: PII | bool | None) -> None:
    """Make ``pii`` the default of every run recorded into ``store`` (``None`` clears it)."""
    if pii is None or pii is False:
        _STORE_DEFAULTS.pop(store, None)
    else:
        _STORE_DEFAULTS[store] = PII() if pii is True else pii


def for_record(pii: PII | bool | None, store: Any) -> Pseudonymizer | None:
    """The policy a new run records under: ``pii=`` as given, else the store's default, else
    ``$REPLAYABLE_PII`` (``1``/``true``/``yes``: every kind)."""
    if pii is None and store is not None:
        pii = _STORE_DEFAULTS.get(store)
    if pii is None:
        pii = os.environ.get(PII_ENV, "").strip().lower() in ("1", "true", "yes", "on")
    if pii is False:
        return None
    if pii is True:
        pii = PII()
    if not isinstance(pii, PII):
        raise TypeError(f"pii= takes True, False or rp.PII(...), not {pii!r}")
    return pii.pseudonymizer()


def active() -> Pseudonymizer | None:
    """The pseudonymizer of the record or replay active in this context, if it has one (a
    step named from data, such as an HTTP request's path, is named with pseudonyms)."""
    from replayable.context import SESSION

    policy = getattr(SESSION.get(), "policy", None)
    for part in (policy, getattr(policy, "keeper", None), getattr(policy, "matcher", None)):
        found = getattr(part, "pii", None)
        if isinstance(found, Pseudonymizer):
            return found
    return None


def for_replay(
    run_id: str, metadata: dict[str, Any], pii: PII | bool | None
) -> Pseudonymizer | None:
    """The policy a replay of a run applies to live inputs: the one the run was recorded
    under (from its metadata), with the key from ``pii=`` or the environment; it must be the
    same key, or the pseudonyms would not match."""
    settings = metadata.get(META_KEY)
    if not isinstance(settings, dict):
        return None  # recorded in clear: live inputs must match it as they are
    explicit = pii if isinstance(pii, PII) else None
    key = run_key(run_id, settings, explicit, "replaying")
    if key_id(key) != settings.get("key_id"):
        raise PIIKeyError(
            f"run {run_id} was pseudonymized under key id {settings.get('key_id')}, but the key "
            f"set now has id {key_id(key)}: set $REPLAYABLE_PII_KEY to the key it was recorded "
            "with (under another key no live input would match)",
            run_id=run_id,
        )
    names: list[str] = []
    if isinstance(settings.get("names"), str):
        names = json.loads(_unseal(key, settings["names"], run_id))
    ner = _replay_ner(run_id, settings.get("ner"), explicit)
    return Pseudonymizer(
        key,
        kinds=[str(k) for k in settings.get("kinds", KINDS)],
        fields=[str(f) for f in settings.get("fields", ())],
        names=names,
        region=str(settings.get("region", "US")),
        ner=ner,
    )


def _replay_ner(run_id: str, recorded: Any, explicit: PII | None) -> str | None:
    """The NER model a replay loads: the cue patterns as the run's settings say, but a spaCy
    pipeline only when the caller names the same one (``PII(ner=...)`` or ``$REPLAYABLE_PII_NER``):
    loading a pipeline imports its package, and a store is not trusted to name code to run."""
    from replayable._pii_ner import RULES

    if recorded is None or recorded == RULES:
        return recorded  # type: ignore[no-any-return]
    asked = _ner_model(explicit.ner) if explicit is not None else None
    asked = asked or os.environ.get(NER_ENV) or None
    if asked != recorded:
        raise ReplayableError(
            f"run {run_id} found names with the spaCy pipeline {str(recorded)[:80]!r}; a replay "
            "loads a pipeline only when you name it (a store cannot choose code to import): pass "
            f"pii=rp.PII(ner=...) or set ${NER_ENV} to that pipeline, installed here"
        )
    return asked
