"""Turning recorded runs into regression tests: structure, semantics, and fuzzing.

Two layers. *Structure* for control flow: which boundaries were called, in what order, with what
arguments (:func:`assert_calls`, :func:`assert_not_called`, :func:`assert_no_divergence`).
*Semantics* for text that is allowed to change: :func:`judge` compares a candidate answer with a
reference through a pluggable :class:`Judge` (an LLM over any OpenAI-compatible client, recorded
like any boundary; or an offline sentence-embedding model). And :func:`fuzz` perturbs recorded
outputs to test a fix on more than the one sample that broke.

For example (a sketch, not run as a doctest)::

    import replayable.testing as rt
    with rp.replay("tests/traces/incident.jsonl", strict=False) as r:
        support_agent(REQUEST)
    rt.assert_not_called(r, "delete_record")
    rt.assert_judged(answer, "Your account is closed.", criteria="same outcome")
"""

from __future__ import annotations

from replayable._exports import publish
from replayable.testing._assertions import (
    ANY,
    Call,
    assert_called,
    assert_calls,
    assert_no_divergence,
    assert_not_called,
    assert_output,
    calls,
    divergences,
    matches,
)
from replayable.testing._fuzz import FuzzReport, Mutation, Outcome, fuzz
from replayable.testing._judges import (
    CONTRASTIVE_FLOOR,
    CONTRASTIVE_MARGIN,
    EMBEDDING_THRESHOLD,
    EmbeddingJudge,
    Judge,
    JudgeFailed,
    LLMJudge,
    Verdict,
    assert_judged,
    judge,
    set_default_judge,
)

__all__ = [
    "ANY",
    "CONTRASTIVE_FLOOR",
    "CONTRASTIVE_MARGIN",
    "EMBEDDING_THRESHOLD",
    "Call",
    "EmbeddingJudge",
    "FuzzReport",
    "Judge",
    "JudgeFailed",
    "LLMJudge",
    "Mutation",
    "Outcome",
    "Verdict",
    "assert_called",
    "assert_calls",
    "assert_judged",
    "assert_no_divergence",
    "assert_not_called",
    "assert_output",
    "calls",
    "divergences",
    "fuzz",
    "judge",
    "matches",
    "set_default_judge",
]


publish(globals())
