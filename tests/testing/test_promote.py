"""`replayable promote`: a recorded incident becomes a trace file and a test that runs offline."""

from __future__ import annotations

import ast
import sqlite3
from pathlib import Path

import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import replayable as rp
from replayable.cli import main
from replayable.errors import ReplayableError, TraceCorrupt
from replayable.testing._promote import default_name, render_test
from replayable.testing._promote import promote as promote_files
from replayable.trace import Event, Run, read_trace

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


def _crafted(run_name: str, boundary_name: str, value: str) -> tuple[rp.Run, list[Event]]:
    """A trace as a hostile file would give it: the root is the demo agent, the rest is text."""
    run = Run(id="0190abcdef12", name=run_name, started_at=1.7e9, status="ok")
    root = Event(
        run_id=run.id,
        seq=0,
        address="support_agent/0",
        parent_seq=None,
        boundary="replayable.demo.agent:support_agent",
        kind="agent",
        key="k",
        input={"request": value},
    )
    step = Event(
        run_id=run.id,
        seq=1,
        address=f"support_agent/0 > {boundary_name}/0",
        parent_seq=0,
        boundary=boundary_name,
        kind="tool",
        key="k",
        input={"q": value, "n": 1},
    )
    return run, [root, step]


_PAYLOAD = '__import__("pathlib").Path("PWNED").touch()'
_HOSTILE = [
    f'"""\n{_PAYLOAD}\n"""',
    f"x\n{_PAYLOAD}\n#",
    "\\U0000zz \\N{nope} \\x",
    "'''\"\"\"\\",
    "ünï ² ℌ\u2028\x85\x0c",
]


class TestPromoteHostileTraces:
    """Recorded text reaches generated source only as repr() literals; identifiers checked."""

    @pytest.mark.parametrize("text", _HOSTILE)
    @pytest.mark.parametrize("forbid", [(), ("evil",)])
    def test_recorded_text_never_becomes_code(
        self, pytester: pytest.Pytester, text: str, forbid: tuple[str, ...]
    ) -> None:
        """Run name, boundary name and arguments with quotes, escapes and newlines: the test
        compiles, importing it runs nothing recorded, and the text is kept as data."""
        boundary_name = f"m:evil{text}" if not forbid else "m:evil"
        run, events = _crafted(text, boundary_name, text)
        source = render_test(run, events, trace_rel="t.jsonl", test_name=text, forbid=forbid)
        tree = ast.parse(source)
        compile(source, "test_x.py", "exec")
        constants = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
        assert text in constants  # the run name, as data
        calls = {ast.unparse(n.func) for n in ast.walk(tree) if isinstance(n, ast.Call)}
        assert not any("import" in c or "Path" in c for c in calls), calls
        namespace: dict[str, object] = {"__name__": "promoted"}
        exec(compile(source, "test_x.py", "exec"), namespace)  # collection = import
        assert not (pytester.path / "PWNED").exists()

    @given(st.text(max_size=40), st.text(max_size=40))
    @settings(max_examples=60, deadline=None)
    def test_any_recorded_text_compiles(self, name: str, value: str) -> None:
        """Property: whatever the run name and arguments, the promoted module compiles."""
        run, events = _crafted(name, "m:step", value)
        for forbid in ((), ("step",)):
            source = render_test(run, events, trace_rel="t.jsonl", test_name=name, forbid=forbid)
            compile(source, "test_x.py", "exec")

    @pytest.mark.parametrize(
        "root",
        [
            "os:system",  # importable, but not a boundary the project declared
            "replayable.demo.agent:support_agent\nimport os",
            "replayable.demo.agent:support_agent; import os",
            "replayable.demo.agent:class",
            "os; import sys:x",
        ],
    )
    def test_root_must_be_a_registered_boundary_with_a_plain_name(self, root: str) -> None:
        """A root call that is not a declared @boundary with identifier names is refused."""
        run, events = _crafted("r", "m:step", "v")
        events[0].boundary = root
        with pytest.raises(ReplayableError, match=r"boundary|module-level"):
            render_test(run, events, trace_rel="t.jsonl", test_name="t")

    @pytest.mark.parametrize("run_id", ["../../x", "/etc/passwd", "..\\..\\x"])
    def test_crafted_run_id_never_becomes_a_path(
        self, pytester: pytest.Pytester, run_id: str
    ) -> None:
        """A crafted run id gives a slugged default name, and no trace file is written for it."""
        run, events = _crafted("r", "m:step", "v")
        run.id = run_id
        for ev in events:
            ev.run_id = run_id
        assert default_name(run).replace("_", "").isalnum()
        with pytest.raises(TraceCorrupt, match="invalid run id"):
            promote_files(run, events)
        assert not (pytester.path / "tests").exists()


@pytest.fixture
def refund_incident(
    pytester: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> tuple[rp.Run, Path]:
    """The refund incident of bench/incidents, recorded against a production world of its own."""
    from bench.incidents import refund
    from bench.incidents._common import create_world

    worlds = pytester.path / "worlds"
    monkeypatch.setenv("BENCH_INCIDENT_WORLDS", str(worlds))
    monkeypatch.setenv("BENCH_INCIDENT_VARIANT", "buggy")
    monkeypatch.setenv("BENCH_INCIDENT_CALLS", str(pytester.path / "model-calls.txt"))
    world = create_world(refund.SCENARIO, worlds / "refund.db")
    with rp.record(name="refund") as run:
        refund.refund_agent(refund.REQUEST)
    (pytester.path / "model-calls.txt").unlink()
    return run, world


def _refunds(world: Path) -> list[tuple[str, int]]:
    with sqlite3.connect(world) as db:
        return list(db.execute("SELECT order_id, amount_cents FROM refunds ORDER BY rowid"))


class TestPromoteLive:
    """--live TOOL: the tool runs live in the test's world; fixes anywhere pass, bugs fail."""

    WORLD = "bench.incidents.refund:scratch_world"

    @pytest.mark.parametrize("fix", ["tool_fix", "agent_fix", "prompt_fix", "harmless_2"])
    def test_fails_on_the_bug_passes_on_each_fix_without_touching_the_world(
        self,
        pytester: pytest.Pytester,
        refund_incident: tuple[rp.Run, Path],
        monkeypatch: pytest.MonkeyPatch,
        fix: str,
    ) -> None:
        """Red on the incident's code (the refund really ran, in the scratch world), green with
        the fix in the tool, the agent or the prompt; production rows never change."""
        run, world = refund_incident
        before = _refunds(world)
        promote(run.id, "--name", "refund", "--live", "issue_refund", "--world", self.WORLD)
        source = (pytester.path / "tests" / "test_refund.py").read_text()
        assert "from bench.incidents.refund import scratch_world as world" in source
        assert "output={'status': 'refunded'}," in source
        red = pytester.runpytest(*ARGS, "tests")
        red.assert_outcomes(failed=1)
        red.stdout.fnmatch_lines(["*-> {'status': 'refunded'} was called 1 time(s)*"])
        monkeypatch.setenv("BENCH_INCIDENT_VARIANT", fix)
        pytester.runpytest(*ARGS, "tests").assert_outcomes(passed=1)
        assert _refunds(world) == before

    def test_second_run_in_replay_mode_calls_no_model(
        self,
        pytester: pytest.Pytester,
        refund_incident: tuple[rp.Run, Path],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """The agent fix changes the model's input: the first run records it into the cassette,
        the CI run (REPLAYABLE_MODE=replay) is served from it and still passes."""
        run, _ = refund_incident
        calls = pytester.path / "model-calls.txt"
        promote(run.id, "--name", "refund", "--live", "issue_refund", "--world", self.WORLD)
        monkeypatch.setenv("BENCH_INCIDENT_VARIANT", "agent_fix")
        pytester.runpytest(*ARGS, "tests").assert_outcomes(passed=1)
        assert calls.read_text().splitlines() == ["refund"]
        assert (pytester.path / "tests" / "cassettes" / "refund.jsonl").is_file()
        calls.unlink()
        monkeypatch.setenv("REPLAYABLE_MODE", "replay")
        pytester.runpytest(*ARGS, "tests").assert_outcomes(passed=1)
        assert not calls.exists()

    def test_without_world_the_test_holds_a_stub_that_fails(
        self, pytester: pytest.Pytester, refund_incident: tuple[rp.Run, Path]
    ) -> None:
        """No --world: a marked stub world() that fails before anything runs."""
        run, world = refund_incident
        before = _refunds(world)
        out = promote(run.id, "--name", "refund", "--live", "issue_refund")
        assert "fill in the world() stub" in out
        source = (pytester.path / "tests" / "test_refund.py").read_text()
        assert "# STUB written by `replayable promote --live`" in source
        result = pytester.runpytest(*ARGS, "tests")
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(["*world() is a stub: give issue_refund a world of its own*"])
        assert _refunds(world) == before

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--world", "bench.incidents.refund:scratch_world"], "--world is for the tools"),
            (["--live", "issue_refund", "--world", "os; import sys:x"], "use MODULE:FUNCTION"),
            (["--live", "issue_refund", "--world", "bench.incidents.refund:no"], "not a function"),
            (["--live", "issue_refund", "--forbid", "issue_refund"], "choose one"),
        ],
    )
    def test_bad_world_is_one_line_exit_2(
        self,
        pytester: pytest.Pytester,
        refund_incident: tuple[rp.Run, Path],
        args: list[str],
        message: str,
    ) -> None:
        """A world without --live, one that is not MODULE:FUNCTION, or a tool both forbidden and
        run live, is refused plainly."""
        result = CliRunner().invoke(main, ["promote", refund_incident[0].id, *args])
        assert result.exit_code == 2
        assert message in result.output
        assert len(result.output.strip().splitlines()) == 1

    @pytest.mark.parametrize("text", _HOSTILE)
    def test_recorded_text_never_becomes_code_with_live(self, text: str) -> None:
        """A hostile tool name, arguments and output compile as data in the --live test."""
        run, events = _crafted(text, f"m:evil{text}", text)
        events[1].output = {"status": text, "note": text}
        source = render_test(
            run, events, trace_rel="t.jsonl", test_name=text, live=[f"m:evil{text}"]
        )
        tree = ast.parse(source)
        namespace: dict[str, object] = {"__name__": "promoted"}
        exec(compile(source, "test_x.py", "exec"), namespace)
        constants = {n.value for n in ast.walk(tree) if isinstance(n, ast.Constant)}
        assert text in constants
