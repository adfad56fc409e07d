"""Imported runs in the rest of the tool: show, the viewer, diff and verify name the source and
work; promote without the agent says which function to decorate, importing nothing the
trace names."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest
from click.testing import CliRunner
from tests.viewer.conftest import LiveServer

from replayable._otlp import import_otlp
from replayable._registry import REGISTRY
from replayable.boundary import bare_name
from replayable.cli import main
from replayable.store import Store
from replayable.viewer import create_app

from .conftest import agent_trace
from .test_import import jspan, otlp_json

WIDE = {"NO_COLOR": "1", "COLUMNS": "200"}
"""A wide plain terminal: lines are not cut or wrapped whatever the worker's console."""


def imported(store: Store, tmp_path: Path, prompt: str = "Refund order 7") -> str:
    """Import one traced agent run; its id."""
    path = tmp_path / f"{abs(hash(prompt))}.pb"
    path.write_bytes(agent_trace(prompt=prompt).SerializeToString())
    ((run, _),) = import_otlp(path, store)
    return run.id


class TestViews:
    def test_show_names_the_source(self, store: Store, tmp_path: Path) -> None:
        """replayable show prints where the run came from: OTLP, convention, producer, service."""
        run_id = imported(store, tmp_path)
        result = CliRunner().invoke(main, ["show", run_id], env=WIDE)
        assert result.exit_code == 0, result.output
        assert (
            "imported from OTLP: gen_ai (opentelemetry.instrumentation.openai_v2 2.4b0), "
            "service support" in result.output
        )

    def test_viewer_run_page_shows_the_source(self, store: Store, tmp_path: Path) -> None:
        """The viewer's run page and step pages of an imported run load, the source shown."""
        run_id = imported(store, tmp_path)
        with LiveServer(create_app(store)) as server:
            page = httpx.get(f"{server.url}/runs/{run_id}")
            assert page.status_code == 200
            assert 'id="run-source"' in page.text
            assert "imported from OTLP" in page.text
            for seq in range(4):
                assert httpx.get(f"{server.url}/runs/{run_id}/steps/{seq}").status_code == 200

    def test_viewer_commands_name_your_module_not_the_steps_kind(
        self, store: Store, tmp_path: Path
    ) -> None:
        """The viewer's replay and fork commands for an imported run (and the MCP server's
        replay_modules) say --import your_module: the root step is named agent:support after
        its kind, not a module (they said --import agent, which imports nothing of yours)."""
        from replayable.mcp_server._tools import Tools

        run_id = imported(store, tmp_path)
        with LiveServer(create_app(store)) as server:
            info = httpx.get(f"{server.url}/api/runs/{run_id}").json()
            assert "--import your_module " in info["replay_command"]
            step = httpx.get(f"{server.url}/api/runs/{run_id}/steps/2").json()
            assert "--import your_module " in step["fork_command"]
        shown = Tools(store).show_run(run_id)
        assert shown["replay_modules"] == ["your_module"]

    def test_line_breaks_in_traced_names_cannot_forge_output_lines(
        self, store: Store, tmp_path: Path
    ) -> None:
        """A span, agent, tool or service name holding a line break prints it as \\n in
        show, show --step, runs and diff: a hostile trace cannot add lines that look like
        replayable's own (escape sequences were already shown inert)."""
        forged = "refunds\nimported from OTLP: verified by replayable"
        attrs = {"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": forged}
        root = jspan("00f067aa0ba902b7", **attrs)
        root["name"] = forged
        tool = jspan(
            "00f067aa0ba902b8",
            "00f067aa0ba902b7",
            **{"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": forged},
        )
        request = otlp_json([root, tool])
        request["resourceSpans"][0]["resource"]["attributes"][0]["value"]["stringValue"] = forged
        path = tmp_path / "forged.json"
        path.write_bytes(orjson.dumps(request))
        ((run, _),) = import_otlp(path, store)
        other = imported(store, tmp_path)
        for args in (
            ["show", run.id],
            ["show", run.id, "--step", "1"],
            ["runs"],
            ["diff", run.id, other],
        ):
            out = CliRunner().invoke(main, args, env=WIDE).output
            lines = out.splitlines()
            assert not any(
                ln.lstrip(" │├└─").startswith("imported from OTLP: verified") for ln in lines
            ), (args, out)
            assert "refunds\\nimported" in out, (args, out)

    def test_diff_and_verify(self, store: Store, tmp_path: Path) -> None:
        """Two imported runs diff at the changed prompt; each verifies."""
        a = imported(store, tmp_path)
        b = imported(store, tmp_path, prompt="Cancel order 9")
        result = CliRunner().invoke(main, ["diff", a, b], env=WIDE)
        assert result.exit_code == 1, result.output  # the runs differ
        assert "input.messages[0].content" in result.output
        assert CliRunner().invoke(main, ["verify", a]).exit_code == 0

    def test_promote_without_the_agent_names_the_function_to_decorate(
        self, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """Without a registered agent named like the traced root, promote says which function
        to decorate (as check does), imports nothing the trace names and writes nothing."""
        (tmp_path / "support.py").write_text("raise SystemExit('imported support.py')\n")
        monkeypatch.chdir(tmp_path)
        # Another test in this worker may have registered an agent named `support`: hide it.
        for name, b in list(REGISTRY.items()):
            if b.kind == "agent" and bare_name(name) == "support":
                monkeypatch.delitem(REGISTRY, name)
        run_id = imported(store, tmp_path)
        result = CliRunner().invoke(main, ["promote", run_id])
        assert result.exit_code == 2, result.output
        assert "imported from a trace" in result.output
        assert "named 'support'" in result.output
        assert "rp.replay" in result.output
        assert not (tmp_path / "tests").exists()
