"""Structural assertions over the calls of a replay, a run, a trace file or a cassette."""

from __future__ import annotations

from pathlib import Path

import pytest
from dirty_equals import IsInt, IsStr

import replayable as rp
import replayable.testing as rt
from replayable.demo import agent
from replayable.trace import write_trace


class TestAssertCalls:
    def test_partial_patterns_any_predicates_and_dirty_equals(self, incident: rp.Run) -> None:
        """Names are bare or full; dict patterns check only their keys."""
        rt.assert_calls(
            incident,
            [
                ("search_customers", {"query": IsStr(regex=r"Dana \w+")}),
                ("replayable.demo.agent:choose_record", {"candidates": rt.ANY}),
                ("delete_record", {"customer_id": lambda i: i != 13}),
            ],
        )

    def test_mismatch_lists_expected_and_actual(self, incident: rp.Run) -> None:
        """A failing call says which position differs and lists both sequences."""
        with pytest.raises(AssertionError) as info:
            rt.assert_calls(
                incident,
                ["search_customers", "choose_record", ("delete_record", {"customer_id": 13})],
            )
        text = str(info.value)
        assert text.startswith("call 2 does not match")
        assert "2. delete_record {'customer_id': 13}" in text
        assert "actual calls:" in text
        assert "2. delete_record({'customer_id': 1" in text

    def test_exact_counts_calls_and_subsequence_does_not(self, incident: rp.Run) -> None:
        """exact=False allows gaps but keeps the order."""
        with pytest.raises(AssertionError, match="expected 1 calls, got 3"):
            rt.assert_calls(incident, ["search_customers"])
        rt.assert_calls(incident, ["search_customers", "delete_record"], exact=False)
        with pytest.raises(AssertionError, match="no call matching search_customers in order"):
            rt.assert_calls(incident, ["delete_record", "search_customers"], exact=False)

    def test_works_on_trace_files_and_active_replays(
        self, incident: rp.Run, tmp_path: Path
    ) -> None:
        """A trace path and a replay still in progress both give their calls."""
        path = write_trace(incident, incident.events(), tmp_path / "t.jsonl")
        rt.assert_calls(path, ["search_customers", "choose_record", "delete_record"])
        with rp.replay(path) as r:
            agent.support_agent(agent.REQUEST)
            rt.assert_called(r, "delete_record", {"customer_id": IsInt(gt=0)}, times=1)
            rt.assert_no_divergence(r)

    def test_works_on_cassettes(self, tmp_path: Path) -> None:
        """A cassette lists what it served and recorded."""
        agent.reset_db()
        with rp.cassette(tmp_path / "c.jsonl") as tape:
            agent.search_customers("Lena")
        rt.assert_calls(tape, [("search_customers", {"query": "Lena"})])


class TestNotCalledAndDivergence:
    def test_not_called_names_each_offending_call(self, incident: rp.Run) -> None:
        """The message lists the call with its arguments and address."""
        with pytest.raises(AssertionError, match=r"delete_record was called 1 time\(s\)"):
            rt.assert_not_called(incident, "delete_record")
        rt.assert_not_called(incident, "delete_record", {"customer_id": 13})

    def test_no_divergence_reports_calls_not_reached_while_active(self, incident: rp.Run) -> None:
        """Inside an active replay, recorded calls not reached count as skipped."""
        agent.GUARD = True
        with rp.replay(incident, strict=False) as r:
            assert agent.support_agent(agent.REQUEST)["status"] == "refused"
            with pytest.raises(AssertionError, match=r"delete_record.*was never reached"):
                rt.assert_no_divergence(r)
        assert [d.reason for d in rt.divergences(r)] == ["skipped"]


class TestAssertOutput:
    def test_partial_output_patterns_and_predicates(self, incident: rp.Run) -> None:
        """Every call's output must match; dict patterns check only their keys."""
        calls = rt.assert_output(incident, "delete_record", {"deleted": 1})
        assert [c.name for c in calls] == ["delete_record"]
        rt.assert_output(incident, "search_customers", lambda out: len(out) >= 2)
        rt.assert_output(incident, "delete_record", {"customer_id": IsInt(gt=0)}, call=1)

    def test_mismatch_shows_what_was_returned(self, incident: rp.Run) -> None:
        """A failing output names the call and shows its output."""
        with pytest.raises(AssertionError) as info:
            rt.assert_output(incident, "delete_record", {"status": "blocked"})
        text = str(info.value)
        assert "1 of 1 call(s) to delete_record did not return {'status': 'blocked'}" in text
        assert "'deleted': 1" in text

    def test_never_called_and_missing_call_number_fail(self, incident: rp.Run) -> None:
        """No call at all, or a call number past the last, is a failure, not a pass."""
        with pytest.raises(AssertionError, match="issue_refund was never called"):
            rt.assert_output(incident, "issue_refund", rt.ANY)
        with pytest.raises(AssertionError, match="there is no call 2"):
            rt.assert_output(incident, "delete_record", rt.ANY, call=2)

    def test_a_call_that_raised_does_not_match(self, tmp_path: Path) -> None:
        """A recorded exception is not an output: it never matches, and the message says why."""

        @rp.boundary(name="tests.testing:failing_refund")
        def failing_refund(amount: int) -> dict[str, int]:
            raise ValueError("card declined")

        with rp.record(tmp_path / "t.db") as run, pytest.raises(ValueError):
            failing_refund(5)
        with pytest.raises(AssertionError, match=r"raised .*ValueError: card declined"):
            rt.assert_output(run, "failing_refund", rt.ANY)

    def test_not_called_with_output_pins_the_incident_outcome(self, incident: rp.Run) -> None:
        """output= narrows assert_not_called to calls that also returned the pattern."""
        rt.assert_not_called(incident, "delete_record", output={"deleted": 0})
        with pytest.raises(AssertionError, match=r"-> \{'deleted': 1\} was called 1 time"):
            rt.assert_not_called(incident, "delete_record", output={"deleted": 1})
