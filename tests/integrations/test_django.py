"""Django under a real WSGI server (wsgiref) with replayable's WSGI middleware: linked runs,
follow replays, untrusted headers."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from tests.integrations import django_billing, services
from tests.integrations.django_billing import Django

import replayable as rp
from replayable import _propagation as prop
from replayable.store import Store

LIVE = ["http:POST billing/charge"]


@pytest.fixture
def billing_store(tmp_path: Path) -> Store:
    """Billing's own store."""
    return rp.open_store(tmp_path / "billing-traces.db")


@pytest.fixture(autouse=True)
def billing_db(tmp_path: Path) -> Iterator[str]:
    """Billing's business database, where the Django view writes."""
    path = str(tmp_path / "billing.db")
    django_billing.DB["path"] = path
    services.BILLING["version"] = 1
    yield path
    services.BILLING["version"] = 1


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """The caller's instrumented client."""
    with rp.instrument(httpx.Client(), service="billing") as c:
        yield c


def _charge(client: httpx.Client, url: str) -> dict[str, object]:
    reply = client.post(url + "/charge", json={"user": "bob", "cents": 500})
    reply.raise_for_status()
    return dict(reply.json())


class TestDjango:
    """Django's billing service links, follows and refuses like Flask and FastAPI."""

    def test_the_views_run_links_to_the_caller_step(
        self, billing_store: Store, client: httpx.Client
    ) -> None:
        """The request with context records a run in Django linked to the remote step."""
        with Django(billing_store) as billing, rp.record(name="agent") as run:
            out = _charge(client, billing.url)
        assert out["cents"] == 500
        step = next(run.events())
        (callee,) = billing_store.list_runs()
        assert callee.parent == prop.Link(run.id, step.address)
        assert callee.name == "billing: POST /charge"
        assert [e.boundary for e in callee.events()] == [
            "billing:risk_score",
            "billing:insert_charge",
        ]
        assert step.meta["linked"]["run"] == callee.id

    def test_follow_replays_django_with_nothing_refired(
        self, billing_db: str, billing_store: Store, client: httpx.Client
    ) -> None:
        """The probe is answered by the middleware; Django replays; no charge is written."""
        with Django(billing_store) as billing, rp.record(name="agent") as run:
            out = _charge(client, billing.url)
        rows = services.rows(billing_db)
        with Django(billing_store, billing.port, follow=True) as billing:
            with rp.replay(run.id, live=LIVE, follow=True) as r:
                again = _charge(client, billing.url)
        assert again == out
        assert services.rows(billing_db) == rows
        assert r.ok, r.report()

    def test_a_change_in_django_is_reported(
        self, billing_db: str, billing_store: Store, client: httpx.Client
    ) -> None:
        """Billing's code changed: the caller's replay names billing's step; rows unchanged."""
        with Django(billing_store) as billing, rp.record(name="agent") as run:
            _charge(client, billing.url)
        rows = services.rows(billing_db)
        services.BILLING["version"] = 2
        with Django(billing_store, billing.port, follow=True) as billing:
            with rp.replay(run.id, live=LIVE, follow=True, strict=False) as r:
                with pytest.raises(httpx.HTTPStatusError):
                    _charge(client, billing.url)
        assert services.rows(billing_db) == rows
        (div,) = r.divergences
        assert div.address == "http:POST billing/charge/0 > billing: billing:insert_charge/0"

    def test_a_forged_header_is_ignored(
        self, billing_store: Store, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A malformed baggage member links nothing; Django answers as usual."""
        caplog.set_level(logging.WARNING, "replayable")
        headers = {
            "traceparent": f"00-{'a' * 32}-{'1' * 16}-01",
            "baggage": "replayable=1!..%2F..%2Fetc!record!a",
        }
        with Django(billing_store) as billing, httpx.Client() as c:
            reply = c.post(
                billing.url + "/charge", json={"user": "eve", "cents": 1}, headers=headers
            )
        assert reply.status_code == 200
        assert billing_store.list_runs() == []
        assert any("ignored" in r.getMessage() for r in caplog.records)
