"""The incident benchmark's figures are right: Chronicle's protocol on our six scenarios."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from bench.incidents._common import FIX_VARIANTS, HARMLESS

from bench import bench_incidents


@pytest.fixture(scope="module")
def result(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """One full run of the protocol (six scenarios, nine code variants, three kinds of test)."""
    from bench.incidents._protocol import evaluate

    return evaluate(Path(tmp_path_factory.mktemp("incidents")))


class TestIncidentProtocol:
    def test_hand_written_and_promote_live_match_chronicle_on_every_fix(
        self, result: dict[str, Any]
    ) -> None:
        """Both fail on each incident and pass each fix (tool, agent, prompt) and each harmless
        change: 6/6 detection, 6/6 specificity per fix location, 30/30 harmless."""
        for kind in ("hand-written", "promote --live"):
            figures = result["summary"][kind]
            assert figures == {"detection": 6, **dict.fromkeys(FIX_VARIANTS, 6), "harmless": 30}

    def test_promote_forbid_sees_fixes_that_stop_the_call_only(
        self, result: dict[str, Any]
    ) -> None:
        """--forbid fails every incident and passes the agent fix; a fix inside the tool (the
        call still happens) or a prompt fix (a changed side effect) needs --live."""
        per = {n: s["verdicts"]["promote --forbid"] for n, s in result["scenarios"].items()}
        assert all(not v["buggy"] and v["agent_fix"] for v in per.values())
        assert not any(v["tool_fix"] or v["prompt_fix"] for v in per.values())
        assert not any(v[h] for v in per.values() for h in HARMLESS)

    def test_no_test_touched_a_production_world(self, result: dict[str, Any]) -> None:
        """Real SQLite row counts of every production world are unchanged after all the runs."""
        assert all(s["world_untouched"] for s in result["scenarios"].values())

    def test_ci_run_calls_no_model_and_agrees(self, result: dict[str, Any]) -> None:
        """The first run records the changed model calls; the REPLAYABLE_MODE=replay run makes
        none and reaches the same verdicts."""
        assert result["model_calls_first_run"] > 0
        assert result["model_calls_ci_run"] == 0
        assert result["ci_same_verdicts"]

    def test_contrastive_judge_alone_rejects_every_incident_reply(
        self, result: dict[str, Any]
    ) -> None:
        """The recorded incident reply fails the contrastive judge; the replies after a fix in
        the tool or agent (and the harmless changes) pass it."""
        for s in result["scenarios"].values():
            assert s["judge"]["contrastive_rejects_incident"]
            assert all(s["judge"]["contrastive_passes_fixes"].values()), s["judge"]

    def test_rows_show_chronicles_published_figures_beside_ours(
        self, result: dict[str, Any]
    ) -> None:
        """The hand-written rows carry Chronicle's 6, 6 and 30 as the peer, ratio 1.00."""
        scores = {"pairs": 1, "precision": 1.0, "recall": 1.0}
        split = {"calibration": scores, "held-out": scores}
        judges = dict.fromkeys(("plain", "margin", "contrastive"), split)
        rows = bench_incidents.rows_from({**result, "judges": judges})
        peers = [r for r in rows if r["peer_name"]]
        assert [(r["ours"], r["peer"], r["ratio"]) for r in peers] == [
            (6.0, 6.0, 1.0),
            (6.0, 6.0, 1.0),
            (30.0, 30.0, 1.0),
        ]
