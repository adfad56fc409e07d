"""Benchmarks smoke test: every benchmark runs with tiny sizes and reports well-formed rows."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import pytest

from bench import __main__ as runner
from bench import row

ROW_KEYS = {"benchmark", "ours", "peer", "peer_name", "unit", "ratio", "note"}


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict[str, Any], str]:
    """One ``python -m bench --quick`` run for the whole module: (results.json, stdout)."""
    import contextlib
    import io

    out = tmp_path_factory.mktemp("bench") / "results.json"
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert runner.main(["--quick", "--json", str(out)]) == 0
    return json.loads(out.read_text(encoding="utf-8")), buf.getvalue()


class TestRunner:
    def test_discovers_our_modules(self) -> None:
        """The runner finds the bench_* modules, expected topics first and in order."""
        topics = runner.discover()
        assert topics[:3] == ["overhead", "replay", "key"]

    def test_prints_machine_and_table(self, quick_run: tuple[dict[str, Any], str]) -> None:
        """The output names the machine and holds a Markdown table with every benchmark."""
        results, stdout = quick_run
        assert stdout.startswith("machine: ")
        assert results["machine"]["python"] in stdout
        assert "| benchmark | ours |" in stdout
        for r in results["rows"]:
            assert f"| {r['benchmark']} |" in stdout

    def test_missing_topics_are_listed_not_fatal(
        self, quick_run: tuple[dict[str, Any], str]
    ) -> None:
        """Expected benchmarks not written yet show as a row saying so."""
        results, _ = quick_run
        present = set(runner.discover())
        for topic in set(runner.EXPECTED) - present:
            assert any("not written yet" in r["note"] for r in results["rows"]), topic

    def test_a_failing_module_becomes_a_row(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A benchmark that raises yields one row naming the error; the run goes on."""
        import bench.bench_key as key_module

        def boom(quick: bool = False) -> list[dict[str, Any]]:
            raise RuntimeError("peer exploded")

        monkeypatch.setattr(key_module, "run", boom)
        rows, _ = runner.run_topic("key", quick=True)
        assert len(rows) == 1
        assert "peer exploded" in rows[0]["note"]


class TestRows:
    def test_every_row_is_well_formed(self, quick_run: tuple[dict[str, Any], str]) -> None:
        """Each row has the shared keys; numbers are finite; ratios match ours and peer."""
        results, _ = quick_run
        ours_rows = [r for r in results["rows"] if r["topic"] in ("overhead", "replay", "key")]
        assert all("topic" in r for r in results["rows"])
        assert len(ours_rows) >= 8
        for r in ours_rows:
            assert set(r) >= ROW_KEYS
            assert math.isfinite(r["ours"]), r
            if r["peer"] is None:
                assert r["ratio"] is None, r
                assert r["note"], r
            elif r["ratio"] is not None:
                expected = (
                    r["ours"] / r["peer"] if r["unit"] != "steps/s" else r["peer"] / r["ours"]
                )
                assert r["ratio"] == pytest.approx(expected)

    def test_every_peer_is_measured(self, quick_run: tuple[dict[str, Any], str]) -> None:
        """OTel, Chronicle and VCR.py are all installed from the dev extra and all measured."""
        results, _ = quick_run
        names = {r["peer_name"] for r in results["rows"] if r["peer"] is not None}
        assert "opentelemetry-sdk span" in names
        assert "agent-chronicle 0.5.0" in names
        assert any(n.startswith("vcrpy") for n in names if n)
        assert "sha256(json.dumps(sort_keys))" in names

    def test_replay_throughput_is_positive(self, quick_run: tuple[dict[str, Any], str]) -> None:
        """Replay rows report steps per second for both sizes, and the larger one's peak memory."""
        results, _ = quick_run
        rows = [r for r in results["rows"] if r["topic"] == "replay"]
        replay = [r for r in rows if r["unit"] == "steps/s"]
        assert all(r["ours"] > 0 for r in replay)
        assert len({r["benchmark"].split(" vs ")[0] for r in replay}) == 2
        (peak,) = [r for r in rows if r["unit"] == "MB"]
        assert peak["ours"] > 0

    def test_a_replay_stores_far_less_than_its_source(
        self, quick_run: tuple[dict[str, Any], str]
    ) -> None:
        """The storage rows (both sizes) show the replay's rows as a small fraction of the
        source run's: its served steps are range rows, not copies."""
        results, _ = quick_run
        stored = [r for r in results["rows"] if r["topic"] == "replay" and r["unit"] == "KB"]
        assert len(stored) == 2
        assert all(0 < r["ours"] < r["peer"] / 20 for r in stored)

    def test_ratio_direction(self) -> None:
        """ratio is ours/peer for costs and peer/ours for throughputs: below 1 means ahead."""
        assert row("cost", 2.0, unit="µs", peer=8.0)["ratio"] == 0.25
        assert (
            row("speed", 400.0, unit="steps/s", peer=100.0, higher_is_better=True)["ratio"] == 0.25
        )
        assert row("alone", 1.0, unit="µs")["ratio"] is None


def test_results_path_is_gitignored() -> None:
    """bench/results.json never lands in a commit."""
    gitignore = Path(__file__).resolve().parents[2] / ".gitignore"
    assert "bench/results.json" in gitignore.read_text(encoding="utf-8").splitlines()
