"""Finding personal data in text: where each value sits and what kind it is.

Every detector validates what its pattern finds before it counts: a phone number must parse
as a valid number (``phonenumbers``, Google's libphonenumber), a card number must pass Luhn, an
IBAN its mod-97 checksum and its country's length, an IP address ``ipaddress``, an SSN the
rules the SSA issues by. No NER model: free-text names are found only when listed
(``names=``) or under a named field (``fields=``).

Values already in the reserved ranges pseudonyms are drawn from (``example.com`` addresses,
fictional phone ranges, the ``400000`` test card range, documentation IP ranges, SSN areas
900-999, IBANs whose bank code is zeros) are not personal data, so a pseudonym is never
pseudonymized again.
"""

from __future__ import annotations

import bisect
import functools
import ipaddress
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import ahocorasick_rs

__all__ = [
    "KINDS",
    "Detector",
    "Hit",
    "iban_ok",
    "is_reserved_email",
    "luhn_ok",
    "norm_text",
    "phone_reserved",
    "phonenumbers_module",
]

KINDS = ("email", "phone", "card", "iban", "ip", "ssn")
"""The kinds found by shape; ``name`` (listed values) and ``field`` (named fields) come on top."""


@dataclass(frozen=True, slots=True)
class Hit:
    """One value found in a text: its span, its kind, and its normalized form (what the
    pseudonym is derived from, so ``Dana@Acme.io`` and ``dana@acme.io`` agree)."""

    start: int
    end: int
    kind: str
    norm: str
    extra: Any = None
    """Kind-specific detail the pseudonym keeps (a phone's region and format, say)."""


_EMAIL = re.compile(
    r"(?<![\w.+%-])[A-Za-z0-9][A-Za-z0-9._%+-]{0,63}@(?:[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,24}(?![\w-])"
)
_RESERVED_DOMAINS = ("example.com", "example.net", "example.org")
_RESERVED_TLDS = ("example", "invalid", "test", "localhost")

# A run of digits with the separators numbers are written with; a hyphen, dot or slash
# before it means it is part of a word or an id (``chatcmpl-00001234``), not a number.
_NUMERIC = re.compile(r"(?:(?<![\w+\-/.#])|(?<=/)(?=\+))\+?\(?\d[\d ().\-]{5,24}\d(?![\w])")
"""A candidate number: not glued to a word, an id or another number, except an international
number right after a slash (a URL path segment: ``/phones/+14158675309``)."""
_IPV4 = re.compile(r"(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?![\w])(?!\.\d)")
_IPV6 = re.compile(
    r"(?<![\w:.])(?:[0-9A-Fa-f]{1,4}:|:)(?:[0-9A-Fa-f]{0,4}:){1,7}[0-9A-Fa-f]{0,4}(?![\w:])"
)
_IBAN = re.compile(r"(?<![\w])([A-Z]{2})(\d{2})((?: ?[A-Z0-9]){11,30})(?![\w])")
_CODE_BEFORE = re.compile(r"(?<![\w])[A-Z]{2}\d{2} (?:[A-Z0-9]{4} )*\Z")
_CODE_SPAN = 64
"""How far back a code's letters are looked for (an IBAN, spaced, is at most 42 characters;
a bound, so a text of many numbers is read in one pass, not one pass per number)."""
_DATE = re.compile(r"\d{4}[-/.]\d{1,2}[-/.]\d{1,2}|\d{1,2}[-/.]\d{1,2}[-/.]\d{4}")
_SSN = re.compile(r"(\d{3})([- ])(\d{2})\2(\d{4})")

_IBAN_LENGTHS = {
    "AD": 24, "AE": 23, "AL": 28, "AT": 20, "AZ": 28, "BA": 20, "BE": 16, "BG": 22, "BH": 22,
    "BR": 29, "BY": 28, "CH": 21, "CR": 22, "CY": 28, "CZ": 24, "DE": 22, "DK": 18, "DO": 28,
    "EE": 20, "EG": 29, "ES": 24, "FI": 18, "FO": 18, "FR": 27, "GB": 22, "GE": 22, "GI": 23,
    "GL": 18, "GR": 27, "GT": 28, "HR": 21, "HU": 28, "IE": 22, "IL": 23, "IQ": 23, "IS": 26,
    "IT": 27, "JO": 30, "KW": 30, "KZ": 20, "LB": 28, "LC": 32, "LI": 21, "LT": 20, "LU": 20,
    "LV": 21, "MC": 27, "MD": 24, "ME": 22, "MK": 19, "MR": 27, "MT": 31, "MU": 30, "NL": 18,
    "NO": 15, "PK": 24, "PL": 28, "PS": 29, "PT": 25, "QA": 29, "RO": 24, "RS": 22, "SA": 24,
    "SC": 31, "SE": 24, "SI": 19, "SK": 24, "SM": 27, "ST": 25, "SV": 28, "TL": 23, "TN": 24,
    "TR": 26, "UA": 29, "VA": 22, "VG": 24, "XK": 20,
}  # fmt: skip
"""IBAN length per country (the SWIFT registry)."""

_DOC_NETS = (
    ipaddress.ip_network("192.0.2.0/24"),
    ipaddress.ip_network("198.51.100.0/24"),
    ipaddress.ip_network("203.0.113.0/24"),
    ipaddress.ip_network("2001:db8::/32"),
)


def _table(keep: bytes = b"", **groups: bytes) -> bytes:
    """A ``bytes.translate`` table: each group's bytes to the last letter of its name, the
    ``keep`` bytes as they are, anything else to ``x``."""
    table = bytearray(b"x" * 256)
    for c in keep:
        table[c] = c
    for to, chars in groups.items():
        for c in chars:
            table[c] = ord(to[-1])
    return bytes(table)


_DIGITS = b"0123456789"
_CLASSES = _table(
    b".:@",
    d0=_DIGITS,
    uA=b"ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    lh=b"abcdef",
    ss=b" -()/",
)
"""Each byte to its class: digit ``0``, capital ``A``, hex letter ``h``, separator ``s``;
``.``, ``:`` and ``@`` as they are; anything else ``x``."""
_SHAPES: tuple[tuple[bytes, str], ...] = (
    # Every phone, card or SSN holds one of these (a four-digit block, or groups of two or
    # three: "06 12 34 56 78", "415.867.5309").
    *((shape, "numeric") for shape in (b"0000", b"00s00s00", b"00.00.00", b"000s000", b"000.000")),
    *((shape, "ip6") for shape in (b"::", b"0:0", b"0:h", b"h:0", b"h:h")),
    (b"0.0", "ip4"),
    (b"AA00", "iban"),
    (b"@", "email"),
)
_SHAPE_AC = ahocorasick_rs.BytesAhoCorasick(
    [shape for shape, _ in _SHAPES], implementation=ahocorasick_rs.Implementation.DFA
)
_IP4_SHAPE = re.compile(rb"0{1,3}\.0{1,3}\.0{1,3}\.0")


def could_hold(data: bytes, kinds: frozenset[str]) -> set[str]:
    """The kinds whose detector could find something in ``data`` (UTF-8 text or JSON): one
    ``bytes.translate`` to character classes and one Aho-Corasick pass over it for the
    shapes personal values take (no regular expression over the whole text).

    A number's shape counts when its run of digits and separators could hold what
    :data:`_NUMERIC` takes (:func:`_number_run`); each run is judged once, so a text of many
    numbers costs one pass, not a pass per number."""
    t = data.translate(_CLASSES)
    found: dict[str, int] = {}
    run_end = -1
    # overlapping: a shape must not hide another ("0.0" of "500.20.0000" would hide its "0000")
    for i, start, _ in _SHAPE_AC.find_matches_as_indexes(t, overlapping=True):
        shape = _SHAPES[i][1]
        if shape in found:
            continue
        if shape == "numeric":
            if start < run_end:
                continue  # its run was judged with an earlier number in it
            ok, run_end = _number_run(data, t, start)
            if not ok:
                continue
        found[shape] = start  # the first place each shape shows
    if not found:
        return set()
    out: set[str] = set()
    if "numeric" in found:
        out.update(kinds & _NUMERIC_KINDS)
    if "ip" in kinds and (
        "ip6" in found
        or ("ip4" in found and _IP4_SHAPE.search(t, max(0, found["ip4"] - 2)) is not None)
    ):
        out.add("ip")
    if "iban" in found and "iban" in kinds:
        out.add("iban")
    if "email" in found and "email" in kinds:
        out.add("email")
    return out


MIN_DIGITS = 7
"""The fewest digits a phone number (the shortest numeric kind) is written with."""
_NUMERIC_KINDS = frozenset({"phone", "card", "ssn"})
_IN_RUN = frozenset(b"0s.")
_RUN = re.compile(rb"[0s.]*")
"""Digits and the separators numbers are written with, as :data:`_CLASSES` maps them (all
that :data:`_NUMERIC` takes after its ``+``, and ``/``)."""
_CLEAR_GROUP = re.compile(rb"(?:(?<![\w\-/.#])|(?<=\\.))\d", re.DOTALL)
"""A digit that starts a group where a number can start: not glued to a letter, a digit or
one of ``_-/.#`` (a word, an id, another number), or right after a JSON escape (``\\n415``: a
new line, whatever letter the escape is). Searched within one run only; its look-behind sees
the bytes before the run."""


def _number_run(data: bytes, t: bytes, at: int) -> tuple[bool, int]:
    """Whether the run of digits and separators around ``at`` could hold a number
    :data:`_NUMERIC` takes, and where the run ends.

    A number starts at a group of digits not glued to a word or an id (after a space, a
    bracket, a quote, a plus; not ``chatcmpl-00000003`` or ``gpt-4o-2024-08-06``), and holds
    at least :data:`MIN_DIGITS` digits: so the run needs a group that starts clear with that
    many digits from it to the run's end (``id-1234 415-867-5309`` has one at ``415``)."""
    begin = at
    while begin > 0 and t[begin - 1] in _IN_RUN:
        begin -= 1
    end = _RUN.match(t, at).end()  # type: ignore[union-attr]
    clear = _CLEAR_GROUP.search(data, begin, end)
    if clear is None:
        return False, end
    return t.count(b"0", clear.start(), end) >= MIN_DIGITS, end


def norm_text(value: str) -> str:
    """A listed or field value as its pseudonym is derived from it: case and spacing aside."""
    return " ".join(value.casefold().split())


def is_reserved_email(domain: str) -> bool:
    """True for the domains reserved for examples (RFC 2606): not anyone's address."""
    d = domain.lower()
    return d in _RESERVED_DOMAINS or d.rsplit(".", 1)[-1] in _RESERVED_TLDS


def luhn_ok(digits: str) -> bool:
    """The Luhn checksum every payment card number carries."""
    total = 0
    for i, ch in enumerate(reversed(digits)):
        d = ord(ch) - 48
        if i % 2:
            d *= 2
            if d > 9:
                d -= 9
        total += d
    return total % 10 == 0


def iban_ok(iban: str) -> bool:
    """An IBAN (no spaces, upper case) of its country's length whose mod-97 checksum holds."""
    if _IBAN_LENGTHS.get(iban[:2]) != len(iban):
        return False
    moved = iban[4:] + iban[:4]
    return int("".join(str(int(c, 36)) for c in moved)) % 97 == 1


def _ssn_ok(area: str, group: str, serial: str) -> bool:
    return area not in ("000", "666") and area[0] != "9" and group != "00" and serial != "0000"


def phone_reserved(national: str, country: int) -> bool:
    """A number in a range set aside for fiction, which no one can have (see
    :mod:`replayable._pii`: pseudonyms are drawn from these)."""
    if country == 1:
        return len(national) == 10 and national[3:6] == "555" and national[6:8] == "01"
    if country == 44:
        return national.startswith("2079460")
    if country == 33:
        return national.startswith("19900")
    if country == 61:
        return national.startswith("25550")
    return False


_UNSEEN: Any = object()


@functools.lru_cache(maxsize=1)
def phonenumbers_module() -> Any:
    """The ``phonenumbers`` library, imported on first use (a clear error without the extra)."""
    try:
        import phonenumbers
    except ImportError as exc:  # pragma: no cover - the extra is in every install we test
        from replayable.errors import ReplayableError

        raise ReplayableError(
            "finding phone numbers needs the phonenumbers library: "
            'pip install "replayable[pii]" (or leave "phone" out of PII(kinds=...))'
        ) from exc
    return phonenumbers


class _Hits(list[Hit]):
    """Hits found so far, with the spans they cover kept merged and sorted, so whether a
    span is taken is a bisection, not a pass over every hit (a text of many values)."""

    def __init__(self) -> None:
        super().__init__()
        self._starts: list[int] = []
        self._ends: list[int] = []

    def append(self, hit: Hit) -> None:
        super().append(hit)
        start, end = hit.start, hit.end
        starts, ends = self._starts, self._ends
        i = bisect.bisect_left(starts, start)
        if i and ends[i - 1] > start:  # overlaps the span before it: merge into that
            i -= 1
            start = starts[i]
        j = i
        while j < len(starts) and starts[j] < end:
            end = max(end, ends[j])
            j += 1
        starts[i:j] = [start]
        ends[i:j] = [end]

    def taken(self, start: int, end: int) -> bool:
        """Whether a hit covers any of ``start:end``."""
        i = bisect.bisect_left(self._starts, end) - 1
        return i >= 0 and self._ends[i] > start


class Detector:
    """The detectors for a set of kinds and listed values; ``find(text)`` returns the hits,
    left to right, not overlapping."""

    def __init__(
        self,
        kinds: Iterable[str],
        names: Iterable[str] = (),
        region: str = "US",
        *,
        reserved: bool = False,
        ner: Any = None,
        made_up: Callable[[str], bool] | None = None,
    ) -> None:
        self.kinds = frozenset(kinds)
        self.ner = ner
        """A :class:`~replayable._pii_ner.NameRecognizer` for names in free text, or None."""
        self._made_up = made_up
        """Whether a name found is a pseudonym already (left alone: idempotence)."""
        self._phones: dict[str, Hit | bool | None] = {}
        self.reserved = reserved
        """Find only values in the reserved ranges (pseudonyms) instead of only those outside."""
        self.region = region
        if "phone" in self.kinds:
            phonenumbers_module()
        listed = sorted({norm_text(n) for n in names if norm_text(n)}, key=len, reverse=True)
        self.names = tuple(listed)
        words = {_ascii_part(n) for n in self.names}
        self.names_always = b"" in words
        self.names_bytes = (
            ahocorasick_rs.BytesAhoCorasick(sorted(words - {b""}))
            if words - {b""} and not reserved
            else None
        )
        """The longest ASCII run of each listed name, to look for in an event's bytes lowered
        (``bytes.lower`` lowers ASCII only); ``names_always``: a name has none."""
        self._names_ac = (
            ahocorasick_rs.AhoCorasick(
                list(self.names), matchkind=ahocorasick_rs.MatchKind.LeftmostLongest
            )
            if self.names
            else None
        )

    def find(self, text: str, only: frozenset[str] | None = None) -> list[Hit]:
        """Every personal value in ``text`` (first found wins where two overlap); ``only``
        limits the shape detectors to those kinds (what a whole event's check left)."""
        hits = _Hits()
        shapes = self.kinds if only is None else self.kinds & only
        kinds: set[str] | tuple[()] = ()
        if shapes and len(text) >= 6:  # "a@b.io": nothing shorter has a shape
            kinds = could_hold(text.encode(), shapes)
        if "email" in kinds:
            self._emails(text, hits)
        if self._names_ac is not None and (only is None or "name" in only):
            self._listed(text, hits)
        if self.ner is not None and (only is None or "person" in only):
            self._people(text, hits)
        if "iban" in kinds:
            self._ibans(text, hits)
        if "ip" in kinds:
            self._ipv4(text, hits)
            self._ipv6(text, hits)
        if "phone" in kinds or "card" in kinds or "ssn" in kinds:
            self._numbers(text, hits)
        if len(hits) < 2:
            return hits
        hits.sort(key=lambda h: (h.start, -h.end))
        out: list[Hit] = []
        end = -1
        for h in hits:
            if h.start >= end:
                out.append(h)
                end = h.end
        return out

    def whole(self, text: str) -> Hit | None:
        """The hit covering all of ``text`` (stripped), when it is one value of a kind."""
        stripped = text.strip()
        for h in self.find(stripped):
            if h.start == 0 and h.end == len(stripped):
                return h
        return None

    # -- the detectors ----------------------------------------------------------------------

    @staticmethod
    def _taken(hits: _Hits, start: int, end: int) -> bool:
        return hits.taken(start, end)

    def _emails(self, text: str, hits: _Hits) -> None:
        for m in _EMAIL.finditer(text):
            domain = m[0].rsplit("@", 1)[1]
            if is_reserved_email(domain) == self.reserved:
                hits.append(Hit(m.start(), m.end(), "email", m[0].lower()))

    def _listed(self, text: str, hits: _Hits) -> None:
        low = text.lower()
        if len(low) != len(text):  # a character whose lower case is longer: compare slowly
            low = "".join(c if len(c.lower()) != 1 else c.lower() for c in text)
        ac = self._names_ac
        assert ac is not None
        for index, start, end in ac.find_matches_as_indexes(low):
            before = text[start - 1] if start else " "
            after = text[end] if end < len(text) else " "
            if before.isalnum() or after.isalnum() or before == "_" or after == "_":
                continue  # part of a longer word: "Dana" in "Danaher"
            hits.append(Hit(start, end, "name", self.names[index]))

    def _people(self, text: str, hits: _Hits) -> None:
        """Names the NER extra finds in free text (:mod:`replayable._pii_ner`), as listed
        names are pseudonymized; a made-up name (a pseudonym) is left alone."""
        for start, end in self.ner.find(text):
            found = text[start:end]
            if self._taken(hits, start, end) or (self._made_up and self._made_up(found)):
                continue
            hits.append(Hit(start, end, "name", norm_text(found)))

    def _ibans(self, text: str, hits: _Hits) -> None:
        for m in _IBAN.finditer(text):
            country = m[1]
            length = _IBAN_LENGTHS.get(country)
            if length is None:
                continue
            # Take exactly the country's length (a word after the IBAN may have run on).
            need = length - 4
            pos = m.start(3)
            got: list[str] = []
            end = pos
            body = text
            while end < m.end() and len(got) < need:
                ch = body[end]
                if ch != " ":
                    got.append(ch)
                end += 1
            if len(got) != need or (end < len(text) and text[end].isalnum()):
                continue
            iban = country + m[2] + "".join(got)
            if (
                iban_ok(iban)
                and _iban_reserved(iban) == self.reserved
                and not self._taken(hits, m.start(), end)
            ):
                hits.append(Hit(m.start(), end, "iban", iban))

    def _ipv4(self, text: str, hits: _Hits) -> None:
        for m in _IPV4.finditer(text):
            try:
                addr = ipaddress.IPv4Address(m[0])
            except ValueError:
                continue
            if _ip_personal(addr) != self.reserved and not self._taken(hits, m.start(), m.end()):
                hits.append(Hit(m.start(), m.end(), "ip", str(addr)))

    def _ipv6(self, text: str, hits: _Hits) -> None:
        for m in _IPV6.finditer(text):
            if m[0].count(":") < 2:
                continue
            try:
                addr = ipaddress.IPv6Address(m[0])
            except ValueError:
                continue
            if _ip_personal(addr) != self.reserved and not self._taken(hits, m.start(), m.end()):
                hits.append(Hit(m.start(), m.end(), "ip", str(addr)))

    def _numbers(self, text: str, hits: _Hits) -> None:
        for m in _NUMERIC.finditer(text):
            start, cand = m.start(), m[0]
            date = _DATE.match(cand)
            if date is not None:  # a date (and maybe a time) first: what follows may be a number
                start, cand = start + date.end(), cand[date.end() :]
                lead = len(cand) - len(cand.lstrip(" ("))
                start, cand = start + lead, cand[lead:]
                if not cand[:1].isdigit() and not cand.startswith("+"):
                    continue
            self._number(text, start, start + len(cand), hits)

    def _number(self, text: str, start: int, end: int, hits: _Hits) -> None:  # noqa: C901, PLR0912 - split once the pii work in flight lands
        cand = text[start:end]
        # a bracket or separator the pattern took at the end belongs to the sentence
        while cand and cand[-1] in " .-(":
            cand = cand[:-1]
            end -= 1
        if self._taken(hits, start, end) or (end < len(text) and text[end] == ":"):
            return  # a time of day ("12:30") or a port
        digits = "".join(c for c in cand if c.isdigit())
        kinds = self.kinds
        if "ssn" in kinds:
            for m in _SSN.finditer(cand):
                s, e = start + m.start(), start + m.end()
                lone = (s == 0 or not text[s - 1].isalnum()) and (
                    e == len(text) or not text[e].isalnum()
                )
                ok = _ssn_ok(m[1], m[3], m[4]) if not self.reserved else m[1][0] == "9"
                if lone and m[0] == cand.strip("( )") and ok:
                    hits.append(Hit(s, e, "ssn", m[1] + m[3] + m[4]))
                    return
        card = "card" in kinds and 13 <= len(digits) <= 19 and _card_shaped(cand, digits)
        if card and luhn_ok(digits):
            if digits.startswith("400000") == self.reserved:
                hits.append(Hit(start, end, "card", digits))
            return
        if "phone" not in kinds or card:
            return  # a card-shaped number that fails Luhn is no phone number either
        if cand == digits and not 10 <= len(digits) <= 11:
            return  # a bare run of digits of another length is an order, a ticket, a barcode
        if _CODE_BEFORE.search(text, max(0, start - _CODE_SPAN), start) is not None:
            return  # the rest of a code that starts with letters (an IBAN failing its checksum)
        if 7 <= len(digits) <= 15:
            hit = self._phone(cand, start)
            if hit is not None:
                if isinstance(hit, Hit):
                    hits.append(hit)
                return
        groups = list(re.finditer(r"\S+", cand))
        if len(digits) > 7 and len(groups) > 1:
            # Two numbers side by side ("order 1234 415-867-5309"): drop whole groups from
            # the front or the back, longest rest first, once the whole did not parse.
            for size in range(len(groups) - 1, 0, -1):
                for first in (len(groups) - size, 0):
                    a, b = groups[first].start(), groups[first + size - 1].end()
                    sub = cand[a:b]
                    if 7 <= sum(c.isdigit() for c in sub) <= 15:
                        hit = self._phone(sub, start + a)
                        if hit is not None:
                            if isinstance(hit, Hit):
                                hits.append(hit)
                            return

    def _phone(self, cand: str, offset: int) -> Hit | bool | None:
        """A hit; True for a valid number this detector leaves (reserved, or not reserved
        when looking for pseudonyms); None when it is no phone number. Parsing is the
        costly part, and the same number recurs in every step: the verdict is remembered."""
        got = self._phones.get(cand, _UNSEEN)
        if got is _UNSEEN:
            got = self._parse_phone(cand)
            if len(self._phones) > 8192:
                self._phones.clear()
            self._phones[cand] = got
        if isinstance(got, Hit):
            lead = 1 if cand.startswith("(") and ")" not in cand else 0
            return Hit(offset + lead, offset + lead + got.end, "phone", got.norm, got.extra)
        return bool(got) if got is not None else None

    def _parse_phone(self, cand: str) -> Hit | bool | None:
        """:meth:`_phone` uncached; a hit's span is relative to ``cand`` less an unclosed
        bracket in front."""
        pn = phonenumbers_module()
        if cand.startswith("(") and ")" not in cand:  # the bracket opens the sentence's aside
            cand = cand[1:]
        try:
            num = pn.parse(cand, self.region)
        except pn.NumberParseException:
            return None
        if not pn.is_valid_number(num):
            return None
        if phone_reserved(str(num.national_number), num.country_code) != self.reserved:
            return True
        e164 = pn.format_number(num, pn.PhoneNumberFormat.E164)
        style = "intl" if cand.startswith("+") else "national"
        return Hit(0, len(cand), "phone", e164, style)


def _ascii_part(name: str) -> bytes:
    """The longest run of ASCII letters in a (lowercased) name, if 3 or more long."""
    runs = re.findall(r"[a-z]{3,}", name)
    return max(runs, key=len).encode() if runs else b""


def _card_shaped(cand: str, digits: str) -> bool:
    """Written as a card number is: digits alone, or groups split by one kind of separator."""
    body = cand.strip()
    if body == digits:
        return True
    seps = {c for c in body if not c.isdigit()}
    return (
        len(seps) == 1 and seps <= {" ", "-"} and all(len(g) >= 3 for g in re.split(r"[ -]", body))
    )


def _iban_reserved(iban: str) -> bool:
    """A pseudonym's IBAN: its bank code (the BBAN's first four characters) is ``0000``
    or ``XXXX``."""
    return all(c in "0X" for c in iban[4:8])


def _ip_personal(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """An address that can point at a person: not a documentation range, loopback, the
    unspecified address, multicast or link-local."""
    if addr.is_loopback or addr.is_unspecified or addr.is_multicast or addr.is_link_local:
        return False
    return not any(addr.version == n.version and addr in n for n in _DOC_NETS)
