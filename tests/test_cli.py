"""The core CLI: replay from the shell, clear errors, and the demo."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner
from tests.fixtures.cli_agent import cli_agent

import replayable as rp
from replayable.cli import main


@pytest.fixture
def recorded_run(tmp_path: Path) -> tuple[rp.Run, Path]:
    out = tmp_path / "answer.txt"
    with rp.record(name="cli") as run:
        cli_agent("what?", str(out))
    out.unlink()
    return run, out


class TestReplayCommand:
    def test_replay_ok_serves_side_effects(self, recorded_run: tuple[rp.Run, Path]) -> None:
        """`replay --import` calls the root agent; served side effects leave no file; exit 0."""
        run, out = recorded_run
        result = CliRunner().invoke(
            main, ["replay", run.id[:14], "--import", "tests.fixtures.cli_agent"]
        )
        assert result.exit_code == 0, result.output
        assert "no divergence" in result.output
        assert not out.exists()

    def test_replay_divergence_exits_1(
        self, recorded_run: tuple[rp.Run, Path], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A changed call prints the divergence with the field diff and exits 1."""
        run, _ = recorded_run
        monkeypatch.setenv("CLI_AGENT_SUFFIX", "!")
        result = CliRunner().invoke(
            main, ["replay", run.id, "--import", "tests.fixtures.cli_agent"]
        )
        assert result.exit_code == 1, result.output
        assert "write_file changed" in result.output
        assert "~ text:" in result.output

    def test_replay_trace_file(self, recorded_run: tuple[rp.Run, Path], tmp_path: Path) -> None:
        """A trace file replays from the shell like a run in the store."""
        from replayable.trace import write_trace

        run, out = recorded_run
        path = write_trace(run, run.events(), tmp_path / "incident.jsonl")
        result = CliRunner().invoke(
            main, ["replay", str(path), "--import", "tests.fixtures.cli_agent"]
        )
        assert result.exit_code == 0, result.output
        assert "no divergence" in result.output
        assert not out.exists()

    def test_live_side_effect_refused_exit_2(self, recorded_run: tuple[rp.Run, Path]) -> None:
        """--live on a side-effect boundary without --allow-side-effects: one line, exit 2."""
        run, out = recorded_run
        result = CliRunner().invoke(
            main,
            ["replay", run.id, "--import", "tests.fixtures.cli_agent", "--live", "write_file"],
        )
        assert result.exit_code == 2
        assert "allow" in result.output
        assert "Traceback" not in result.output
        assert not out.exists()

    def test_live_side_effect_allowed(self, recorded_run: tuple[rp.Run, Path]) -> None:
        """With --allow-side-effects the live boundary really runs."""
        run, out = recorded_run
        result = CliRunner().invoke(
            main,
            [
                "replay",
                run.id,
                "--import",
                "tests.fixtures.cli_agent",
                "--live",
                "write_file",
                "--allow-side-effects",
            ],
        )
        assert result.exit_code == 0, result.output
        assert out.exists()


class TestBadInput:
    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["show", "nope"], "no run 'nope'"),
            (["replay", "nope", "--import", "tests.fixtures.cli_agent"], "no run 'nope'"),
            (["replay", "x", "--import", "no_such_module_xyz"], "cannot import"),
        ],
    )
    def test_one_line_exit_2(self, args: list[str], message: str) -> None:
        """Unknown runs and modules give one clear error line and exit code 2."""
        rp.open_store()  # an existing, empty store
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2
        assert message in result.output
        assert "Traceback" not in result.output

    def test_missing_store_is_not_created(self, tmp_path: Path) -> None:
        """Reading commands refuse a store path that does not exist, and do not create it."""
        missing = tmp_path / "typo" / "traces.db"
        for args in (["runs"], ["show", "abc"], ["stats"]):
            result = CliRunner().invoke(main, [*args, "--store", str(missing)])
            assert result.exit_code == 2, result.output
            assert "no store at" in result.output
        assert not missing.parent.exists()

    def test_unregistered_boundary_name(self, recorded_run: tuple[rp.Run, Path]) -> None:
        """A --live name that matches no boundary is a clear error."""
        run, _ = recorded_run
        result = CliRunner().invoke(
            main, ["replay", run.id, "--import", "tests.fixtures.cli_agent", "--live", "nope"]
        )
        assert result.exit_code == 2
        assert "no boundary named 'nope'" in result.output

    def test_incompatible_trace_version(self, tmp_path: Path) -> None:
        """A trace file from an unknown format version is refused with exit 2."""
        path = tmp_path / "old.jsonl"
        path.write_text('{"format":"replayable-trace","version":99,"run":{"id":"x"}}\n')
        result = CliRunner().invoke(
            main, ["replay", str(path), "--import", "tests.fixtures.cli_agent"]
        )
        assert result.exit_code == 2
        assert "version 99" in result.output


class TestListing:
    def test_runs_and_show(self, recorded_run: tuple[rp.Run, Path]) -> None:
        """`runs` lists the run; `show` prints its tree with kinds and names."""
        run, _ = recorded_run
        listed = CliRunner().invoke(main, ["runs"], env={"NO_COLOR": "1", "COLUMNS": "200"})
        assert listed.exit_code == 0
        assert run.id in listed.output
        assert "cli" in listed.output
        shown = CliRunner().invoke(main, ["show", run.id], env={"NO_COLOR": "1", "COLUMNS": "200"})
        assert shown.exit_code == 0
        for text in ("[agent] cli_agent", "[llm] pick", "[tool] write_file", "[clock] random"):
            assert text in shown.output


class TestDemo:
    def test_demo_runs_end_to_end(self, tmp_path: Path) -> None:
        """`replayable demo` exits 0, shows the incident, the untouched DB and the fixed replay."""
        proc = subprocess.run(
            [sys.executable, "-m", "replayable.cli", "demo"],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
            env={
                "PATH": "/usr/bin:/bin",
                "NO_COLOR": "1",
                "COLUMNS": "120",
                "REPLAYABLE_STORE": str(tmp_path / "demo.db"),
                "REPLAYABLE_DEMO_DB": str(tmp_path / "customers.db"),
                "PYTHONPATH": os.environ.get("PYTHONPATH", ""),  # the code under test
            },
        )
        assert proc.returncode == 0, proc.stderr + proc.stdout
        out = proc.stdout
        assert "WRONG RECORD" in out
        assert "[tool] delete_record" in out
        assert "untouched" in out
        assert "refused" in out
        assert "delete_record" in out.split("Apply the fix")[1]
        assert "never reached" in out
        runs = rp.open_store(tmp_path / "demo.db").list_runs()
        assert any(r.parent_run for r in runs)
        assert "stored as pseudonyms" in out
        for f in tmp_path.glob("demo.db*"):  # recorded with pii=True: no customer in clear
            data = f.read_bytes()
            for part in (b"Whitfield", b"Whitmore", b"acmemail", b"brightpost"):
                assert part not in data, f"{f.name} holds {part!r}"


class TestTraceFiles:
    def test_show_and_diff_accept_trace_files(
        self, recorded_run: tuple[rp.Run, Path], tmp_path: Path
    ) -> None:
        """A trace file can be shown and diffed like a run in the store."""
        from replayable.trace import write_trace

        run, _ = recorded_run
        path = write_trace(run, run.events(), tmp_path / "incident.jsonl")
        env = {"NO_COLOR": "1", "COLUMNS": "200"}
        shown = CliRunner().invoke(main, ["show", str(path)], env=env)
        assert shown.exit_code == 0, shown.output
        assert "[tool] write_file" in shown.output
        same = CliRunner().invoke(main, ["diff", str(path), run.id], env=env)
        assert same.exit_code == 0, same.output
