"""Fuzzing: perturbed recorded outputs, the agent re-run offline, an invariant checked."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

import replayable as rp
from replayable.cli import main
from replayable.demo import agent
from replayable.demo.invariants import never_deletes_another_customer
from replayable.testing._fuzz import Mutation, fuzz, run_perturbed, sites_of
from replayable.trace import read_trace, verify_run

INVARIANT = "replayable.demo.invariants:never_deletes_another_customer"
DEMO = ("--import", "replayable.demo.agent")


class TestMutations:
    @pytest.mark.parametrize(
        ("value", "op", "arg", "expected"),
        [
            (13, "nudge", -1, 12),
            (13, "scale", 0.5, 6),
            (2.5, "scale", 10, 25.0),
            (True, "flip", None, False),
            ("refund 40 USD", "swap_unit", ("USD", "EUR"), "refund 40 EUR"),
            ("refund 40 USD", "scale_number", 10, "refund 400 USD"),
            ("abcdef", "truncate", 3, "abc"),
            ([1, 2, 3], "drop", 1, [1, 3]),
            ([1, 2, 3], "reverse", None, [3, 2, 1]),
            ([1, 2, 3], "rotate", None, [2, 3, 1]),
        ],
    )
    def test_each_perturbation(self, value: object, op: str, arg: object, expected: object) -> None:
        """Every kind of perturbation does what its name says, on a copy."""
        original = {"v": value}
        m = Mutation(0, "m:f", ("v",), op, arg)
        assert m.apply(original) == {"v": expected}
        assert original == {"v": value}

    def test_a_path_that_is_gone_leaves_the_output_alone(self) -> None:
        """A mutation whose path an earlier one removed is a no-op, not a crash."""
        assert Mutation(0, "m:f", ("a", 5), "nudge", 1).apply({"a": [1]}) == {"a": [1]}

    def test_units_match_whole_tokens_only(self) -> None:
        """'km' is a unit in '12 km', not inside 'okmeter'; emails offer no unit swap."""
        ev = rp.Event("r", 0, "f/0", None, "m:f", "tool", "k", {}, ["12 km", "okmeter", "a@b.com"])
        ops = {site.path: [op for op, _ in site.ops] for site in sites_of([ev])}
        assert "swap_unit" in ops[(0,)]
        assert "swap_unit" not in ops[(1,)]
        assert "swap_unit" not in ops[(2,)]


class TestDemo:
    def test_unperturbed_rerun_reproduces_the_recorded_path(self, correct_run: rp.Run) -> None:
        """With no mutation, the re-run calls what the recording called."""
        outcome = run_perturbed(correct_run, list(correct_run.events()))
        assert outcome.error is None
        assert outcome.result["customer"]["id"] == 13
        assert [c.boundary.rsplit(":", 1)[1] for c in outcome.calls] == [
            "support_agent",
            "search_customers",
            "choose_record",
            "delete_record",
        ]

    def test_unguarded_agent_deletes_a_wrong_record_within_200_examples(
        self, correct_run: rp.Run, tmp_path: Path
    ) -> None:
        """The fuzzer finds the incident from a run that went right, and writes it as a trace."""
        out = tmp_path / "smallest.jsonl"
        report = fuzz(correct_run, never_deletes_another_customer, n=200, out=out)
        assert not report.passed
        assert report.first_failure_at is not None
        assert report.first_failure_at <= 200
        assert "owned by" in (report.message or "")
        assert report.smallest
        assert all(not m.boundary.endswith(":delete_record") for m in report.smallest)
        run, events = read_trace(out)
        assert run.metadata["fuzz_of"] == correct_run.id
        assert verify_run(run, events).ok
        with rp.replay(out) as r:
            result = agent.support_agent(agent.REQUEST)
        assert r.ok
        assert result["customer"]["id"] != 13

    def test_guarded_agent_survives_200_examples(self, correct_run: rp.Run) -> None:
        """With the fix, no perturbation makes the agent delete someone else's record."""
        agent.GUARD = True
        report = fuzz(correct_run, never_deletes_another_customer, n=200)
        assert report.passed
        assert report.examples == 200
        assert report.trace is None


class TestFuzzCommand:
    def test_unguarded_exits_1_with_the_smallest_perturbation(
        self, correct_run: rp.Run, tmp_path: Path
    ) -> None:
        """The CLI names the perturbation, the broken invariant and the trace it wrote."""
        out = tmp_path / "f.jsonl"
        result = CliRunner().invoke(
            main,
            ["fuzz", correct_run.id, *DEMO, "--invariant", INVARIANT, "-n", "200", "-o", str(out)],
        )
        assert result.exit_code == 1, result.output
        assert "invariant broken after" in result.output
        assert "smallest failing perturbation:" in result.output
        assert f"wrote {out}" in result.output
        assert out.exists()
        # Each step is named as live= and fork --at name it: the N-th call of its boundary.
        located = re.findall(r"^  (\w+)#(\d+)\.output", result.output, flags=re.M)
        assert located
        assert all(n == "1" for _, n in located), result.output

    def test_guarded_exits_0(
        self, correct_run: rp.Run, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A module that applies the fix, imported alongside: every example holds."""
        (tmp_path / "apply_fix.py").write_text(
            "from replayable.demo import agent\nagent.GUARD = True\n"
        )
        monkeypatch.syspath_prepend(tmp_path)
        monkeypatch.delitem(sys.modules, "apply_fix", raising=False)
        result = CliRunner().invoke(
            main,
            ["fuzz", correct_run.id, *DEMO, "--import", "apply_fix", "--invariant", INVARIANT],
        )
        assert result.exit_code == 0, result.output
        assert "200 examples, invariant held" in result.output

    def test_bad_invariant_is_exit_2(self, correct_run: rp.Run) -> None:
        """An invariant that is not MODULE:FUNC is refused before anything runs."""
        result = CliRunner().invoke(
            main,
            ["fuzz", correct_run.id, "--import", "replayable.demo.agent", "--invariant", "nope"],
        )
        assert result.exit_code == 2
        assert "MODULE:FUNC" in result.output

    def test_incident_itself_is_reported_not_blamed_on_a_perturbation(
        self, incident: rp.Run
    ) -> None:
        """Fuzzing a run that already breaks the invariant says so, with no perturbation."""
        result = CliRunner().invoke(
            main, ["fuzz", incident.id, *DEMO, "--invariant", INVARIANT, "-n", "20"]
        )
        assert result.exit_code == 1, result.output
        assert "already fails on run" in result.output
        assert "smallest failing perturbation" not in result.output
        report = fuzz(incident.id, never_deletes_another_customer, n=20)
        assert report.baseline_failure is not None
        assert not report.passed
        assert report.examples == 0

    def test_zero_examples_is_a_usage_error(self, correct_run: rp.Run) -> None:
        """-n 0 is refused by the argument check (exit 2), not reported as a broken invariant."""
        result = CliRunner().invoke(
            main, ["fuzz", correct_run.id, *DEMO, "--invariant", INVARIANT, "-n", "0"]
        )
        assert result.exit_code == 2
        assert "Traceback" not in result.output


FUZZ_KEY = "fuzz-pii-key-" + "f" * 32
CUSTOMER = {"email": "dana.whitfield@acme.io", "phone": "+1 415-867-5309"}


@rp.boundary(kind="tool", name="fuzz_test:crm")
def crm(cid: int) -> dict[str, object]:
    """A CRM lookup: run live in the fuzz test, so it answers real values."""
    return {"id": cid, **CUSTOMER}


@rp.boundary(kind="tool", name="fuzz_test:quote")
def quote(cid: int) -> dict[str, float]:
    return {"amount": 120.0}


@rp.boundary(kind="agent", name="fuzz_test:refund")
def refund(cid: int) -> dict[str, object]:
    """Refund what the quote says, to the customer's address; a negative amount is refused
    with the address in the message."""
    found = crm(cid)
    amount = quote(cid)["amount"]
    if amount < 0:
        raise ValueError(f"negative refund for {found['email']} ({found['phone']})")
    return {"to": found["email"], "amount": amount}


def positive_refunds(outcome: object) -> None:
    """Every refund the agent made is positive (raises inside the agent count)."""
    assert getattr(outcome, "error", None) is None, str(getattr(outcome, "error", ""))


class TestPersonalData:
    """A run recorded with ``pii=`` is fuzzed under its key: the calls the invariant sees and
    the trace written carry pseudonyms, and the trace replays."""

    def test_live_values_are_pseudonymized_in_the_trace_written(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A live CRM answer and the agent's error about it reach the failing trace as
        pseudonyms only; the trace keeps the run's settings and replays under the key."""
        with rp.record(name="refund", pii=rp.PII(key=FUZZ_KEY)) as run:
            refund(7)
        monkeypatch.setenv("REPLAYABLE_PII_KEY", FUZZ_KEY)
        out = tmp_path / "smallest.jsonl"
        report = fuzz(run.id, positive_refunds, n=100, boundaries=["quote"], live=["crm"], out=out)
        assert not report.passed
        assert report.outcome is not None
        seen = [c.output for c in report.outcome.calls if c.boundary == "fuzz_test:crm"]
        p = rp.PII(key=FUZZ_KEY).pseudonymizer()
        assert seen == [{"id": 7, **p.value(CUSTOMER)}]
        data = out.read_text(encoding="utf-8").replace("\\n", "\n")
        for value in (*CUSTOMER.values(), "dana.whitfield", "867-5309"):
            assert value not in data
        assert p.text(CUSTOMER["email"]) in data
        trace_run, events = read_trace(out)
        assert trace_run.metadata["pii"]["key_id"] == p.key_id
        assert verify_run(trace_run, events).ok
        with rp.replay(out) as r, pytest.raises(ValueError, match="negative refund"):
            refund(7)
        assert r.divergences == []

    def test_the_demo_invariant_compares_pseudonyms(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The demo recorded with pii=True: fuzzing still finds the wrong deletion unguarded
        and none guarded (the invariant compares the run's pseudonyms of its owners)."""
        monkeypatch.setenv("REPLAYABLE_PII_KEY", FUZZ_KEY)
        for _ in range(200):
            agent.reset_db()
            with rp.record(name="support-agent", pii=agent.pii()) as run:
                result = agent.support_agent(agent.REQUEST)
            if result["customer"]["id"] == 13:
                break
        report = fuzz(run, never_deletes_another_customer, n=200)
        assert report.baseline_failure is None
        assert not report.passed
        assert "owned by" in (report.message or "")
        assert agent.OWNER_EMAIL not in (report.message or "")
        agent.GUARD = True
        assert fuzz(run, never_deletes_another_customer, n=100).passed

    def test_without_the_key_fuzz_is_a_clear_error(self) -> None:
        """No key set: PIIKeyError naming the run, before any example runs."""
        with rp.record(name="refund", pii=rp.PII(key=FUZZ_KEY)) as run:
            refund(7)
        with pytest.raises(rp.PIIKeyError, match=run.id):
            fuzz(run.id, positive_refunds, n=5)
