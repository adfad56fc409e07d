"""Names in free text, for ``rp.PII(ner=...)``: the optional NER extra (``replayable[ner]``).

Without it, a name is found only when it is listed (``names=``) or sits under a named field
(``fields=``). With it, names written in running text are found too:

- ``ner=True``: a spaCy *blank* pipeline with an ``entity_ruler`` whose patterns find one to
  three capitalized words after a cue that introduces a person (``I'm``, ``my name is``,
  ``Dear``, ``Mr``/``Ms``/``Dr``, ``spoke with``, ``Regards,`` and their German, French,
  Spanish and Dutch forms). It needs spaCy, not a model: no model download, deterministic, and
  it looks at nothing but text holding a cue (one regular expression decides that first).
- ``ner="en_core_web_sm"`` (any installed spaCy pipeline, by package name or path): that
  pipeline's ``PERSON`` entities too, with the same cue patterns in front of its ``ner``. The
  model is the user's: replayable does not install one.

spaCy is imported only when a recognizer is built; a missing spaCy or model is a
:class:`~replayable.errors.ReplayableError` saying what to install. Detection of every other
kind works without it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Iterator
from typing import Any

from replayable.errors import ReplayableError

__all__ = ["RULES", "NameRecognizer"]

RULES = "rules"
"""The name of the blank-pipeline recognizer in a run's settings (``ner=True``)."""

_MAX_WINDOW = 100_000
"""Characters given to spaCy at once (its own bound is a million): a longer text is read in
windows cut at a line break or a space."""

_HONORIFICS = (
    *("mr", "mrs", "ms", "miss", "mx", "dr", "prof", "sir", "madam"),
    *("herr", "frau", "monsieur", "madame", "mme", "mlle", "m."),
    *("señor", "señora", "sr", "sra", "srta", "dhr", "mevr", "mevrouw", "meneer"),
)
_CUES: tuple[tuple[str, ...], ...] = tuple(
    tuple(c.split())
    for c in (
        "i 'm",
        "i am",
        "im",
        "my name is",
        "name is",
        "this is",
        "dear",
        "hi",
        "hello",
        "hey",
        "thanks ,",
        "thank you ,",
        "regards ,",
        "best ,",
        "sincerely ,",
        "cheers ,",
        "spoke with",
        "spoke to",
        "talked to",
        "talked with",
        "customer",
        "contact",
        "name :",
        "customer :",
        "contact :",
        "ich bin",
        "ich heiße",
        "mein name ist",
        "sehr geehrte",
        "sehr geehrter",
        "liebe",
        "lieber",
        "grüße ,",
        "je suis",
        "je m'appelle",
        "bonjour",
        "cordialement ,",
        "me llamo",
        "mi nombre es",
        "soy",
        "hola",
        "estimado",
        "estimada",
        "saludos ,",
        "ik ben",
        "mijn naam is",
        "beste",
        "geachte",
        "groeten ,",
    )
) + tuple((h,) for h in _HONORIFICS)
_CUE_WORDS = frozenset(w.rstrip(".") for c in _CUES for w in c if w.isalpha() or "." in w)
_NOT_A_NAME = [
    "customer",
    "customers",
    "sir",
    "madam",
    "team",
    "support",
    "there",
    "all",
    "everyone",
    "sorry",
    "happy",
    "glad",
    "not",
    "the",
    "a",
    "an",
    "here",
    "back",
    "afraid",
    "good",
    "fine",
    "well",
    "service",
    "care",
    "i",
    "we",
    "you",
    "it",
    "this",
    "that",
    "please",
    "thanks",
    "and",
    "or",
    "us",
    "me",
    "him",
    "her",
    "them",
    "our",
    "your",
    "my",
    "grüße",
    "wünsche",
    "regards",
    "wishes",
    "world",
]
"""Capitalized words a cue is often followed by that are no name (``Dear Customer``)."""


def _phrase(cue: tuple[str, ...]) -> str:
    """A cue's tokens as a regular expression for the text they come from (``i 'm`` is
    ``I'm`` or ``I’m``; ``thanks ,`` is ``Thanks,``)."""
    out = re.escape(cue[0])
    for t in cue[1:]:
        glued = t.startswith("'") or t in (",", ":") or out.endswith("'")
        out += (r"\s*" if t in (",", ":") else "" if glued else r"\s+") + re.escape(t)
    out = out.replace("'", "['’]")
    return out + (r"(?!\w)" if cue[-1][-1].isalnum() else "")


_CUE_RE = re.compile(
    r"(?<!\w)(?:" + "|".join(sorted({_phrase(c) for c in _CUES}, key=len, reverse=True)) + ")",
    re.IGNORECASE,
)
"""Text in which none of the cues is written holds nothing the rules would find."""


def _patterns() -> list[dict[str, Any]]:
    """The entity_ruler patterns: a cue, then one to three capitalized words (the first not
    a common non-name); the pattern's id says how many tokens the cue took. Cues that differ
    in their first token only share one pattern (its first token a list): spaCy's matcher
    costs about the same per pattern, however long its lists."""
    word = {"IS_TITLE": True, "IS_ALPHA": True}
    space = {"IS_SPACE": True, "OP": "?"}  # "Regards,\nTom Baker"
    first = {**word, "LOWER": {"NOT_IN": _NOT_A_NAME}}
    more = {**word, "OP": "{,2}"}
    grouped: dict[tuple[str, ...], list[str]] = {}
    for cue in _CUES:
        variants = [cue]
        if cue[0] in _HONORIFICS and not cue[0].endswith("."):
            variants += [(f"{cue[0]}.",), (cue[0], ".")]  # "Dr." (one token), as well as "Dr"
        if any("'" in t for t in cue):
            variants.append(tuple(t.replace("'", "’") for t in cue))  # a typographic apostrophe
        for tokens in variants:
            grouped.setdefault(tokens[1:], []).append(tokens[0])
    out: list[dict[str, Any]] = []
    for rest, firsts in grouped.items():
        lead = [{"LOWER": {"IN": sorted(set(firsts))}}, *({"LOWER": t} for t in rest)]
        out.append(
            {
                "label": "PERSON",
                "pattern": [*lead, space, first, more],
                "id": f"cue{len(lead)}",
            }
        )
    return out


def _spacy() -> Any:
    try:
        import spacy
    except ImportError:
        raise ReplayableError(
            "PII(ner=...) finds names in free text with spaCy, which is not installed: pip "
            'install "replayable[ner]" (or drop ner=: listed names and named fields need no '
            "spaCy)"
        ) from None
    return spacy


class NameRecognizer:
    """Finds people's names in text with a spaCy pipeline: ``model`` is :data:`RULES` (a
    blank pipeline and the cue patterns) or an installed spaCy pipeline's name or path (its
    ``PERSON`` entities and the cue patterns). Thread-safe."""

    def __init__(self, model: str = RULES) -> None:
        spacy = _spacy()
        self.model = model
        if model == RULES:
            nlp = spacy.blank("en")
            ruler = nlp.add_pipe("entity_ruler")
        else:
            try:
                nlp = spacy.load(model)
            except OSError as exc:
                raise ReplayableError(
                    f"PII(ner={model!r}): no spaCy pipeline of that name or path is installed "
                    f"here ({exc}); install it, or use ner=True for the cue patterns alone"
                ) from None
            where = {"before": "ner"} if "ner" in nlp.pipe_names else {}
            ruler = nlp.add_pipe("entity_ruler", name="replayable_cues", **where)
        ruler.add_patterns(_patterns())
        self._nlp = nlp
        self._rules_only = model == RULES
        self._lock = threading.Lock()

    def __repr__(self) -> str:
        return f"NameRecognizer({self.model!r})"

    def find(self, text: str) -> list[tuple[int, int]]:
        """The spans of ``text`` (start, end) that are people's names, left to right."""
        if self._rules_only and _CUE_RE.search(text) is None:
            return []
        if not any(c.isupper() for c in text):
            return []
        out: list[tuple[int, int]] = []
        for offset, window in _windows(text):
            with self._lock:
                doc = self._nlp(window)
            for ent in doc.ents:
                if ent.label_ not in ("PERSON", "PER"):
                    continue
                tokens = list(ent)
                skip = int(ent.ent_id_[3:]) if ent.ent_id_.startswith("cue") else 0
                tokens = tokens[skip:]
                while tokens and (
                    tokens[0].lower_.rstrip(".") in _CUE_WORDS or not tokens[0].is_alpha
                ):
                    tokens = tokens[1:]  # "Dear Mr Smith": the name is "Smith"
                while tokens and not tokens[-1].is_alpha:
                    tokens = tokens[:-1]
                if tokens:
                    start = tokens[0].idx
                    end = tokens[-1].idx + len(tokens[-1].text)
                    out.append((offset + start, offset + end))
        return out


def _windows(text: str) -> Iterator[tuple[int, str]]:
    """``text`` in pieces of at most :data:`_MAX_WINDOW` characters, cut at a line break or a
    space where there is one, each with its offset."""
    start = 0
    while len(text) - start > _MAX_WINDOW:
        end = start + _MAX_WINDOW
        cut = max(text.rfind("\n", start, end), text.rfind(" ", start, end))
        if cut <= start:
            cut = end
        yield start, text[start:cut]
        start = cut
    yield start, text[start:]
