"""`check(follow=True)`: a run another service recorded for a step counts as part of its caller."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integrations import services
from tests.integrations.services import Uvicorn

import replayable as rp
from replayable.integrations.web import ASGIMiddleware


@rp.boundary(kind="agent", name="tests.check_linked:billing_handler")
def billing_handler(db: str, user: str, cents: int) -> dict[str, Any]:
    """Billing's handler as a root agent call, so a check can replay billing's run."""
    return services.charge(db, user, cents)


@rp.boundary(kind="agent", name="tests.check_linked:support")
def support(url: str, user: str) -> int:
    """The caller: charges through billing."""
    with rp.instrument(httpx.Client(), service="billing") as client:
        return int(client.post(url + "/charge", json={"user": user, "cents": 5}).json()["cents"])


@pytest.fixture(autouse=True)
def _billing_version() -> Iterator[None]:
    services.BILLING["version"] = 1
    yield
    services.BILLING["version"] = 1


def _record(tmp_path: Path) -> rp.Store:
    from fastapi import FastAPI

    store = rp.open_store(tmp_path / "shared.db")
    db = str(tmp_path / "billing.db")
    app = FastAPI()

    @app.post("/charge")
    def charge(body: dict[str, Any]) -> dict[str, Any]:
        return billing_handler(db, body["user"], body["cents"])

    app.add_middleware(ASGIMiddleware, store=store, service="billing")
    with Uvicorn(app) as billing, rp.record(store, name="support"):
        support(billing.url, "bob")
    return store


class TestCheckFollow:
    """Linked runs fold into their callers."""

    def test_without_follow_the_linked_run_is_its_own(self, tmp_path: Path) -> None:
        """Both runs are checked and listed."""
        report = rp.check(_record(tmp_path), save=False)
        assert len(report.outcomes) == 2

    def test_with_follow_the_callers_outcome_carries_billings(self, tmp_path: Path) -> None:
        """Billing's code changed: only the caller is listed, diverged, naming billing."""
        store = _record(tmp_path)
        services.BILLING["version"] = 2
        report = rp.check(store, save=False, follow=True)
        (only,) = report.outcomes
        assert only.name == "support"
        assert only.outcome == "diverged"
        assert only.detail.startswith("in service billing (run ")

    def test_with_follow_unchanged_stays_unchanged(self, tmp_path: Path) -> None:
        """Nothing changed: one run, unchanged."""
        report = rp.check(_record(tmp_path), save=False, follow=True)
        assert [o.outcome for o in report.outcomes] == ["unchanged"]


def _record_apart(tmp_path: Path) -> tuple[rp.Store, rp.Store]:
    """The caller and billing record into stores of their own (two hosts)."""
    from fastapi import FastAPI

    caller, billing_store = (
        rp.open_store(tmp_path / "agent.db"),
        rp.open_store(tmp_path / "billing-traces.db"),
    )
    db = str(tmp_path / "billing.db")
    app = FastAPI()

    @app.post("/charge")
    def charge(body: dict[str, Any]) -> dict[str, Any]:
        return billing_handler(db, body["user"], body["cents"])

    app.add_middleware(ASGIMiddleware, store=billing_store, service="billing")
    with Uvicorn(app) as billing, rp.record(caller, name="support"):
        support(billing.url, "bob")
    rp.flush()
    return caller, billing_store


class TestCheckFollowAcrossStores:
    """A linked run in another service's store is found and checked with its caller."""

    def test_a_change_in_billings_store_reaches_the_caller(self, tmp_path: Path) -> None:
        """Billing's code changed: the caller, checked from its own store, is diverged."""
        caller, billing_store = _record_apart(tmp_path)
        services.BILLING["version"] = 2
        report = rp.check(caller, save=False, follow=True, linked=[billing_store])
        (only,) = report.outcomes
        assert (only.name, only.outcome) == ("support", "diverged")
        assert only.detail.startswith("in service billing (run ")

    def test_without_the_store_billing_is_not_seen(self, tmp_path: Path) -> None:
        """Only the stores named are searched: the caller alone is unchanged."""
        caller, _ = _record_apart(tmp_path)
        services.BILLING["version"] = 2
        report = rp.check(caller, save=False, follow=True)
        assert [o.outcome for o in report.outcomes] == ["unchanged"]

    def test_unchanged_across_stores(self, tmp_path: Path) -> None:
        """Nothing changed: one outcome, unchanged (billing's run folded, not listed)."""
        caller, billing_store = _record_apart(tmp_path)
        report = rp.check(caller, save=False, follow=True, linked=[billing_store])
        assert [(o.name, o.outcome) for o in report.outcomes] == [("support", "unchanged")]

    def test_linked_without_follow_is_refused(self, tmp_path: Path) -> None:
        """linked= only means something with follow=True."""
        caller, billing_store = _record_apart(tmp_path)
        with pytest.raises(ValueError, match="follow=True"):
            rp.check(caller, save=False, linked=[billing_store])

    def test_the_cli_takes_repeated_store(self, tmp_path: Path) -> None:
        """check --follow --store A --store B: diverged (exit 1), naming billing."""
        import orjson
        from click.testing import CliRunner

        from replayable.cli import main

        caller, billing_store = _record_apart(tmp_path)
        services.BILLING["version"] = 2
        args = ["check", "--import", "json", "--store", caller.url, "--store", billing_store.url]
        result = CliRunner().invoke(main, [*args, "--follow", "--no-save", "--json"])
        assert result.exit_code == 1, result.output
        (only,) = orjson.loads(result.stdout)["runs"]
        assert only["outcome"] == "diverged"
        assert "in service billing" in only["detail"]
        refused = CliRunner().invoke(main, [*args, "--no-save"])
        assert refused.exit_code == 2
        assert "add --follow" in refused.output
