"""The CLI's views: runs (filters, --json), show (tree, --step), diff, stats and serve's guard."""

from __future__ import annotations

import time
from typing import Any

import orjson
import pytest
from click.testing import CliRunner, Result

import replayable as rp
from replayable.cli import main
from replayable.store import Store, open_store
from replayable.trace import Run


@rp.boundary(kind="tool")
def lookup(user: str) -> dict[str, Any]:
    """A tool that fails for unknown users."""
    if user == "nobody":
        raise KeyError(user)
    return {"user": user, "plan": "pro"}


@rp.boundary(kind="llm")
def answer(question: str, temperature: float = 0.2) -> str:
    """A fake model that reports its usage."""
    rp.annotate(model="gpt-test", usage={"prompt_tokens": 30, "completion_tokens": 7})
    return f"answer to {question}"


@rp.boundary(kind="agent")
def agent(user: str, question: str) -> str:
    """Look the user up, then ask the model."""
    lookup(user)
    return answer(question)


def invoke(*args: str, color: bool = False) -> Result:
    env = {} if color else {"NO_COLOR": "1"}
    return CliRunner().invoke(main, list(args), env={**env, "COLUMNS": "100"})


@pytest.fixture
def store() -> Store:
    """The test's own store."""
    return open_store(None)


def _record(store: Store, name: str, user: str, question: str = "q", **tags: str) -> Run:
    try:
        with rp.record(store, name=name, tags=tags) as run:
            agent(user, question)
    except KeyError:
        pass
    return run


@pytest.fixture
def runs(store: Store) -> dict[str, Run]:
    """Three runs: two good ones with different tags and one failing lookup."""
    return {
        "ok": _record(store, "support", "ada", env="prod"),
        "other": _record(store, "billing", "bob", env="dev"),
        "failed": _record(store, "support", "nobody", env="prod"),
    }


def _ids(result: Result) -> set[str]:
    assert result.exit_code == 0, result.output
    return {r["id"] for r in orjson.loads(result.output)}


class TestRuns:
    def test_filters_combine(self, runs: dict[str, Run]) -> None:
        """--name, --tag, --status, --boundary and --errors each narrow the list."""
        assert _ids(invoke("runs", "--json", "--name", "support")) == {
            runs["ok"].id,
            runs["failed"].id,
        }
        assert _ids(invoke("runs", "--json", "--tag", "env=dev")) == {runs["other"].id}
        assert _ids(invoke("runs", "--json", "--status", "error")) == {runs["failed"].id}
        assert _ids(invoke("runs", "--json", "--errors")) == {runs["failed"].id}
        assert _ids(invoke("runs", "--json", "--boundary", "lookup")) == {
            r.id for r in runs.values()
        }
        assert _ids(invoke("runs", "--json", "--since", "1h")) == {r.id for r in runs.values()}

    def test_since_in_the_future_finds_nothing(self, runs: dict[str, Run]) -> None:
        """--since takes an ISO date too."""
        future = time.strftime("%Y-%m-%d", time.gmtime(time.time() + 3 * 86400))
        assert _ids(invoke("runs", "--json", "--since", future)) == set()

    def test_table_without_color(self, runs: dict[str, Run]) -> None:
        """The table lists every run with its status; NO_COLOR leaves no escape codes."""
        result = invoke("runs")
        assert result.exit_code == 0
        assert "\x1b[" not in result.output
        assert runs["failed"].id in result.output
        assert "error" in result.output

    def test_bad_tag_is_one_line_and_exit_2(self, runs: dict[str, Run]) -> None:
        """A tag without '=' is refused with a usage error, no traceback."""
        result = invoke("runs", "--tag", "env")
        assert result.exit_code == 2
        assert "key=value" in result.output
        assert "Traceback" not in result.output


class TestShow:
    def test_tree_shows_model_tokens_sampling_and_errors(self, runs: dict[str, Run]) -> None:
        """The tree has each step with kind and duration, LLM model/tokens/temperature, errors."""
        out = invoke("show", runs["ok"].id).output
        assert "[agent] agent" in out
        assert "[tool] lookup" in out
        assert "model: gpt-test  tokens in=30 out=7  temperature=0.2" in out
        failed = invoke("show", runs["failed"].id).output
        assert "error: KeyError" in failed

    def test_tree_fits_the_terminal(self, store: Store) -> None:
        """No line is wider than the terminal, however long the values."""
        run = _record(store, "long", "ada", question="why " * 200)
        for width in (60, 100):
            result = CliRunner().invoke(
                main, ["show", run.id], env={"NO_COLOR": "1", "COLUMNS": str(width)}
            )
            lines = result.output.splitlines()
            assert max(len(line) for line in lines) <= width
            assert any(line.rstrip().endswith("…") for line in lines)

    def test_colour_when_allowed(self, runs: dict[str, Run]) -> None:
        """Without NO_COLOR on a colour terminal, kinds and errors are styled."""
        result = CliRunner().invoke(
            main, ["show", runs["failed"].id], env={"FORCE_COLOR": "1", "TERM": "xterm"}
        )
        assert "\x1b[" in result.output

    def test_step_prints_full_json(self, runs: dict[str, Run]) -> None:
        """--step by bare name prints the whole input and output as indented JSON."""
        out = invoke("show", runs["ok"].id, "--step", "answer").output
        assert '"question": "q"' in out
        assert '"answer to q"' in out
        assert '"model": "gpt-test"' in out

    def test_step_by_address_and_json(self, runs: dict[str, Run]) -> None:
        """--step takes an address without module names; --json gives the event."""
        result = invoke("show", runs["ok"].id, "--step", "agent/0 > lookup/0", "--json")
        ev = orjson.loads(result.output)
        assert ev["input"] == {"user": "ada"}
        assert ev["output"] == {"user": "ada", "plan": "pro"}

    def test_unknown_step_is_one_line(self, runs: dict[str, Run]) -> None:
        """An unknown step names the run and exits 2."""
        result = invoke("show", runs["ok"].id, "--step", "nope")
        assert result.exit_code == 2
        assert result.output.startswith("error: no step 'nope'")

    def test_show_json(self, runs: dict[str, Run]) -> None:
        """--json prints the run and its events."""
        data = orjson.loads(invoke("show", runs["ok"].id, "--json").output)
        assert data["run"]["id"] == runs["ok"].id
        assert [e["boundary"].rsplit(":", 1)[1] for e in data["events"]] == [
            "agent",
            "lookup",
            "answer",
        ]


class TestDiff:
    def test_identical_runs_exit_0(self, store: Store) -> None:
        """Two runs with the same steps, inputs and outputs are identical."""
        a, b = _record(store, "x", "ada"), _record(store, "x", "ada")
        result = invoke("diff", a.id, b.id)
        assert result.exit_code == 0
        assert "identical" in result.output

    def test_shows_the_first_divergence_with_field_changes(self, store: Store) -> None:
        """A changed input shows as ~ with its field path and both values; exit 1."""
        a, b = _record(store, "x", "ada"), _record(store, "x", "bob")
        result = invoke("diff", a.id, b.id)
        assert result.exit_code == 1
        assert "first divergence: agent/0" in result.output
        assert "~ user: 'ada' -> 'bob'" in result.output

    def test_missing_step_and_json(self, store: Store) -> None:
        """--json lists every pair: the changed input first, the call B never made as only_a."""
        a, b = _record(store, "x", "ada"), _record(store, "x", "nobody")
        data = orjson.loads(invoke("diff", a.id, b.id, "--json").output)
        assert data["counts"]["only_a"] == 1
        first = data["pairs"][data["first_divergence"]]
        assert first["boundary"].endswith(":agent")
        assert first["changes"]["input"][0] == {
            "path": "user",
            "change": "changed",
            "a": "ada",
            "b": "nobody",
        }
        only_a = [p for p in data["pairs"] if p["status"] == "only_a"]
        assert [p["boundary"].rsplit(":", 1)[1] for p in only_a] == ["answer"]


class TestStats:
    def test_counts_and_tokens_by_model(self, runs: dict[str, Run]) -> None:
        """stats sums runs, steps, errors and tokens by model over the period."""
        data = orjson.loads(invoke("stats", "--json", "--since", "1d").output)
        assert data["runs"] == 3
        assert data["by_status"] == {"ok": 2, "error": 1}
        assert data["steps"] == 3 + 3 + 2
        assert data["step_errors"] == 2  # the failing lookup and the agent it escaped through
        assert data["models"] == {"gpt-test": {"calls": 2, "input": 60, "output": 14}}

    def test_table(self, runs: dict[str, Run]) -> None:
        """The human view names the model and its token totals."""
        out = invoke("stats").output
        assert "3 runs since 7d" in out
        assert "gpt-test" in out
        assert "60" in out


class TestServe:
    def test_refuses_a_public_bind_without_a_token(self) -> None:
        """--host 0.0.0.0 without a token exits 2 before binding anything."""
        result = CliRunner().invoke(
            main, ["serve", "--host", "0.0.0.0"], env={"REPLAYABLE_VIEWER_TOKEN": ""}
        )
        assert result.exit_code == 2
        assert "--auth-token" in result.output

    def test_port_zero_prints_the_port_it_listens_on(self, store: Store) -> None:
        """serve --port 0 (any free port, as --help says) prints the address it got, and the
        viewer answers there (it printed :0)."""
        import os
        import subprocess
        import sys

        import httpx

        rp.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "replayable.cli", "serve", "--port", "0", "--store", store.url],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**os.environ, "COLUMNS": "300", "NO_COLOR": "1"},
        )
        try:
            assert proc.stdout is not None
            lines = [proc.stdout.readline(), proc.stdout.readline()]
            url = lines[1].strip()
            assert url.startswith("http://127.0.0.1:"), lines
            assert not url.startswith("http://127.0.0.1:0/"), lines
            assert httpx.get(url, timeout=30).status_code == 200
        finally:
            proc.terminate()
            proc.communicate(timeout=20)

    def test_a_port_in_use_is_a_clear_error(self, store: Store) -> None:
        """serve on a port another process holds exits 2 naming it, without first printing
        the viewer's address."""
        import socket

        rp.flush()
        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            held.listen()
            port = held.getsockname()[1]
            result = invoke("serve", "--port", str(port))
        assert result.exit_code == 2, result.output
        assert f"127.0.0.1:{port}" in result.output
        assert "--port" in result.output
        assert "http://" not in result.output
        assert "viewer for" not in result.output
