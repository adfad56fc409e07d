"""The viewer's check pages and API over a kept check (Starlette's test client)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from starlette.testclient import TestClient
from tests.fixtures.check_corpus import Corpus, record_corpus

import replayable as rp
from replayable.store import Store
from replayable.viewer import create_app

LOCAL = "http://127.0.0.1"


@pytest.fixture
def corpus(store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Corpus:
    """20 recorded runs of the sampling support agent in the viewer's store."""
    code = tmp_path / "code"
    code.mkdir()
    monkeypatch.syspath_prepend(str(code))
    return record_corpus(store, code, n=20)


@pytest.fixture
def client(store: Store) -> TestClient:
    """The viewer over the test's store."""
    return TestClient(create_app(store), base_url=LOCAL)


class TestCheckPages:
    def test_checks_page_lists_a_kept_check_with_its_counts(
        self, corpus: Corpus, client: TestClient
    ) -> None:
        """/checks lists the check, its result and its largest group; the nav links to it."""
        corpus.change()
        report = rp.check(corpus.store, imports=[corpus.name])
        html = client.get("/checks").text
        assert f'href="/checks/{report.id}"' in html
        assert "failed" in html
        assert f"changed {corpus.name}:issue_refund [amount]" in html
        assert 'href="/checks"' in client.get("/").text

    def test_check_page_shows_groups_with_examples_linked_to_their_diff(
        self, corpus: Corpus, client: TestClient
    ) -> None:
        """The check page shows each group's count, reason, boundary and fields; every example
        links to the diff of source and replay, which opens at the first divergence."""
        corpus.change()
        report = rp.check(corpus.store, imports=[corpus.name])
        [group] = report.groups
        resp = client.get(f"/checks/{report.id[:14]}")
        assert resp.status_code == 200
        html = resp.text
        assert f"{report.counts['diverged']} diverged" in html
        assert "issue_refund" in html
        assert '<span class="field">amount</span>' in html
        links = re.findall(r'class="example mono small" href="([^"]+)"', html)
        assert len(links) == len(group.examples)
        for (run_id, replay_id), link in zip(group.examples, links, strict=True):
            assert link == f"/diff?a={run_id}&amp;b={replay_id}"
        diff = client.get(links[0].replace("&amp;", "&"))
        assert diff.status_code == 200
        assert 'id="first-divergence"' in diff.text
        assert "issue_refund" in diff.text

    def test_failed_runs_are_listed_and_escaped(self, corpus: Corpus, client: TestClient) -> None:
        """A failed run's error message is shown as text, never as markup."""
        corpus.change(
            'if "urgent" in ticket:\n        raise RuntimeError("<script>alert(1)</script>")',
            where="# FIRST",
        )
        report = rp.check(corpus.store, imports=[corpus.name])
        assert report.counts["failed"] == 4
        html = client.get(f"/checks/{report.id}").text
        assert 'id="failed"' in html
        assert "<script>alert(1)" not in html
        assert "&lt;script&gt;alert(1)" in html

    def test_api_gives_the_check_and_every_run(self, corpus: Corpus, client: TestClient) -> None:
        """/api/checks lists it; /api/checks/{id} has counts, groups and all 20 outcomes."""
        corpus.change()
        report = rp.check(corpus.store, imports=[corpus.name])
        listed = client.get("/api/checks").json()["checks"]
        assert [c["id"] for c in listed] == [report.id]
        assert "runs" not in listed[0]
        one = client.get(f"/api/checks/{report.id}").json()
        assert one["counts"] == report.counts
        assert len(one["runs"]) == 20
        assert one["groups"][0]["examples"][0]["replay_id"]

    def test_an_unknown_check_is_404(self, corpus: Corpus, client: TestClient) -> None:
        """No such check: 404 as a page and as JSON."""
        assert client.get("/checks/nope").status_code == 404
        resp = client.get("/api/checks/nope")
        assert resp.status_code == 404
        assert "no check" in resp.json()["error"]
