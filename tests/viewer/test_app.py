"""The viewer's pages and JSON API over a real SQLite store (Starlette's test client)."""

from __future__ import annotations

import time
from typing import Any

import pytest
from starlette.testclient import TestClient
from tests.fixtures.hostile import SCRIPT

import replayable as rp
from replayable.store import Store
from replayable.store.base import event_to_row
from replayable.trace import Event, Run
from replayable.viewer import create_app

from .conftest import Incident

LOCAL = "http://127.0.0.1"


@rp.boundary(kind="llm")
def complete(prompt: str) -> str:
    """A fake model call."""
    return f"echo: {prompt}"


@rp.boundary(kind="retrieval")
def retrieve(query: str) -> list[dict[str, Any]]:
    """A fake retriever returning scored chunks."""
    return [
        {"text": "Refunds take 5 days.", "source": "kb/refunds.md", "score": 0.91},
        {"content": "Contact support.", "source": "kb/contact.md", "score": 0.42},
    ]


@rp.boundary(kind="llm")
def stream(prompt: str) -> Any:
    """A fake streaming model call."""
    yield "Hel"
    yield "lo"


def _client(store: Store, **kw: Any) -> TestClient:
    return TestClient(create_app(store, **kw), base_url=LOCAL)


def _recorded(store: Store, fn: Any, *args: Any) -> Run:
    with rp.record(store, name="t") as run:
        out = fn(*args)
        if not isinstance(out, str | list):
            list(out)
    return run


class TestEscaping:
    def test_a_recorded_script_tag_renders_as_text(self, store: Store) -> None:
        """A prompt containing <script> is escaped on the run page and the step page."""
        payload = SCRIPT
        run = _recorded(store, complete, payload)
        client = _client(store)
        for url in (
            f"/runs/{run.id}",
            f"/runs/{run.id}/steps/0",
            f"/runs/{run.id}/steps/0?partial=1",
        ):
            html = client.get(url).text
            assert "<script>alert" not in html
            assert "&lt;script&gt;alert(" in html

    def test_pages_forbid_inline_script(self, store: Store) -> None:
        """Every response carries a CSP allowing scripts from /static only."""
        resp = _client(store).get("/")
        assert "script-src 'self'" in resp.headers["content-security-policy"]
        assert resp.headers["x-content-type-options"] == "nosniff"


class TestAuth:
    def test_requests_without_the_token_are_refused(self, store: Store) -> None:
        """With a token set, pages and API answer 401 without it."""
        client = _client(store, token="s3cret")
        assert client.get("/").status_code == 401
        assert client.get("/api/runs").status_code == 401
        assert client.get("/api/runs", headers={"Authorization": "Bearer nope"}).status_code == 401

    def test_bearer_token_is_accepted(self, store: Store) -> None:
        """Authorization: Bearer TOKEN opens the API."""
        client = _client(store, token="s3cret")
        resp = client.get("/api/runs", headers={"Authorization": "Bearer s3cret"})
        assert resp.status_code == 200
        assert resp.json() == {"runs": []}

    def test_token_in_the_url_is_traded_for_a_cookie(self, store: Store) -> None:
        """/?token=... redirects to the same page without it and sets an HttpOnly cookie."""
        client = _client(store, token="s3cret")
        resp = client.get("/?token=s3cret&status=ok", follow_redirects=False)
        assert resp.status_code == 303
        assert resp.headers["location"] == "/?status=ok"
        assert "httponly" in resp.headers["set-cookie"].lower()
        assert client.get("/").status_code == 200  # the cookie now rides along

    def test_a_foreign_host_header_is_refused_when_bound_locally(self, store: Store) -> None:
        """A page on another origin cannot reach the viewer through DNS rebinding."""
        client = _client(store)
        assert client.get("/", headers={"host": "evil.example:8765"}).status_code == 400
        assert client.get("/", headers={"host": "localhost:8765"}).status_code == 200


class TestPages:
    def test_run_list_filters_by_status_and_search(self, incident: Incident) -> None:
        """The run list narrows by status and by text in id, name or tags."""
        client = _client(incident.store)
        html = client.get("/", params={"q": "replay of"}).text
        assert incident.fixed.id in html
        assert f'data-run="{incident.run.id}"' not in html
        assert "no runs match" in client.get("/", params={"status": "error"}).text.lower()

    def test_replay_links_to_a_diff_against_its_source(self, incident: Incident) -> None:
        """A replay's page offers the diff against the run it replays."""
        html = _client(incident.store).get(f"/runs/{incident.fixed.id}").text
        assert f'href="/diff?a={incident.run.id}&amp;b={incident.fixed.id}"' in html

    def test_diff_page_highlights_the_first_divergence(self, incident: Incident) -> None:
        """The fix never deletes: the diff names delete_record as where the runs part."""
        html = (
            _client(incident.store)
            .get("/diff", params={"a": incident.run.id, "b": incident.fixed.id})
            .text
        )
        assert 'id="first-divergence"' in html
        assert "delete_record" in html.split('id="first-divergence"')[1].split("</section>")[0]

    def test_retrieved_chunks_render_as_cards(self, store: Store) -> None:
        """A retrieval step's scored chunks show as cards with source and score."""
        run = _recorded(store, retrieve, "refund")
        html = _client(store).get(f"/runs/{run.id}/steps/0").text
        assert html.count('class="card"') == 2
        assert "kb/refunds.md" in html
        assert "score 0.91" in html

    def test_streamed_chunks_are_collapsible(self, store: Store) -> None:
        """A streamed output shows joined, with its chunks in a <details>."""
        run = _recorded(store, stream, "hi")
        html = _client(store).get(f"/runs/{run.id}/steps/0").text
        assert '<details class="chunks"><summary>2 chunks</summary>' in html
        assert "Hello" in html

    def test_an_unknown_status_filter_is_a_400_naming_the_statuses(self, store: Store) -> None:
        """status=bogus answers 400 saying which statuses exist, not an empty list."""
        resp = _client(store).get("/api/runs", params={"status": "bogus"})
        assert resp.status_code == 400
        assert "status='bogus': use one of running, ok, error" in resp.json()["error"]

    def test_unknown_run_is_a_404_page(self, store: Store) -> None:
        """An unknown run id answers 404 with a message, on pages and API."""
        client = _client(store)
        assert client.get("/runs/nope").status_code == 404
        resp = client.get("/api/runs/nope")
        assert resp.status_code == 404
        assert "no run 'nope'" in resp.json()["error"]


def _big_run(store: Store, n: int, payload: Any = None) -> Run:
    run = Run(id=f"big{n:07d}", name="big", started_at=time.time() - 10, store=store)
    store.create_run(run)
    rows = []
    for seq in range(n):
        address = "m:root/0" if seq == 0 else f"m:root/0 > m:step/{seq - 1}"
        ev = Event(
            run_id=run.id,
            seq=seq,
            address=address,
            parent_seq=None if seq == 0 else 0,
            boundary="m:root" if seq == 0 else "m:step",
            kind="agent" if seq == 0 else "tool",
            key=f"k{seq}",
            input={"i": seq, "blob": payload} if payload is not None else {"i": seq},
            output={"ok": True},
            started_at=run.started_at + seq * 0.001,
            duration_ns=500_000,
            chain_seq=seq,
            hash="x",
        )
        rows.append(event_to_row(ev))
    store.write_rows(rows)
    run.ended_at = run.started_at + n * 0.001
    run.status = "ok"
    run.event_count = n
    store.finish_run(run)
    return run


class TestBigRuns:
    def test_ten_thousand_steps_render_one_page_the_rest_on_demand(self, store: Store) -> None:
        """The run page of a 10,000-step run renders its first 500 steps, the rest on demand."""
        run = _big_run(store, 10_000)
        client = _client(store)
        resp = client.get(f"/runs/{run.id}")
        assert resp.status_code == 200
        assert resp.text.count('<tr class="step') == 500
        assert "show more steps (500 of 10000)" in resp.text
        page = client.get(f"/api/runs/{run.id}/steps", params={"offset": 9900, "limit": 500}).json()
        assert page["total"] == 10_000
        assert [r["seq"] for r in page["rows"]][-1] == 9999

    def test_payloads_over_the_limit_are_cut_with_a_link(self, store: Store) -> None:
        """A value over the inline limit is cut on the page and in the API, with a full link."""
        run = _big_run(store, 2, payload="x" * 5000)
        client = _client(store, max_inline_bytes=1000)
        html = client.get(f"/runs/{run.id}/steps/1").text
        assert f'href="/api/runs/{run.id}/steps/1/input"' in html
        step = client.get(f"/api/runs/{run.id}/steps/1").json()
        assert step["input"]["truncated"] is True
        assert len(step["input"]["text"]) < 1100
        full = client.get(f"/api/runs/{run.id}/steps/1/input").json()
        assert full == {"i": 1, "blob": "x" * 5000}


class TestApi:
    def test_docs_list_every_endpoint(self, store: Store) -> None:
        """/api/docs documents the API, as HTML or as JSON."""
        client = _client(store)
        assert "/api/runs/{run}/steps" in client.get("/api/docs").text
        listed = client.get("/api/docs", headers={"accept": "application/json"}).json()
        assert {e["path"] for e in listed} >= {"/api/runs", "/api/diff?a={run}&b={run}"}

    def test_run_endpoint_has_totals_replays_and_the_replay_command(
        self, incident: Incident
    ) -> None:
        """/api/runs/{id} carries the totals, the replays and the replay command."""
        data = _client(incident.store).get(f"/api/runs/{incident.run.id}").json()
        assert data["overview"]["models"] == {
            "scripted-sampler-1": {"calls": 1, "input": pytest.approx(76, abs=60), "output": 18}
        }
        assert {r["id"] for r in data["replays"]} == {incident.replay.id, incident.fixed.id}
        assert data["replay_command"].startswith(
            f"replayable replay {incident.run.id} --import replayable.demo.agent"
        )

    def test_diff_endpoint(self, incident: Incident) -> None:
        """/api/diff aligns the runs and points at the first divergence."""
        data = (
            _client(incident.store)
            .get("/api/diff", params={"a": incident.run.id, "b": incident.fixed.id})
            .json()
        )
        first = data["pairs"][data["first_divergence"]]
        assert first["status"] == "only_a"
        assert first["boundary"] == "replayable.demo.agent:delete_record"


PII_KEY = "viewer-pii-key-" + "a" * 32


@rp.boundary(kind="tool")
def find_customer(email: str) -> dict[str, Any]:
    return {"email": email, "phone": "+1 415-867-5309"}


class TestReveal:
    def test_pages_show_pseudonyms_and_reveal_with_the_key(
        self, store: Store, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A pii run shows pseudonyms; with reveal=True and the key, its step shows the real
        values from the vault; under another key the page is a 400 naming the key ids."""
        pii = rp.PII(key=PII_KEY, vault=tmp_path / "vault.db")
        with rp.record(store, pii=pii) as run:
            find_customer("dana.whitfield@acme.io")
        plain = _client(store).get(f"/api/runs/{run.id}/steps/0").text
        assert "dana.whitfield@acme.io" not in plain
        assert "@example.com" in plain
        monkeypatch.setenv("REPLAYABLE_PII_KEY", PII_KEY)
        shown = _client(store, reveal=True).get(f"/api/runs/{run.id}/steps/0")
        assert shown.status_code == 200
        assert "dana.whitfield@acme.io" in shown.text
        assert "867-5309" in shown.text
        monkeypatch.setenv("REPLAYABLE_PII_KEY", "another-viewer-key-" + "b" * 32)
        wrong = _client(store, reveal=True).get(f"/api/runs/{run.id}/steps/0")
        assert wrong.status_code == 400
        assert "key id" in wrong.text
        assert "dana.whitfield" not in wrong.text
