"""Chronicle's incident protocol on six incident-shaped agents of our own (``bench/incidents``).

Chronicle publishes detection 6/6, specificity 6/6 (its fix is always in the tool) and 30/30
harmless tool-output changes for its cut-point tests (``examples/benchmark/harness.py``). We
run the same protocol on our scenarios for the hand-written cut-point test and for the two tests
``replayable promote`` writes, with the fix in the tool, in the agent and in the prompt; and we
check the production worlds were not touched, that the generated tests' second run (as CI runs
them, ``REPLAYABLE_MODE=replay``) calls no model, and what the offline judge says of the replies.
Counts, not timings: the ratio is Chronicle's figure over ours (1.00× = the same).
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from bench import Row, row

CHRONICLE = "Chronicle 0.5.0 (published)"
_PUBLISHED = {"detection": 6, "tool_fix": 6, "harmless": 30}
_LABELS = {
    "detection": "detection: fails on the buggy code",
    "tool_fix": "specificity: passes with the fix in the tool",
    "agent_fix": "specificity: passes with the fix in the agent",
    "prompt_fix": "specificity: passes with the fix in the prompt",
    "harmless": "harmless tool-output changes pass",
}


def rows_from(result: dict[str, Any]) -> list[Row]:
    """The benchmark rows for one :func:`bench.incidents._protocol.evaluate` result."""
    out: list[Row] = []
    n = len(result["scenarios"])
    for kind, figures in result["summary"].items():
        for key, label in _LABELS.items():
            total = 5 * n if key == "harmless" else n
            peer = _PUBLISHED.get(key) if kind == "hand-written" and n == 6 else None
            note = ""
            if kind == "promote --forbid" and key in ("tool_fix", "prompt_fix", "harmless"):
                note = "by design: the call still happens; use --live"
            out.append(
                row(
                    f"incidents, {kind}: {label}",
                    float(figures[key]),
                    unit=f"of {total}",
                    peer=float(peer) if peer is not None else None,
                    peer_name=CHRONICLE if peer is not None else None,
                    note=note,
                    higher_is_better=True,
                )
            )
    scenarios = result["scenarios"].values()
    untouched = sum(bool(s["world_untouched"]) for s in scenarios)
    out.append(
        row(
            "incidents: production worlds untouched by all the tests (row counts)",
            float(untouched),
            unit=f"of {n}",
        )
    )
    out.append(
        row(
            "incidents: model calls in the generated tests' CI run (REPLAYABLE_MODE=replay)",
            float(result["model_calls_ci_run"]),
            unit="calls",
            note=f"first run recorded {result['model_calls_first_run']} into the cassettes; "
            f"same verdicts: {'yes' if result['ci_same_verdicts'] else 'NO'}",
        )
    )
    plain = sum(bool(s["judge"]["plain_rejects_incident"]) for s in scenarios)
    contrastive = sum(bool(s["judge"]["contrastive_rejects_incident"]) for s in scenarios)
    fixes = [ok for s in scenarios for ok in s["judge"]["contrastive_passes_fixes"].values()]
    out.append(
        row(
            "incidents: judge alone rejects the incident reply (plain, 0.6)",
            float(plain),
            unit=f"of {n}",
        )
    )
    out.append(
        row(
            "incidents: judge alone rejects the incident reply (contrastive)",
            float(contrastive),
            unit=f"of {n}",
            note=f"and passes {sum(fixes)} of {len(fixes)} replies after a fix",
        )
    )
    for name, scores in result["judges"].items():
        for split in ("calibration", "held-out"):
            s = scores[split]
            out.append(
                row(
                    f"judge on labelled pairs ({split}, {s['pairs']}): {name} precision / recall",
                    round(s["precision"], 2),
                    unit="precision",
                    note=f"recall {s['recall']:.2f}",
                )
            )
    return out


def run(quick: bool = False) -> list[Row]:
    """Run the protocol; quick mode runs two scenarios (refund, delete) instead of six."""
    from bench.incidents._judging import evaluate as judge_pairs
    from bench.incidents._protocol import evaluate
    from replayable.testing import EmbeddingJudge

    with tempfile.TemporaryDirectory(prefix="replayable-incidents-") as tmp:
        result = evaluate(Path(tmp), names=("refund", "delete") if quick else None)
    judge = EmbeddingJudge()
    scores = {split: judge_pairs(judge, split=split) for split in ("calibration", "held-out")}
    result["judges"] = {
        kind: {split: {"pairs": scores[split]["pairs"], **scores[split][kind]} for split in scores}
        for kind in ("plain", "margin", "contrastive")
    }
    return rows_from(result)
