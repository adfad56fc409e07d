"""`replayable mcp` driven by the real MCP client over stdio, on the demo's store: a coding
agent finds the incident, reads it, replays a fix against it and reads the first divergence,
with nothing but MCP."""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path

from tests.fixtures.hostile import HTML, RAW_TERMINAL, TERMINAL

import replayable as rp
from replayable.store import open_store

from .conftest import Demo, call, connect, refused

READ_ONLY = {"list_runs", "show_run", "show_step", "diff_runs", "verify_run"}
RUNS_CODE = {"replay_run", "fork_run", "check_runs"}


class TestTools:
    async def test_the_replay_tools_are_absent_without_allow_replay(self, demo: Demo) -> None:
        """Read-only by default: only the reading tools are listed, and calling a replay tool
        is an unknown tool."""
        async with connect(demo.workdir, demo.store) as s:
            names = {t.name for t in (await s.list_tools()).tools}
            assert names == READ_ONLY
            message = await refused(s, "replay_run", run_id=demo.incident, modules=["x"])
            assert "replay_run" in message

    async def test_allow_replay_adds_the_tools_that_run_code(self, demo: Demo) -> None:
        """--allow-replay lists replay_run, fork_run and check_runs, marked as not read-only."""
        async with connect(demo.workdir, demo.store, "--allow-replay") as s:
            tools = {t.name: t for t in (await s.list_tools()).tools}
        assert set(tools) == READ_ONLY | RUNS_CODE
        assert tools["replay_run"].annotations is not None
        assert tools["replay_run"].annotations.read_only_hint is False
        assert tools["show_run"].annotations.read_only_hint is True  # type: ignore[union-attr]


class TestReading:
    async def test_lists_the_demo_runs_with_the_cli_filters(self, demo: Demo) -> None:
        """list_runs finds the incident; status and name filter as `replayable runs` does."""
        async with connect(demo.workdir, demo.store) as s:
            every = await call(s, "list_runs", limit=100)
            diverged = await call(s, "list_runs", status="diverged")
            named = await call(s, "list_runs", name="no-such-agent")
        ids = [r["id"] for r in every["runs"]]
        assert demo.incident in ids
        assert demo.fixed in ids
        assert [r["id"] for r in diverged["runs"]] == [demo.fixed]
        assert diverged["runs"][0]["replay_of"] == demo.incident
        assert named["runs"] == []

    async def test_show_run_shows_the_incident(self, demo: Demo) -> None:
        """The step tree of the incident: the model chose another customer and the agent
        deleted that record; replay_modules names the agent's module."""
        async with connect(demo.workdir, demo.store) as s:
            shown = await call(s, "show_run", run_id=demo.incident[:14])
        assert shown["run"]["id"] == demo.incident
        names = [step["boundary"].rsplit(":", 1)[-1] for step in shown["steps"]]
        assert names[0] == "support_agent"
        assert "choose_record" in names
        assert "delete_record" in names
        delete = next(x for x in shown["steps"] if x["boundary"].endswith(":delete_record"))
        assert '"deleted":1' in delete["preview"]
        assert shown["replay_modules"] == ["replayable.demo.agent"]
        assert shown["next_offset"] is None

    async def test_show_step_reads_one_value_whole_page_by_page(self, demo: Demo) -> None:
        """A value cut in show_step is read whole with field=, max_chars at a time."""
        async with connect(demo.workdir, demo.store) as s:
            step = await call(s, "show_step", run_id=demo.incident, step="search_customers")
            assert step["output"]["truncated"] is False
            cut = await call(s, "show_step", run_id=demo.incident, step=step["seq"], max_chars=100)
            assert cut["output"]["truncated"] is True
            parts, offset = [], 0
            while offset is not None:
                page = await call(
                    s,
                    "show_step",
                    run_id=demo.incident,
                    step=step["seq"],
                    field="output",
                    offset=offset,
                    max_chars=100,
                )
                parts.append(page["text"])
                offset = page["next_offset"]
        assert len(parts) > 1
        assert json.loads("".join(parts)) == json.loads(step["output"]["text"])

    async def test_diff_runs_finds_the_divergence_at_delete_record(self, demo: Demo) -> None:
        """The incident against the fixed replay: they part at delete_record, which only the
        incident made."""
        async with connect(demo.workdir, demo.store) as s:
            d = await call(s, "diff_runs", run_a=demo.incident, run_b=demo.fixed)
        assert d["identical"] is False
        first = d["first_divergence"]
        assert first["boundary"].endswith(":delete_record")
        assert first["status"] == "only_a"

    async def test_verify_run_checks_the_chain(self, demo: Demo) -> None:
        """verify_run recomputes the incident's hash chain: it checks out."""
        async with connect(demo.workdir, demo.store) as s:
            v = await call(s, "verify_run", run_id=demo.incident)
        assert v["ok"] is True
        assert v["run_id"] == demo.incident
        assert v["events"] == 5


class TestReplay:
    async def test_replaying_the_guarded_agent_diverges_at_delete_record(self, demo: Demo) -> None:
        """replay_run against the guarded agent in the working directory: the fix never
        deletes, so the first divergence is delete_record, skipped; the customers table is
        untouched and the replay is a run in the store."""
        before = _customers(demo.customers)
        async with connect(demo.workdir, demo.store, "--allow-replay") as s:
            out = await call(s, "replay_run", run_id=demo.incident, modules=["guarded_agent"])
            replay = await call(s, "show_run", run_id=out["replay_id"])
        assert out["ok"] is False
        first = out["first_divergence"]
        assert first["boundary"] == "replayable.demo.agent:delete_record"
        assert first["reason"] == "skipped"
        assert replay["run"]["replay_of"] == demo.incident
        assert _customers(demo.customers) == before

    async def test_each_replay_imports_the_code_as_it_is_on_disk(self, demo: Demo) -> None:
        """An edit between two replay_run calls is picked up: the unguarded module takes the
        recorded path, the same module edited to guard diverges."""
        module = demo.workdir / "editable_agent.py"
        module.write_text(
            "from replayable.demo import agent\n"
            "from replayable.demo.agent import support_agent  # noqa: F401\n"
            "agent.GUARD = False\n"
        )
        async with connect(demo.workdir, demo.store, "--allow-replay") as s:
            same = await call(s, "replay_run", run_id=demo.incident, modules=["editable_agent"])
            module.write_text(module.read_text().replace("GUARD = False", "GUARD = True"))
            fixed = await call(s, "replay_run", run_id=demo.incident, modules=["editable_agent"])
        assert same["ok"] is True
        assert same["divergences"] == []
        assert fixed["first_divergence"]["boundary"].endswith(":delete_record")

    async def test_a_side_effect_named_live_is_refused(self, demo: Demo) -> None:
        """live=['delete_record'] is refused as the CLI refuses it: nothing is deleted."""
        before = _customers(demo.customers)
        async with connect(demo.workdir, demo.store, "--allow-replay") as s:
            message = await refused(
                s,
                "replay_run",
                run_id=demo.incident,
                modules=["replayable.demo.agent"],
                live=["delete_record"],
            )
        assert "side effect" in message.lower()
        assert "Traceback" not in message
        assert _customers(demo.customers) == before

    async def test_a_fork_that_changes_a_side_effect_stops_unless_faked(self, demo: Demo) -> None:
        """fork_run: had the model chosen the right customer, delete_record would change; run
        live (live_kinds=['tool']) it is refused and the fork stops there; with a fake the fork
        runs to the end."""
        right = {
            "tool": "delete_record",
            "arguments": {"customer_id": 13},
            "reason": "The user is Dana Whitfield.",
        }
        before = _customers(demo.customers)
        async with connect(demo.workdir, demo.store, "--allow-replay") as s:
            stopped = await call(
                s,
                "fork_run",
                run_id=demo.incident,
                modules=["replayable.demo.agent"],
                at="choose_record#1",
                set_output=right,
                live_kinds=["tool"],
            )
            faked = await call(
                s,
                "fork_run",
                run_id=demo.incident,
                modules=["replayable.demo.agent"],
                at="choose_record#1",
                set_output=right,
                fakes={"delete_record": "replayable.demo.fakes:delete_record"},
            )
        assert "SideEffectRefused" in stopped["stopped"]
        assert faked["stopped"] is None
        assert [c["how"] for c in stopped["changes"]] == ["overridden", "refused"]
        assert {c["how"] for c in faked["changes"]} >= {"overridden", "faked"}
        assert _customers(demo.customers) == before

    async def test_check_runs_groups_the_runs_the_fix_changes(self, demo: Demo) -> None:
        """check_runs with the guarded agent: every recorded deletion is now skipped or
        refused; the runs come back grouped by their first divergence."""
        async with connect(demo.workdir, demo.store, "--allow-replay") as s:
            report = await call(s, "check_runs", modules=["guarded_agent"])
        assert report["ok"] is False
        assert report["counts"]["diverged"] >= 1
        assert any(g["boundary"].endswith(":delete_record") for g in report["groups"])


class TestHostileInput:
    async def test_a_hostile_run_id_is_refused(self, demo: Demo) -> None:
        """Paths, options, escapes, oversize ids and trace files: a clear tool error from the
        reading and the replaying tools alike, never a traceback."""
        hostile = [
            "../../etc/passwd",
            "/etc/passwd",
            "--help",
            "x; rm -rf /",
            "\x1b[2Jcleared",
            "a" * 200,
            "incident.jsonl",
            "",
        ]
        async with connect(demo.workdir, demo.store, "--allow-replay") as s:
            for run_id in hostile:
                for tool, args in (
                    ("show_run", {"run_id": run_id}),
                    ("replay_run", {"run_id": run_id, "modules": ["guarded_agent"]}),
                ):
                    message = await refused(s, tool, **args)
                    assert "is not a run id" in message or "only run ids" in message
                    assert "Traceback" not in message
                    assert "\x1b" not in message

    async def test_a_hostile_module_name_is_refused_and_never_imported(
        self, demo: Demo, tmp_path: Path
    ) -> None:
        """A path, a file name, code or an option as a module: refused before anything is
        imported (the module that would leave a marker never runs)."""
        marker = tmp_path / "ran"
        evil = tmp_path / "evil.py"
        evil.write_text(f"open({str(marker)!r}, 'w').write('ran')\n")
        async with connect(demo.workdir, demo.store, "--allow-replay") as s:
            for module in (str(evil), "../evil", "evil.py/x", "os; import evil", "-m", "a..b"):
                message = await refused(s, "replay_run", run_id=demo.incident, modules=[module])
                assert "is not a module name" in message
            message = await refused(
                s,
                "fork_run",
                run_id=demo.incident,
                modules=["guarded_agent"],
                at="choose_record#1",
                live_from=True,
                fakes={"delete_record": str(evil)},
            )
            assert "module:function" in message
        assert not marker.exists()

    async def test_bad_sizes_and_names_get_clear_errors(self, demo: Demo) -> None:
        """Out-of-range sizes, a bad status, a bad boundary name: each one line saying why."""
        async with connect(demo.workdir, demo.store, "--allow-replay") as s:
            assert "from 1 to 1000" in await refused(s, "list_runs", limit=10**9)
            assert "use one of" in await refused(s, "list_runs", status="evil")
            assert "since=" in await refused(s, "list_runs", since="yesterday-ish")
            assert "from 100 to" in await refused(
                s, "show_step", run_id=demo.incident, step=0, max_chars=10**9
            )
            assert "no step" in await refused(s, "show_step", run_id=demo.incident, step="nope")
            assert "not a boundary name" in await refused(
                s,
                "replay_run",
                run_id=demo.incident,
                modules=["guarded_agent"],
                live=["--allow-side-effects"],
            )


class TestInertValues:
    async def test_recorded_html_and_terminal_escapes_come_back_inert(self, tmp_path: Path) -> None:
        """A run whose name, tags and values carry script tags and terminal sequences: every
        answer decodes to the exact stored value, and its text carries no raw tag opener,
        escape, BEL or bidi override."""
        store_path = str(tmp_path / "hostile.db")
        store = open_store(store_path)
        shout = rp.boundary(kind="tool", name="hostile:shout")(lambda text: {"echo": text})
        payload = " ".join([*HTML, TERMINAL, "\x9b31m"])
        with rp.record(store, name=TERMINAL, tags={"t": TERMINAL}) as run:
            shout(payload)
        rp.flush()  # the server is another process: it reads what is on disk
        async with connect(tmp_path, store_path) as s:
            answers = [
                (await s.call_tool("list_runs", {})).content[0].text,  # type: ignore[union-attr]
                (await s.call_tool("show_run", {"run_id": run.id})).content[0].text,  # type: ignore[union-attr]
                (await s.call_tool("show_step", {"run_id": run.id, "step": 0})).content[0].text,  # type: ignore[union-attr]
                (await s.call_tool("show_step", {"run_id": run.id, "step": 0, "field": "output"}))
                .content[0]
                .text,  # type: ignore[union-attr]
                (await s.read_resource(f"replayable://runs/{run.id}")).contents[0].text,  # type: ignore[union-attr]
            ]
        for text in answers:
            for raw in (*RAW_TERMINAL, "<script", "<img", "\x9b"):
                assert raw not in text
        listed = json.loads(answers[0])["runs"][0]
        assert listed["name"] == TERMINAL
        assert listed["tags"] == {"t": TERMINAL}
        assert json.loads(json.loads(answers[3])["text"]) == {"echo": payload}


class TestResourcesAndPrompt:
    async def test_a_run_and_a_step_are_resources(self, demo: Demo) -> None:
        """replayable://runs/{id} is the run's tree, .../steps/{seq} one step in full."""
        async with connect(demo.workdir, demo.store) as s:
            templates = (await s.list_resource_templates()).resource_templates
            run = json.loads(
                (await s.read_resource(f"replayable://runs/{demo.incident}")).contents[0].text  # type: ignore[union-attr]
            )
            step = json.loads(
                (await s.read_resource(f"replayable://runs/{demo.incident}/steps/0"))
                .contents[0]
                .text  # type: ignore[union-attr]
            )
        assert {t.uri_template for t in templates} == {
            "replayable://runs/{run_id}",
            "replayable://runs/{run_id}/steps/{seq}",
        }
        assert run["run"]["id"] == demo.incident
        assert step["boundary"] == "replayable.demo.agent:support_agent"

    async def test_the_investigation_prompt_walks_the_loop(self, demo: Demo) -> None:
        """The prompt names the run and, with replays allowed, the replay step; read-only, it
        says how to enable it."""
        async with connect(demo.workdir, demo.store, "--allow-replay") as s:
            full = await s.get_prompt("investigate_incident", {"run_id": demo.incident})
        async with connect(demo.workdir, demo.store) as s:
            read_only = await s.get_prompt("investigate_incident", {})
        text = full.messages[0].content.text  # type: ignore[union-attr]
        for part in (demo.incident, "replay_run", "first_divergence"):
            assert part in text
        other = read_only.messages[0].content.text  # type: ignore[union-attr]
        assert "list_runs(status='error'" in other
        assert "--allow-replay" in other


def _customers(path: Path) -> list[tuple[int, str, str]]:
    with sqlite3.connect(path) as db:
        return list(db.execute("SELECT id, name, email FROM customers ORDER BY id"))
