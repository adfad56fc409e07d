"""ASGI and WSGI middleware: a request carrying a caller's context starts a linked run."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integrations import services
from tests.integrations.services import Uvicorn, Werkzeug

import replayable as rp
from replayable import _propagation as prop
from replayable.store import Store


@pytest.fixture
def billing_store(tmp_path: Path) -> Store:
    """Billing's own store (another service, another database)."""
    return rp.open_store(tmp_path / "billing-traces.db")


@pytest.fixture
def billing_db(tmp_path: Path) -> str:
    """Billing's business database."""
    return str(tmp_path / "billing.db")


Kind = Callable[..., AbstractContextManager[Any]]


def _asgi(db: str, store: Store, **kw: Any) -> AbstractContextManager[Any]:
    return Uvicorn(services.fastapi_billing(db, store, **kw))


def _wsgi(db: str, store: Store, **kw: Any) -> AbstractContextManager[Any]:
    return Werkzeug(services.flask_billing(db, store, **kw))


@pytest.fixture(params=[_asgi, _wsgi], ids=["fastapi-asgi", "flask-wsgi"])
def serve(request: pytest.FixtureRequest) -> Kind:
    """Starts billing as FastAPI under uvicorn or as Flask under werkzeug."""
    return request.param  # type: ignore[no-any-return]


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """The caller's instrumented client, naming the other side billing."""
    with rp.instrument(httpx.Client(), service="billing") as c:
        yield c


def _callee(store: Store) -> rp.Run:
    (run,) = [r for r in store.list_runs() if r.parent_run is None]
    return run


class TestLinkedRuns:
    """A request with context records a run in the callee linked to the calling step."""

    def test_callee_run_links_to_the_caller_step(
        self, serve: Kind, billing_db: str, billing_store: Store, client: httpx.Client
    ) -> None:
        """Billing's run names the caller's run and step, shares its trace, holds its steps."""
        with serve(billing_db, billing_store) as billing, rp.record(name="agent") as run:
            reply = client.post(billing.url + "/charge", json={"user": "bob", "cents": 500})
        assert reply.json()["cents"] == 500
        callee = _callee(billing_store)
        step = next(run.events())
        assert callee.parent == prop.Link(run.id, step.address)
        assert callee.trace_id == run.trace_id
        assert callee.metadata["service"] == "billing"
        assert [e.boundary for e in callee.events()] == [
            "billing:risk_score",
            "billing:insert_charge",
        ]
        assert rp.open_store(billing_store.url).get_run(callee.id).parent == callee.parent

    def test_the_callee_names_its_run_to_the_caller_step(
        self, serve: Kind, billing_db: str, billing_store: Store, client: httpx.Client
    ) -> None:
        """The linked run's id comes back and is kept in the step's meta, not in its response."""
        with serve(billing_db, billing_store) as billing, rp.record() as run:
            reply = client.post(billing.url + "/charge", json={"user": "bob", "cents": 1})
        step = next(run.events())
        assert step.meta["linked"] == {"run": _callee(billing_store).id, "service": "billing"}
        assert "replayable-linked" not in reply.headers
        assert "replayable-linked" not in dict(step.output["headers"])

    def test_the_link_is_sealed(
        self, serve: Kind, billing_db: str, billing_store: Store, client: httpx.Client
    ) -> None:
        """The parent link is inside what verify checks: editing it is detected."""
        from replayable.trace import verify_run

        with serve(billing_db, billing_store) as billing, rp.record():
            client.post(billing.url + "/charge", json={"user": "bob", "cents": 1})
        callee = _callee(billing_store)
        events = list(callee.events())
        assert verify_run(callee, events).ok
        callee.metadata["parent"] = {"run": "someone-else", "step": "x/0"}
        assert not verify_run(callee, events).ok

    def test_without_context_no_run_by_default(
        self, serve: Kind, billing_db: str, billing_store: Store
    ) -> None:
        """requests='with-context': a plain request records nothing."""
        with serve(billing_db, billing_store) as billing, httpx.Client() as plain:
            plain.post(billing.url + "/charge", json={"user": "bob", "cents": 1})
        assert billing_store.list_runs() == []

    def test_all_records_every_request(
        self, serve: Kind, billing_db: str, billing_store: Store
    ) -> None:
        """requests='all': a request without context gets a run of its own, unlinked."""
        with serve(billing_db, billing_store, requests="all") as billing, httpx.Client() as c:
            c.post(billing.url + "/charge", json={"user": "bob", "cents": 1})
        callee = _callee(billing_store)
        assert callee.parent is None
        assert callee.name == "billing: POST /charge"

    def test_none_records_nothing(
        self, serve: Kind, billing_db: str, billing_store: Store, client: httpx.Client
    ) -> None:
        """requests='none': even a request with context records nothing."""
        with serve(billing_db, billing_store, requests="none") as billing, rp.record():
            client.post(billing.url + "/charge", json={"user": "bob", "cents": 1})
        assert billing_store.list_runs() == []

    def test_bad_requests_option(self, billing_db: str, billing_store: Store) -> None:
        """An unknown requests= value is refused at construction."""
        with pytest.raises(ValueError, match="with-context"):
            services.fastapi_billing(
                billing_db, billing_store, requests="some"
            ).build_middleware_stack()


class TestConcurrency:
    """Runs in flight at once never cross wires."""

    def test_twenty_interleaved_runs(
        self, billing_db: str, billing_store: Store, client: httpx.Client
    ) -> None:
        """20 caller runs in threads, each callee run linked to its own caller step."""

        @rp.boundary(kind="agent", name="tests:agent")
        def agent(url: str, user: str) -> int:
            return int(client.post(url + "/charge", json={"user": user, "cents": 1}).json()["risk"])

        def one(i: int, url: str) -> tuple[str, str]:
            with rp.record(name=f"agent-{i}") as run:
                agent(url, f"user{i:02d}")
            return run.id, f"user{i:02d}"

        with Uvicorn(services.fastapi_billing(billing_db, billing_store)) as billing:
            with ThreadPoolExecutor(8) as pool:
                done = list(pool.map(lambda i: one(i, billing.url), range(20)))
        callees = [r for r in billing_store.list_runs() if r.parent_run is None]
        assert len(callees) == 20
        by_parent = {r.parent.run: r for r in callees if r.parent is not None}
        for run_id, user in done:
            callee = by_parent[run_id]
            assert callee.parent is not None
            assert callee.parent.step == "tests:agent/0 > http:POST billing/charge/0"
            assert next(callee.events()).input == {"user": user}

    async def test_twenty_interleaved_tasks(self, billing_db: str, billing_store: Store) -> None:
        """20 caller runs as asyncio tasks on one loop and one client, each callee run linked to
        its own caller step."""
        async with rp.instrument(httpx.AsyncClient(), service="billing") as client:

            @rp.boundary(kind="agent", name="tests:async_agent")
            async def agent(url: str, user: str) -> int:
                await asyncio.sleep(0)  # let the other tasks interleave
                reply = await client.post(url + "/charge", json={"user": user, "cents": 1})
                return int(reply.json()["risk"])

            async def one(i: int, url: str) -> tuple[str, str]:
                async with rp.record(name=f"agent-{i}") as run:
                    await agent(url, f"user{i:02d}")
                return run.id, f"user{i:02d}"

            with Uvicorn(services.fastapi_billing(billing_db, billing_store)) as billing:
                done = await asyncio.gather(*(one(i, billing.url) for i in range(20)))
        callees = [r for r in billing_store.list_runs() if r.parent_run is None]
        assert len(callees) == 20
        by_parent = {r.parent.run: r for r in callees if r.parent is not None}
        assert sorted(by_parent) == sorted(run_id for run_id, _ in done)
        for run_id, user in done:
            callee = by_parent[run_id]
            assert callee.parent is not None
            assert callee.parent.step == "tests:async_agent/0 > http:POST billing/charge/0"
            assert next(callee.events()).input == {"user": user}


FORGED = {
    "wrong traceparent": {"traceparent": "01-xyz", "baggage": "replayable=1!r1!record!a%2F0"},
    "huge traceparent": {
        "traceparent": f"00-{'a' * 32}-{'1' * 16}-01" + "0" * 20_000,
        "baggage": "replayable=1!r1!record!a%2F0",
    },
    "zero trace id": {
        "traceparent": f"00-{'0' * 32}-{'1' * 16}-01",
        "baggage": "replayable=1!r1!record!a%2F0",
    },
    "huge baggage": {
        "traceparent": f"00-{'a' * 32}-{'1' * 16}-01",
        "baggage": "replayable=1!r1!record!" + "a" * 9000,
    },
    "two members": {
        "traceparent": f"00-{'a' * 32}-{'1' * 16}-01",
        "baggage": "replayable=1!r1!record!a,replayable=1!r2!record!b",
    },
    "path run id": {
        "traceparent": f"00-{'a' * 32}-{'1' * 16}-01",
        "baggage": "replayable=1!..%2F..%2Fetc!record!a",
    },
    "control chars in step": {
        "traceparent": f"00-{'a' * 32}-{'1' * 16}-01",
        "baggage": "replayable=1!r1!record!a%0Ab",
    },
    "step not utf-8": {
        "traceparent": f"00-{'a' * 32}-{'1' * 16}-01",
        "baggage": "replayable=1!r1!record!%FF%FE",
    },
    "unknown mode": {
        "traceparent": f"00-{'a' * 32}-{'1' * 16}-01",
        "baggage": "replayable=1!r1!steal!a",
    },
    "follow without source": {
        "traceparent": f"00-{'a' * 32}-{'1' * 16}-01",
        "baggage": "replayable=1!r1!follow!a",
    },
}


class TestForgedHeaders:
    """Malformed or forged propagation headers are ignored with a warning, never trusted."""

    @pytest.mark.parametrize("case", sorted(FORGED))
    def test_ignored_with_a_warning(
        self,
        case: str,
        serve: Kind,
        billing_db: str,
        billing_store: Store,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """The request is served, no linked run is recorded, and a warning is logged."""
        caplog.set_level(logging.WARNING, "replayable")
        with serve(billing_db, billing_store) as billing, httpx.Client() as c:
            reply = c.post(
                billing.url + "/charge", json={"user": "eve", "cents": 1}, headers=FORGED[case]
            )
        assert reply.status_code == 200
        assert "replayable-follow" not in reply.headers
        assert [r for r in billing_store.list_runs() if r.parent is not None] == []
        assert any("ignored" in r.getMessage() for r in caplog.records)

    def test_follow_to_a_production_service_is_refused(
        self,
        serve: Kind,
        billing_db: str,
        billing_store: Store,
        client: httpx.Client,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A follow request to a middleware without follow=True is refused (409), never run."""
        caplog.set_level(logging.WARNING, "replayable")
        with serve(billing_db, billing_store) as billing, rp.record() as run:
            client.post(billing.url + "/charge", json={"user": "bob", "cents": 5})
        step = next(run.events()).address
        rows = services.rows(billing_db)
        headers = {
            "traceparent": f"00-{'a' * 32}-{'1' * 16}-01",
            "baggage": prop.baggage_entry("r2", "x/0", "follow", prop.Link(run.id, step)),
        }
        with serve(billing_db, billing_store) as billing, httpx.Client() as c:
            reply = c.post(
                billing.url + "/charge", json={"user": "eve", "cents": 9}, headers=headers
            )
        assert reply.status_code == 409
        assert "follow=True" in reply.text
        assert "replayable-follow" not in reply.headers
        assert services.rows(billing_db) == rows  # eve's charge never ran
        assert any("follow=True" in r.getMessage() for r in caplog.records)

    def test_follow_naming_an_unknown_run_is_refused(
        self,
        billing_db: str,
        billing_store: Store,
        caplog: pytest.LogCaptureFixture,
    ) -> None:
        """A follow request naming no linked run of this store replays nothing and runs nothing."""
        caplog.set_level(logging.WARNING, "replayable")
        headers = {
            "traceparent": f"00-{'a' * 32}-{'1' * 16}-01",
            "baggage": prop.baggage_entry("r2", "x/0", "follow", prop.Link("nosuchrun", "y/0")),
        }
        app = services.fastapi_billing(billing_db, billing_store, follow=True, requests="none")
        with Uvicorn(app) as billing, httpx.Client() as c:
            reply = c.post(
                billing.url + "/charge", json={"user": "eve", "cents": 9}, headers=headers
            )
            probe = c.options(
                billing.url + "/charge", headers={**headers, "replayable-probe": "follow"}
            )
        assert reply.status_code == probe.status_code == 409
        assert "replayable-follow" not in reply.headers
        assert "replayable-linked" not in probe.headers
        assert services.rows(billing_db) == []
        assert any("no run of this store" in r.getMessage() for r in caplog.records)
