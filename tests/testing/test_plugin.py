"""The pytest plugin: replay marker, replayable fixture, options and the summary line."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

import replayable as rp
from replayable.trace import write_trace

ARGS = (
    "-p",
    "no:cacheprovider",
    "-p",
    "no:langsmith_plugin",  # a slow third-party plugin
    "-o",
    "asyncio_default_fixture_loop_scope=function",
)

MARKED = """
import pytest
import replayable.testing as rt
from replayable.demo import agent


@pytest.mark.replay("traces/run.jsonl")
def test_replayed(replayable):
    before = agent.customers()
    out = agent.support_agent(agent.REQUEST)
    assert out["status"] == "deleted"
    rt.assert_called(replayable.replay_session, "delete_record", times=1)
    assert agent.customers() == before  # served: the database is not touched
"""


@pytest.fixture
def traced(pytester: pytest.Pytester, correct_run: rp.Run) -> pytest.Pytester:
    """A pytester directory holding the correct demo run as traces/run.jsonl."""
    write_trace(correct_run, correct_run.events(), pytester.path / "traces" / "run.jsonl")
    return pytester


@pytest.fixture
def traced_incident(pytester: pytest.Pytester, incident: rp.Run) -> pytest.Pytester:
    """A pytester directory holding the incident as traces/run.jsonl, with the fix applied."""
    write_trace(incident, incident.events(), pytester.path / "traces" / "run.jsonl")
    pytester.makeconftest("from replayable.demo import agent\nagent.GUARD = True\n")
    return pytester


class TestReplayMarker:
    def test_marker_serves_the_trace_around_the_test_body(self, traced: pytest.Pytester) -> None:
        """The marked test passes against the trace and the summary counts one clean replay."""
        traced.makepyfile(test_marked=MARKED)
        result = traced.runpytest(*ARGS)
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(["replayable: 1 replay(s) in 1 test(s), 0 divergence(s)"])

    def test_changed_path_fails_the_test_with_the_divergence(
        self, traced_incident: pytest.Pytester
    ) -> None:
        """With the fix, the strict marker fails the incident's test naming the call not reached."""
        traced = traced_incident
        traced.makepyfile(
            test_marked="""
            import pytest
            from replayable.demo import agent

            @pytest.mark.replay("traces/run.jsonl")
            def test_replayed():
                agent.support_agent(agent.REQUEST)
            """
        )
        result = traced.runpytest(*ARGS)
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(
            [
                "*Divergence*delete_record*was never reached*",
                "replayable: 1 replay(s) in 1 test(s), 1 divergence(s) in 1 of them",
                "*test_marked.py::test_replayed: recorded call to *delete_record*",
            ]
        )

    def test_trace_path_is_found_next_to_the_test_file(
        self, traced: pytest.Pytester, tmp_path: Path
    ) -> None:
        """A relative path resolves against the test file's directory first."""
        sub = traced.mkpydir("sub")
        (traced.path / "traces").rename(sub / "traces")
        (sub / "test_marked.py").write_text(textwrap.dedent(MARKED))
        result = traced.runpytest(*ARGS, "sub")
        result.assert_outcomes(passed=1)

    def test_missing_trace_is_a_usage_error(self, pytester: pytest.Pytester) -> None:
        """A trace file that is not there is reported by name."""
        pytester.makepyfile(
            """
            import pytest

            @pytest.mark.replay("traces/nope.jsonl")
            def test_x():
                pass
            """
        )
        result = pytester.runpytest(*ARGS)
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(["*replay trace 'traces/nope.jsonl' not found*"])

    def test_async_tests_see_the_replay(self, traced: pytest.Pytester) -> None:
        """Under pytest-asyncio the coroutine runs inside the replay."""
        traced.makeini("[pytest]\nasyncio_mode = auto\n")
        traced.makepyfile(
            test_async="""
            import asyncio
            import pytest
            from replayable.demo import agent

            @pytest.mark.replay("traces/run.jsonl")
            async def test_replayed(replayable):
                await asyncio.sleep(0)
                out = await asyncio.to_thread(agent.support_agent, agent.REQUEST)
                assert out["status"] == "deleted"
                assert replayable.replay_session.ok
            """
        )
        result = traced.runpytest(*ARGS)
        result.assert_outcomes(passed=1)

    def test_works_under_xdist(self, traced: pytest.Pytester) -> None:
        """Two workers replay; the controller's summary counts both replays."""
        traced.makepyfile(test_a=MARKED, test_b=MARKED)
        result = traced.runpytest_subprocess(*ARGS, "-n", "2")
        result.assert_outcomes(passed=2)
        result.stdout.fnmatch_lines(["replayable: 2 replay(s) in 2 test(s), 0 divergence(s)"])


class TestFixture:
    def test_fixture_as_cassette_records_then_replays(self, pytester: pytest.Pytester) -> None:
        """`with replayable:` records this test's cassette, then serves it in replay mode."""
        pytester.makepyfile(
            test_tape="""
            from replayable.demo import agent

            QUERY = "Dana Whitfield"

            def test_search(replayable):
                agent.reset_db()
                with replayable as tape:
                    found = agent.search_customers(QUERY)
                assert [c["id"] for c in found] == [12, 13, 15]
                assert tape.mode == replayable.mode
            """
        )
        first = pytester.runpytest(*ARGS)
        first.assert_outcomes(passed=1)
        tape = pytester.path / "cassettes" / "test_tape" / "test_search.jsonl"
        assert len(tape.read_bytes().splitlines()) == 1
        again = pytester.runpytest(*ARGS, "--replayable-mode", "replay")
        again.assert_outcomes(passed=1)
        test_file = pytester.path / "test_tape.py"
        test_file.write_text(test_file.read_text().replace('"Dana Whitfield"', '"Dana Whitmore"'))
        miss = pytester.runpytest(*ARGS, "--replayable-mode", "replay")
        miss.assert_outcomes(failed=1)
        miss.stdout.fnmatch_lines(
            ["*FixtureMiss*", "*~ query: 'Dana Whitfield' -> 'Dana Whitmore'*"]
        )

    def test_replayable_store_option_receives_fixture_recordings(
        self, pytester: pytest.Pytester, tmp_path: Path
    ) -> None:
        """--replayable-store is where `replayable.record()` writes, tagged with the test id."""
        pytester.makepyfile(
            test_rec="""
            from replayable.demo import agent

            def test_recorded(replayable):
                agent.reset_db()
                with replayable.record() as run:
                    agent.search_customers("Lena")
                assert run.tags["test"].endswith("test_rec.py::test_recorded")
            """
        )
        store_file = tmp_path / "plugin-store.db"
        result = pytester.runpytest_subprocess(*ARGS, "--replayable-store", str(store_file))
        result.assert_outcomes(passed=1)
        runs = rp.open_store(store_file).list_runs()
        assert [r.name for r in runs] == ["test_recorded"]

    def test_fixture_replay_counts_in_the_summary(self, traced_incident: pytest.Pytester) -> None:
        """A replay opened through the fixture is reported at the end like a marker's."""
        traced = traced_incident
        traced.makepyfile(
            test_fx="""
            from pathlib import Path
            from replayable.demo import agent

            def test_fixture_replay(replayable):
                trace = Path(__file__).parent / "traces" / "run.jsonl"
                with replayable.replay(trace, strict=False) as r:
                    out = agent.support_agent(agent.REQUEST)
                assert out["status"] == "refused"
                assert [d.reason for d in r.divergences] == ["skipped"]
            """
        )
        result = traced.runpytest(*ARGS)
        result.assert_outcomes(passed=1)
        result.stdout.fnmatch_lines(
            ["replayable: 1 replay(s) in 1 test(s), 1 divergence(s) in 1 of them"]
        )

    def test_plugin_registers_its_marker_and_options(self, pytester: pytest.Pytester) -> None:
        """--strict-markers accepts @pytest.mark.replay and --help lists the options."""
        result = pytester.runpytest(*ARGS, "--markers")
        result.stdout.fnmatch_lines(["@pytest.mark.replay(path, live=(), strict=True*"])
        helped = pytester.runpytest(*ARGS, "--help")
        helped.stdout.fnmatch_lines(["*--replayable-mode*", "*--replayable-store*"])


APP = """
import replayable as rp

CALLS = []


@rp.boundary(kind="llm", name="plugin_app:model")
def model(prompt):
    CALLS.append(prompt)
    return prompt.upper()


@rp.boundary(kind="agent", name="plugin_app:agent")
def agent(prompt):
    return model(prompt)
"""

FALLBACK = """
import pytest
import plugin_app


@pytest.mark.replay("traces/run.jsonl", strict=False, fallback="cassettes/fixed.jsonl")
def test_fixed(replayable):
    assert plugin_app.agent("new prompt") == "NEW PROMPT"
    assert len(replayable.replay_session.fallback_calls) == 1
"""


class TestMarkerFallback:
    def test_changed_call_is_recorded_beside_the_test_then_served(
        self, pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """fallback="path" is a cassette beside the test: the first run calls the model once
        and records it, a REPLAYABLE_MODE=replay run is served from it."""
        pytester.makepyfile(plugin_app=APP)
        pytester.syspathinsert()
        import plugin_app  # type: ignore[import-not-found]

        with rp.record(pytester.path / "rec.db") as run:
            plugin_app.agent("old prompt")
        write_trace(run, run.events(), pytester.path / "traces" / "run.jsonl")
        plugin_app.CALLS.clear()
        pytester.makepyfile(test_fallback=FALLBACK)
        pytester.runpytest(*ARGS).assert_outcomes(passed=1)
        assert plugin_app.CALLS == ["new prompt"]
        assert (pytester.path / "cassettes" / "fixed.jsonl").is_file()
        monkeypatch.setenv("REPLAYABLE_MODE", "replay")
        pytester.runpytest(*ARGS).assert_outcomes(passed=1)
        assert plugin_app.CALLS == ["new prompt"]
