"""The viewer nests the runs other services recorded under the caller's remote step."""

from __future__ import annotations

from pathlib import Path

import httpx
from tests.cli.test_show_linked import _incident
from tests.integrations.services import Uvicorn

import replayable as rp
from replayable.viewer import create_app


class TestLinkedTree:
    """One tree across services in the viewer."""

    def test_callee_rows_follow_the_remote_step(self, tmp_path: Path) -> None:
        """The API's rows put billing's run and steps right under the remote step, deeper."""
        run, caller_db, billing_db = _incident(tmp_path)
        app = create_app(rp.open_store(caller_db), linked=[rp.open_store(billing_db)])
        with Uvicorn(app) as viewer, httpx.Client(base_url=viewer.url) as web:
            rows = web.get(f"/api/runs/{run.id}/steps").json()["rows"]
            names = [r["name"] for r in rows]
            assert names[0] == "http:POST billing/charge"
            assert names[1].startswith("billing: run ")
            assert names[2:] == ["risk_score", "insert_charge"]
            assert [r["depth"] for r in rows] == [0, 1, 2, 2]
            callee = rows[1]["run_id"]
            assert {r["run_id"] for r in rows[2:]} == {callee}
            page = web.get(f"/runs/{run.id}").text
            assert f'href="/runs/{callee}"' in page
            detail = web.get(f"/runs/{callee}/steps/{rows[3]['seq']}")
            assert detail.status_code == 200
            assert "insert_charge" in detail.text

    def test_without_the_linked_store_nothing_is_nested(self, tmp_path: Path) -> None:
        """A viewer over the caller's store alone shows the caller's steps only."""
        run, caller_db, _ = _incident(tmp_path)
        with (
            Uvicorn(create_app(rp.open_store(caller_db))) as viewer,
            httpx.Client(base_url=viewer.url) as web,
        ):
            rows = web.get(f"/api/runs/{run.id}/steps").json()["rows"]
        assert [r["name"] for r in rows] == ["http:POST billing/charge"]
