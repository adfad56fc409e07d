"""Precision and recall of the offline judges on the labelled pairs (``judge_pairs.json``).

A *positive* is a candidate that states the reference's outcome (a paraphrase, a harmless
reword, a refusal worded another way); a *negative* is the incident's answer or a paraphrase of
it, the opposite outcome, a non-answer or nonsense. Precision: of the candidates a judge passed,
how many were positives; recall: of the positives, how many it passed.
"""

from __future__ import annotations

import json
from typing import Any

from bench.incidents import PAIRS
from replayable.testing import EMBEDDING_THRESHOLD, EmbeddingJudge

__all__ = ["evaluate", "load_pairs"]


def load_pairs() -> list[dict[str, Any]]:
    """The labelled groups: reference, incident, and candidates labelled pass or fail."""
    groups: list[dict[str, Any]] = json.loads(PAIRS.read_text(encoding="utf-8"))["groups"]
    return groups


def _score(predicted: list[bool], labels: list[bool]) -> dict[str, float]:
    tp = sum(p and t for p, t in zip(predicted, labels, strict=True))
    fp = sum(p and not t for p, t in zip(predicted, labels, strict=True))
    fn = sum(t and not p for p, t in zip(predicted, labels, strict=True))
    return {
        "precision": tp / (tp + fp) if tp + fp else 0.0,
        "recall": tp / (tp + fn) if tp + fn else 0.0,
        "false_passes": fp,
        "false_failures": fn,
    }


def evaluate(judge: EmbeddingJudge | None = None, split: str | None = None) -> dict[str, Any]:
    """Each offline judge's precision and recall on the labelled pairs.

    ``plain``: similarity to the reference >= 0.6. ``margin``: closer to the reference than to
    the incident (and on topic), embeddings only. ``contrastive``: the full rule
    (``judge(..., incident=...)``: outcome words, the incident's facts, margin, floor).
    ``split``: ``calibration`` (the groups the rule was tuned on), ``held-out``, or both.
    """
    judge = judge or EmbeddingJudge()
    labels: list[bool] = []
    plain: list[bool] = []
    margin: list[bool] = []
    contrastive: list[bool] = []
    incident_passed: list[bool] = []
    groups = [g for g in load_pairs() if split is None or g["split"] == split]
    judge.embed(
        [t for g in groups for t in (g["reference"], g["incident"])]
        + [c for g in groups for _, c in g["pass"] + g["fail"]]
    )
    for group in groups:
        ref, inc = group["reference"], group["incident"]
        incident_passed.append(judge.judge(inc, ref, incident=inc).passed)
        for label, items in ((True, group["pass"]), (False, group["fail"])):
            for _kind, candidate in items:
                labels.append(label)
                to_ref = judge.similarity(candidate, ref)
                to_inc = judge.similarity(candidate, inc)
                plain.append(to_ref >= EMBEDDING_THRESHOLD)
                margin.append(to_ref >= judge.floor and to_ref - to_inc >= judge.margin)
                contrastive.append(judge.judge(candidate, ref, incident=inc).passed)
    return {
        "pairs": len(labels),
        "positives": sum(labels),
        "plain": _score(plain, labels),
        "margin": _score(margin, labels),
        "contrastive": _score(contrastive, labels),
        "incident_replies_passed": incident_passed,
    }
