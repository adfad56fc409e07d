"""Sampling: a head rate decided from the trace id, tail rules that keep a run whatever the
rate, a bounded hold for undecided runs, and kept/dropped counts kept per store."""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import httpx
import pytest
from click.testing import CliRunner
from hypothesis import given
from hypothesis import strategies as st
from opentelemetry.sdk.trace.sampling import Decision, TraceIdRatioBased
from tests.integrations import services
from tests.viewer.conftest import LiveServer

import replayable as rp
from replayable import _sampling
from replayable.cli import main
from replayable.store import Store
from replayable.store.base import RunQuery
from replayable.viewer import create_app


@rp.boundary(kind="tool")
def lookup(n: int) -> int:
    return n + 1


@rp.boundary(kind="tool", side_effects=True)
def refund(cents: int) -> bool:
    return True


@rp.boundary(kind="tool")
def fails(n: int) -> int:
    raise ValueError(f"no {n}")


def trace_ids(n: int, seed: int = 7) -> list[str]:
    """``n`` W3C trace ids from a seeded generator (a run a request starts takes its id)."""
    rng = random.Random(seed)
    return [f"{rng.getrandbits(128):032x}" for _ in range(n)]


def stored_ids(store: Store) -> set[str]:
    rp.flush()
    return {r.id for r in store.list_runs(RunQuery(limit=1_000_000))}


class TestHeadSampling:
    """The head keeps a run when its trace id falls in the rate."""

    def test_ten_thousand_runs_keep_the_rate_plus_every_run_a_rule_names(
        self, store_path: Path
    ) -> None:
        """At 0.05, 10,000 runs keep 500 ± 3σ by rate, and every run with an error, a side
        effect, a flag or a keeping predicate besides; the store counts kept and dropped."""
        store = rp.open_store(store_path)
        keep = rp.Keep(when=lambda run: run.tags.get("vip") == "yes")
        named: set[str] = set()
        by_rate: set[str] = set()
        runs: list[rp.Run] = []
        for i, trace_id in enumerate(trace_ids(10_000)):
            vip = {"vip": "yes"} if i % 101 == 0 else {}
            with rp.record(
                store, sample=0.05, keep=keep, tags=vip, metadata={"trace_id": trace_id}
            ) as run:
                if i % 97 == 0:
                    with pytest.raises(ValueError):
                        fails(i)
                elif i % 89 == 0:
                    refund(i)
                elif i % 83 == 0:
                    rp.flag("refund over limit")
            runs.append(run)
            if i % 97 == 0 or i % 89 == 0 or i % 83 == 0 or vip:
                named.add(run.id)
            if _sampling.head_keeps(trace_id, 0.05):
                by_rate.add(run.id)
        sigma = math.sqrt(10_000 * 0.05 * 0.95)
        assert abs(len(by_rate) - 500) <= 3 * sigma
        kept = stored_ids(store)
        assert kept == by_rate | named
        assert named - by_rate  # the rules kept runs the rate alone would have dropped
        reasons = {r.id: r.metadata["sampling"]["kept_by"] for r in runs if r.id in kept}
        assert {reasons[i] for i in named - by_rate} == {
            "error",
            "side_effect",
            "flag",
            "predicate",
        }
        counts = _sampling.summary(store)
        assert counts["kept"] == len(kept)
        assert counts["dropped"] == 10_000 - len(kept)
        assert counts["kept_by"]["rate"] == len(by_rate)
        assert _sampling.held_bytes() == 0

    @given(
        trace_id=st.integers(min_value=1, max_value=(1 << 128) - 1),
        rate=st.floats(min_value=0.0, max_value=1.0),
    )
    def test_the_decision_is_opentelemetrys(self, trace_id: int, rate: float) -> None:
        """A trace id is kept exactly when OpenTelemetry's TraceIdRatioBased sampler samples
        it, so a service traced by OpenTelemetry and one recorded here keep the same traces."""
        otel = TraceIdRatioBased(rate).should_sample(None, trace_id, "run").decision
        assert _sampling.head_keeps(f"{trace_id:032x}", rate) == (
            otel is Decision.RECORD_AND_SAMPLE
        )

    def test_a_run_without_a_trace_id_gets_one_its_requests_carry(self) -> None:
        """A sampled run that did not arrive with a trace id is given one at its start."""
        with rp.record(sample=0.5) as run:
            pass
        assert run.trace_id is not None
        assert run.metadata["sampling"]["kept_by"] in ("rate", None)
        assert (run.metadata["sampling"]["kept_by"] == "rate") == _sampling.head_keeps(
            run.trace_id, 0.5
        )

    def test_rate_one_records_every_run_unsampled(self, store_path: Path) -> None:
        """sample=1.0 is no sampling: the run is recorded as without it."""
        with rp.record(sample=1.0) as run:
            lookup(1)
        assert "sampling" not in run.metadata
        assert stored_ids(rp.open_store(store_path)) == {run.id}

    @pytest.mark.parametrize("bad", [-0.1, 1.5, float("nan")])
    def test_a_rate_out_of_range_is_refused(self, bad: float) -> None:
        """A rate outside [0, 1] is a clear error before the run starts."""
        with pytest.raises(ValueError, match="between 0 and 1"):
            rp.record(sample=bad)

    def test_a_rate_that_is_not_a_number_is_refused(self) -> None:
        """sample=True (or a string) is a type error naming what it takes."""
        with pytest.raises(TypeError, match="rate between 0 and 1"):
            rp.record(sample=True)  # type: ignore[arg-type]


class TestTailRules:
    """A run the head drops is kept when a tail rule names it."""

    def record_dropped(self, **kw: object) -> rp.Run:
        with rp.record(sample=0.0, **kw) as run:  # type: ignore[arg-type]
            lookup(1)
        return run

    def test_an_ordinary_run_is_dropped_and_counted(self, store_path: Path) -> None:
        """Nothing of a dropped run is written; the store counts it."""
        run = self.record_dropped()
        store = rp.open_store(store_path)
        assert stored_ids(store) == set()
        assert run.metadata["sampling"] == {"rate": 0.0, "kept_by": None}
        assert _sampling.summary(store) == {"kept": 0, "dropped": 1, "kept_by": {}}

    def test_a_run_that_failed_is_kept(self, store_path: Path) -> None:
        """An exception out of the block keeps the run, its steps whole."""
        runs: list[rp.Run] = []

        def failing_run() -> None:
            with rp.record(sample=0.0) as run:
                runs.append(run)
                lookup(1)
                raise KeyError("x")

        with pytest.raises(KeyError):
            failing_run()
        (run,) = runs
        rp.flush()
        stored = rp.open_store(store_path).get_run(run.id)
        assert stored.status == "error"
        assert stored.metadata["sampling"]["kept_by"] == "error"
        assert [e.output for e in stored.events()] == [2]

    def test_a_step_that_raised_keeps_the_run_from_then_on(self, store_path: Path) -> None:
        """A caught step error keeps the run: steps before and after it are all stored."""
        with rp.record(sample=0.0) as run:
            lookup(1)
            with pytest.raises(ValueError):
                fails(2)
            lookup(3)
        events = list(rp.open_store(store_path).get_run(run.id).events())
        assert [e.output for e in events] == [2, None, 4]
        assert events[1].error is not None

    def test_a_side_effect_keeps_the_run(self) -> None:
        """A call to a side_effects=True boundary keeps the run."""
        with rp.record(sample=0.0) as run:
            refund(100)
        assert run.metadata["sampling"]["kept_by"] == "side_effect"
        assert [e.boundary for e in run.events()] == [f"{__name__}:refund"]

    def test_a_flag_keeps_the_run_and_is_stored_on_it(self, store_path: Path) -> None:
        """rp.flag keeps the run; its reasons are in the stored, sealed metadata."""
        with rp.record(sample=0.0) as run:
            lookup(1)
            rp.flag("refund over limit")
        stored = rp.open_store(store_path).get_run(run.id)
        assert stored.metadata["flags"] == ["refund over limit"]
        assert stored.metadata["sampling"]["kept_by"] == "flag"
        from replayable.trace import verify_run

        assert verify_run(stored, list(stored.events())).ok

    def test_a_slow_run_is_kept(self) -> None:
        """A run longer than slower_than seconds is kept."""
        with rp.record(sample=0.0, keep=rp.Keep(slower_than=0.05)) as run:
            time.sleep(0.06)
        assert run.metadata["sampling"]["kept_by"] == "slow"

    def test_a_predicate_over_the_finished_run_keeps_it(self) -> None:
        """keep=callable is a predicate given the finished run."""
        seen: list[str] = []

        def vip(run: rp.Run) -> bool:
            seen.append(run.status)
            return run.tags.get("tier") == "gold"

        gold = self.record_dropped(keep=vip, tags={"tier": "gold"})
        plain = self.record_dropped(keep=vip)
        assert gold.metadata["sampling"]["kept_by"] == "predicate"
        assert plain.metadata["sampling"]["kept_by"] is None
        assert seen == ["ok", "ok"]

    def test_a_predicate_that_raises_keeps_the_run_with_a_warning(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A broken predicate never loses a run: it is kept, and the error is logged."""
        with caplog.at_level(logging.WARNING, logger="replayable"):
            run = self.record_dropped(keep=lambda run: 1 / 0)
        assert run.metadata["sampling"]["kept_by"] == "predicate_failed"
        assert "ZeroDivisionError" in caplog.text

    def test_rules_can_be_turned_off(self) -> None:
        """Keep.nothing(): the head alone decides, even for a failing run."""
        runs: list[rp.Run] = []

        def failing_run() -> None:
            with rp.record(sample=0.0, keep=rp.Keep.nothing()) as run:
                runs.append(run)
                refund(1)
                rp.flag("ignored")
                raise KeyError("x")

        with pytest.raises(KeyError):
            failing_run()
        (run,) = runs
        assert run.metadata["sampling"]["kept_by"] is None

    def test_flag_outside_a_run_does_nothing(self) -> None:
        """rp.flag with no run recording is a no-op, and a non-string reason a type error."""
        rp.flag("nothing to flag")
        with pytest.raises(TypeError, match="string"):
            rp.flag(42)  # type: ignore[arg-type]

    def test_a_flag_on_an_unsampled_run_is_kept_too(self) -> None:
        """Without sampling, a flag is still stored on the run."""
        with rp.record() as run:
            rp.flag("look at me")
        assert rp.open_store().get_run(run.id).metadata["flags"] == ["look at me"]


class TestHoldBound:
    """Undecided runs are held in memory up to a process-wide bound."""

    def test_a_run_passing_the_bound_is_kept_not_lost(
        self, store_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The step that would pass hold_bytes keeps its run whole (kept_by hold_bound, one
        warning), so a rule that would fire later still finds it stored; memory is released."""
        keep = rp.Keep(hold_bytes=1000)  # 200 steps hold ~2 KB
        with (
            caplog.at_level(logging.WARNING, logger="replayable"),
            rp.record(sample=0.0, keep=keep) as run,
        ):
            for i in range(200):
                lookup(i)
            held_while_open = _sampling.held_bytes()
            rp.flag("late rule")
        assert held_while_open == 0
        assert run.metadata["sampling"]["kept_by"] == "hold_bound"
        assert len(list(rp.open_store(store_path).get_run(run.id).events())) == 200
        assert caplog.text.count("Keep.hold_bytes") == 1
        assert _sampling.summary(rp.open_store(store_path))["kept_by"] == {"hold_bound": 1}

    def test_held_memory_is_released_when_a_run_is_dropped(self) -> None:
        """A dropped run gives its held bytes back."""
        with rp.record(sample=0.0) as run:
            lookup(1)
            assert _sampling.held_bytes() > 0
        assert run.metadata["sampling"]["kept_by"] is None
        assert _sampling.held_bytes() == 0


class TestDefaults:
    """Sampling set on the store or in the environment, as pii= is."""

    def test_the_store_default_applies_to_every_run_into_it(self, store_path: Path) -> None:
        """open_store(url, sample=...) samples runs recorded into it (a middleware's)."""
        store = rp.open_store(store_path, sample=0.0)
        with rp.record(store) as run:
            lookup(1)
        with rp.record(store, sample=1.0) as whole:
            lookup(1)
        assert run.metadata["sampling"]["kept_by"] is None
        assert stored_ids(store) == {whole.id}

    def test_the_environment_sets_a_default(
        self, store_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """$REPLAYABLE_SAMPLE samples every run; a value that is not a rate is a clear error."""
        monkeypatch.setenv("REPLAYABLE_SAMPLE", "0")
        with rp.record() as run:
            lookup(1)
        assert run.metadata["sampling"]["kept_by"] is None
        monkeypatch.setenv("REPLAYABLE_SAMPLE", "five percent")
        with pytest.raises(ValueError, match="REPLAYABLE_SAMPLE"):
            rp.record()


class TestCounts:
    """Kept and dropped counts are durable per store, and shown by stats and the viewer."""

    def record_some(self, store: Store) -> None:
        for _ in range(3):
            with rp.record(store, sample=0.0):
                lookup(1)
        with rp.record(store, sample=0.0):
            rp.flag("x")
        rp.flush()

    def test_stats_shows_kept_and_dropped(self, store_path: Path) -> None:
        """replayable stats prints the counts, and --json carries them."""
        self.record_some(rp.open_store(store_path))
        result = CliRunner().invoke(main, ["stats", "--store", str(store_path)])
        assert result.exit_code == 0, result.output
        assert "sampling: 1 runs kept (flag 1), 3 dropped" in result.output
        result = CliRunner().invoke(main, ["stats", "--store", str(store_path), "--json"])
        assert '"sampling":{"kept":1,"dropped":3,"kept_by":{"flag":1}}' in result.output

    def test_counts_survive_reopening_the_store(self, store_path: Path) -> None:
        """The counts are in the database, not in the process."""
        self.record_some(rp.open_store(store_path))
        from replayable.store.sqlite import SQLiteStore

        fresh = SQLiteStore(store_path)
        try:
            assert _sampling.summary(fresh)["dropped"] == 3
        finally:
            fresh.close()

    def test_the_viewer_shows_the_counts(self, store_path: Path) -> None:
        """The runs page says how many runs sampling kept and dropped."""
        store = rp.open_store(store_path)
        self.record_some(store)
        with LiveServer(create_app(store)) as server:
            page = httpx.get(server.url + "/").text
        assert "sampling: 1 runs kept (flag 1), 3 dropped" in page

    def test_postgres_keeps_the_counts(self, pg_url: str) -> None:
        """PostgreSQL stores the counters too."""
        store = rp.open_store(pg_url)
        self.record_some(store)
        assert _sampling.summary(store) == {"kept": 1, "dropped": 3, "kept_by": {"flag": 1}}


class TestAcrossServices:
    """Every service of a distributed run keeps or drops it alike."""

    def test_the_callee_decides_as_its_caller(self, tmp_path: Path) -> None:
        """The caller and billing (FastAPI under uvicorn, its own store) both sample at 0.5
        with no tail rule: billing keeps exactly the runs called from the caller's kept runs."""
        caller_store = rp.open_store(tmp_path / "agent.db")
        billing_store = rp.open_store(tmp_path / "billing.db", sample=0.5, keep=rp.Keep.nothing())
        app = services.fastapi_billing(str(tmp_path / "billing-data.db"), billing_store)
        runs = []
        with (
            services.Uvicorn(app) as billing,
            rp.instrument(httpx.Client(), service="billing") as client,
        ):
            for i in range(24):
                with rp.record(caller_store, sample=0.5, keep=rp.Keep.nothing()) as run:
                    client.post(billing.url + "/charge", json={"user": "bob", "cents": i})
                runs.append(run)
        rp.flush()
        kept = {r.trace_id for r in runs if r.metadata["sampling"]["kept_by"] == "rate"}
        assert 0 < len(kept) < 24
        callee = billing_store.list_runs(RunQuery(limit=100))
        assert {r.trace_id for r in callee} == kept
        assert {r.parent.run for r in callee if r.parent} == {
            r.id for r in runs if r.trace_id in kept
        }
        assert _sampling.summary(billing_store)["dropped"] == 24 - len(kept)
