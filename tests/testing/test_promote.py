"""`replayable promote`: a recorded incident becomes a trace file and a test that runs offline."""

from __future__ import annotations

import ast

import pytest
from click.testing import CliRunner

import replayable as rp
from replayable.cli import main
from replayable.trace import read_trace

ARGS = (
    "-p",
    "no:cacheprovider",
    "-p",
    "no:langsmith_plugin",  # a slow third-party plugin
    "-o",
    "asyncio_default_fixture_loop_scope=function",
)
FIX = "from replayable.demo import agent\nagent.GUARD = True\n"


def promote(*args: str) -> str:
    result = CliRunner().invoke(main, ["promote", *args])
    assert result.exit_code == 0, result.output
    return result.output


class TestPromoteFiles:
    def test_writes_the_trace_and_a_valid_test_module(
        self, pytester: pytest.Pytester, incident: rp.Run
    ) -> None:
        """Default paths: tests/traces/NAME.jsonl and tests/test_NAME.py; the test parses."""
        out = promote(incident.id, "--name", "incident 42")
        trace = pytester.path / "tests" / "traces" / "incident_42.jsonl"
        test = pytester.path / "tests" / "test_incident_42.py"
        assert f"wrote {trace.relative_to(pytester.path)} (5 recorded calls)" in out
        run, events = read_trace(trace)
        assert run.id == incident.id
        assert len(events) == 5
        source = test.read_text()
        ast.parse(source)
        assert "from replayable.demo.agent import support_agent" in source
        assert "TRACE = 'traces/incident_42.jsonl'" in source
        assert "('delete_record', {'customer_id':" in source

    def test_existing_test_is_kept_without_force(
        self, pytester: pytest.Pytester, incident: rp.Run
    ) -> None:
        """A second promote to the same test file refuses (exit 2) unless --force."""
        promote(incident.id, "--name", "x")
        again = CliRunner().invoke(main, ["promote", incident.id, "--name", "x"])
        assert again.exit_code == 2
        assert "exists; pass --force" in again.output
        promote(incident.id, "--name", "x", "--force")

    def test_unknown_run_is_one_line_exit_2(self, pytester: pytest.Pytester) -> None:
        """A run id that is not in the store: one line, exit 2."""
        result = CliRunner().invoke(main, ["promote", "ffffffffffff"])
        assert result.exit_code == 2
        assert result.output.startswith("error:")


class TestPromotedIncident:
    def test_regression_test_passes_unchanged_and_fails_with_divergence_after_change(
        self, pytester: pytest.Pytester, incident: rp.Run
    ) -> None:
        """Default flavour: green on the recorded code, red with the divergence on a change."""
        promote(incident.id, "--name", "incident")
        before = pytester.runpytest(*ARGS, "tests")
        before.assert_outcomes(passed=1)
        pytester.makeconftest(FIX)
        after = pytester.runpytest(*ARGS, "tests")
        after.assert_outcomes(failed=1)
        after.stdout.fnmatch_lines(["*1 divergence(s)*", "*delete_record*was never reached*"])

    def test_forbid_test_fails_before_the_fix_and_passes_after(
        self, pytester: pytest.Pytester, incident: rp.Run
    ) -> None:
        """--forbid delete_record: red on the incident's code, green once the guard is on."""
        promote(incident.id, "--name", "incident", "--forbid", "delete_record")
        source = (pytester.path / "tests" / "test_incident.py").read_text()
        assert "def test_incident_never_calls_delete_record(replayable):" in source
        before = pytester.runpytest(*ARGS, "tests")
        before.assert_outcomes(failed=1)
        before.stdout.fnmatch_lines(["*delete_record was called 1 time(s)*"])
        pytester.makeconftest(FIX)
        after = pytester.runpytest(*ARGS, "tests")
        after.assert_outcomes(passed=1)
