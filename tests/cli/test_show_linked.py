"""`replayable show` nests the runs other services recorded under the caller's remote step."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
from click.testing import CliRunner
from tests.integrations import services
from tests.integrations.services import Uvicorn

import replayable as rp
from replayable.cli import main


def _incident(tmp_path: Path) -> tuple[rp.Run, Path, Path]:
    caller_db, billing_db = tmp_path / "agent.db", tmp_path / "billing-traces.db"
    app = services.fastapi_billing(str(tmp_path / "billing.db"), rp.open_store(billing_db))
    with (
        Uvicorn(app) as billing,
        rp.instrument(httpx.Client(), service="billing") as client,
        rp.record(caller_db, name="support") as run,
    ):
        client.post(billing.url + "/charge", json={"user": "bob", "cents": 500})
    flush = getattr(rp, "flush", None)
    if flush is not None:
        flush()
    return run, caller_db, billing_db


class TestShowLinked:
    """One tree across services."""

    def test_callee_steps_nest_under_the_remote_step(self, tmp_path: Path) -> None:
        """With billing's store named, its run and steps appear inside the caller's step."""
        run, caller_db, billing_db = _incident(tmp_path)
        result = CliRunner().invoke(
            main,
            ["show", run.id, "--store", str(caller_db), "--store", str(billing_db)],
            terminal_width=200,
        )
        assert result.exit_code == 0, result.output
        lines = result.output.splitlines()
        remote = next(i for i, line in enumerate(lines) if "http:POST billing/charge" in line)
        head = next(i for i, line in enumerate(lines) if "billing: run " in line)
        charge = next(i for i, line in enumerate(lines) if "insert_charge" in line)
        assert remote < head < charge

        def indent(i: int) -> int:
            return len(lines[i]) - len(lines[i].lstrip(" │├└─"))

        assert indent(remote) < indent(head) < indent(charge)

    def test_without_the_callee_store_the_tree_is_the_caller_alone(self, tmp_path: Path) -> None:
        """Only the stores named are searched: billing's run is not shown without its store."""
        run, caller_db, _ = _incident(tmp_path)
        result = CliRunner().invoke(main, ["show", run.id, "--store", str(caller_db)])
        assert result.exit_code == 0, result.output
        assert "insert_charge" not in result.output

    def test_json_carries_the_linked_runs(self, tmp_path: Path) -> None:
        """--json puts the linked runs under the calling step's address."""
        run, caller_db, billing_db = _incident(tmp_path)
        result = CliRunner().invoke(
            main, ["show", run.id, "--store", str(caller_db), "--store", str(billing_db), "--json"]
        )
        data = orjson.loads(result.output)
        (callee,) = data["linked"]["http:POST billing/charge/0"]
        assert callee["run"]["metadata"]["parent"]["run"] == run.id
        assert [e["boundary"] for e in callee["events"]][-1] == "billing:insert_charge"

    def test_run_found_in_a_later_store(self, tmp_path: Path) -> None:
        """A run id is looked up in each --store in turn."""
        run, caller_db, billing_db = _incident(tmp_path)
        result = CliRunner().invoke(
            main, ["show", run.id, "--store", str(billing_db), "--store", str(caller_db)]
        )
        assert result.exit_code == 0, result.output
        assert "insert_charge" in result.output

    def test_unknown_run_is_a_clear_error(self, tmp_path: Path) -> None:
        """A run in none of the stores says so, without a traceback."""
        _, caller_db, billing_db = _incident(tmp_path)
        result = CliRunner().invoke(
            main, ["show", "ffffffff", "--store", str(caller_db), "--store", str(billing_db)]
        )
        assert result.exit_code != 0
        assert "Traceback" not in result.output
        assert "ffffffff" in result.output


class TestDiffFollow:
    """`diff --follow` compares the callees' steps too."""

    def test_a_change_inside_billing_shows_at_its_step(self, tmp_path: Path) -> None:
        """Two incidents whose billing differed: --follow names billing's changed step."""
        run_a, caller_db, billing_db = _incident(tmp_path)
        services.BILLING["version"] = 2
        try:
            run_b, _, _ = _incident(tmp_path)
        finally:
            services.BILLING["version"] = 1
        args = ["diff", run_a.id, run_b.id, "--store", str(caller_db), "--json"]
        plain = orjson.loads(CliRunner().invoke(main, args).output)
        followed = orjson.loads(
            CliRunner().invoke(main, [*args, "--follow", "--linked-store", str(billing_db)]).output
        )
        inside = "http:POST billing/charge/0 > billing: billing:insert_charge/0"
        assert inside not in orjson.dumps(plain).decode()
        changed = [p["a"]["address"] for p in followed["pairs"] if p["status"] == "changed"]
        assert inside in changed
        assert not followed["identical"]

    def test_repeated_store_finds_the_linked_runs(self, tmp_path: Path) -> None:
        """diff --follow --store A --store B: billing's runs come from the second store."""
        run_a, caller_db, billing_db = _incident(tmp_path)
        services.BILLING["version"] = 2
        try:
            run_b, _, _ = _incident(tmp_path)
        finally:
            services.BILLING["version"] = 1
        args = ["diff", run_a.id, run_b.id, "--follow", "--json"]
        stores = ["--store", str(caller_db), "--store", str(billing_db)]
        followed = orjson.loads(CliRunner().invoke(main, [*args, *stores]).output)
        inside = "http:POST billing/charge/0 > billing: billing:insert_charge/0"
        changed = [p["a"]["address"] for p in followed["pairs"] if p["status"] == "changed"]
        assert inside in changed
        alone = CliRunner().invoke(main, [*args, "--store", str(caller_db)]).output
        assert inside not in alone

    def test_a_run_in_the_second_store_is_found(self, tmp_path: Path) -> None:
        """The runs compared are looked up in each --store in turn."""
        run, caller_db, billing_db = _incident(tmp_path)
        (callee,) = rp.open_store(billing_db).list_runs()
        result = CliRunner().invoke(
            main,
            ["diff", run.id, callee.id, "--store", str(caller_db), "--store", str(billing_db)],
        )
        assert result.exit_code == 1, result.output
        assert "Traceback" not in result.output
