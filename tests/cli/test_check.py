"""``replayable check`` and ``replayable checks`` from the shell: exit codes, output, JUnit."""

from __future__ import annotations

import sqlite3
import xml.etree.ElementTree as ET
from pathlib import Path

import orjson
import pytest
from click.testing import CliRunner
from tests.fixtures.check_corpus import Corpus, record_corpus

import replayable as rp
from replayable.cli import main
from replayable.store import open_store


@pytest.fixture
def corpus(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Corpus:
    """20 recorded runs of the sampling support agent in the test's store."""
    code = tmp_path / "code"
    code.mkdir()
    monkeypatch.syspath_prepend(str(code))
    return record_corpus(open_store(tmp_path / "traces.db"), code, n=20)


def _check(corpus: Corpus, *args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(
        main, ["check", "--import", corpus.name, "--store", str(corpus.store.url), *args]
    )
    return result.exit_code, result.stdout, result.stderr


SELECTION = {"since", "name", "tags", "status", "limit", "sample", "seed"}


class TestCheck:
    def test_unchanged_code_passes_with_exit_0(self, corpus: Corpus) -> None:
        """Every run unchanged: the counts, 'check passed', exit code 0."""
        code, out, _ = _check(corpus)
        assert code == 0, out
        assert "checked 20 run(s)" in out
        assert "check passed" in out

    def test_a_change_exits_1_and_prints_the_group_with_diff_commands(self, corpus: Corpus) -> None:
        """Diverged runs: exit 1, the group's signature and count, an example's diff command."""
        expected = corpus.refunds_over(100)
        corpus.change()
        code, out, _ = _check(corpus)
        assert code == 1
        assert f"{len(expected)}  changed {corpus.name}:issue_refund [amount]" in out
        assert "replayable diff " in out
        assert "check FAILED" in out

    def test_no_run_replayable_is_nothing_checked_and_exits_1(
        self, corpus: Corpus, tmp_path: Path
    ) -> None:
        """Every selected run not replayable (here each one edited): the reasons are listed,
        the verdict is 'nothing checked', not 'passed', and the exit code is 1, so a CI gate
        that replayed nothing does not pass."""
        rp.flush()  # the corpus's writes first: edited behind replayable's back
        with sqlite3.connect(tmp_path / "traces.db") as db:
            db.execute("UPDATE events SET output = '\"edited\"' WHERE seq = 1")
        code, out, _ = _check(corpus)
        assert code == 1, out
        assert out.count("damaged trace") == 20
        assert "nothing checked" in out
        assert "check passed" not in out

    def test_json_lists_every_run(self, corpus: Corpus) -> None:
        """--json prints the report: counts, groups and one entry per run."""
        corpus.change()
        code, out, _ = _check(corpus, "--json")
        report = orjson.loads(out)
        assert code == 1
        assert len(report["runs"]) == 20
        assert report["counts"]["diverged"] == len(corpus.refunds_over(100))
        assert report["groups"][0]["fields"] == ["amount"]

    def test_junit_file_parses(self, corpus: Corpus, tmp_path: Path) -> None:
        """--junit writes XML that ElementTree reads: one test case per run."""
        corpus.change()
        target = tmp_path / "reports" / "check.xml"
        code, _, _ = _check(corpus, "--junit", str(target), "--no-save")
        assert code == 1
        suite = ET.parse(target).getroot().find("testsuite")
        assert suite is not None
        assert len(suite.findall("testcase")) == 20
        assert int(suite.get("failures", "-1")) == len(corpus.refunds_over(100))
        failures = [c for c in suite.findall("testcase") if c.find("failure") is not None]
        assert {c.get("name") for c in failures} == corpus.refunds_over(100)
        failure = failures[0].find("failure")
        assert failure is not None
        assert failure.get("message") == f"diverged: changed {corpus.name}:issue_refund [amount]"
        assert "replayable diff " in (failure.text or "")

    def test_progress_is_plain_lines_when_not_a_terminal(self, corpus: Corpus) -> None:
        """In a CI log (no terminal) progress is a few plain lines on stderr."""
        _, _, err = _check(corpus)
        assert "checked 20/20 runs" in err
        assert "\x1b[" not in err

    @pytest.mark.parametrize(
        ("args", "message"),
        [
            (["--seed", "3"], "--seed goes with --sample"),
            (["--executor", "dask"], "needs --address"),
            (["--address", "tcp://127.0.0.1:1"], "--address is for --executor dask"),
            (["--limit", "0"], "--limit"),
            (["--tag", "novalue"], "key=value"),
            (["--live", "issue_refund"], "has side effects"),
        ],
    )
    def test_usage_errors_exit_2(self, corpus: Corpus, args: list[str], message: str) -> None:
        """Bad options: one line naming the problem, exit 2."""
        code, _, err = _check(corpus, *args)
        assert code == 2
        assert message in err

    def test_selection_options_are_the_ones_drift_uses(self) -> None:
        """check picks runs with the same options as drift: names, help, types and defaults."""
        import click

        def selection(command: str) -> dict[str, tuple[object, ...]]:
            cmd = main.commands[command]
            return {
                p.name: (p.opts, p.help, repr(p.type), p.default, p.multiple)
                for p in cmd.params
                if isinstance(p, click.Option) and p.name in SELECTION
            }

        assert selection("check") == selection("drift")
        assert set(selection("check")) == SELECTION

    def test_an_unknown_module_exits_2(self, corpus: Corpus) -> None:
        """--import of a module that does not exist: exit 2, 'cannot import'."""
        result = CliRunner().invoke(
            main, ["check", "--import", "no_such_module_xyz", "--store", corpus.store.url]
        )
        assert result.exit_code == 2
        assert "cannot import" in result.stderr


class TestChecks:
    def test_checks_lists_kept_checks_and_shows_one(self, corpus: Corpus) -> None:
        """`checks` lists the kept check with its counts; `checks ID` shows its groups."""
        corpus.change()
        _, out, _ = _check(corpus, "--json")
        check_id = orjson.loads(out)["id"]
        listed = CliRunner().invoke(
            main, ["checks", "--store", corpus.store.url], env={"COLUMNS": "220"}
        )
        assert listed.exit_code == 0
        assert check_id in listed.stdout
        assert f"changed {corpus.name}:issue_refund [amount]" in listed.stdout
        shown = CliRunner().invoke(main, ["checks", check_id[:14], "--store", corpus.store.url])
        assert shown.exit_code == 0
        assert "diverged, by first divergence" in shown.stdout
        as_json = CliRunner().invoke(main, ["checks", "--store", corpus.store.url, "--json"])
        assert orjson.loads(as_json.stdout)[0]["id"] == check_id

    def test_checks_of_an_unknown_id_exits_2(self, corpus: Corpus) -> None:
        """An id no check has: one line, exit 2."""
        result = CliRunner().invoke(main, ["checks", "zzz", "--store", corpus.store.url])
        assert result.exit_code == 2
        assert "no check 'zzz'" in result.stderr
