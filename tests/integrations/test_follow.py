"""Replay across services: the remote call served, or followed into the callee's own replay."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from tests.integrations import services
from tests.integrations.services import Sentinel, Uvicorn, Werkzeug

import replayable as rp
from replayable.store import Store


@pytest.fixture
def billing_store(tmp_path: Path) -> Store:
    """Billing's own store."""
    return rp.open_store(tmp_path / "billing-traces.db")


@pytest.fixture
def billing_db(tmp_path: Path) -> str:
    """Billing's business database."""
    return str(tmp_path / "billing.db")


@pytest.fixture(autouse=True)
def _billing_version() -> Iterator[None]:
    services.BILLING["version"] = 1
    yield
    services.BILLING["version"] = 1


@pytest.fixture
def client() -> Iterator[httpx.Client]:
    """The caller's instrumented client."""
    with rp.instrument(httpx.Client(), service="billing") as c:
        yield c


def _agent(client: httpx.Client, url: str) -> dict[str, Any]:
    reply = client.post(url + "/charge", json={"user": "bob", "cents": 500})
    reply.raise_for_status()
    return dict(reply.json())


LIVE = ["http:POST billing/charge"]


@pytest.mark.parametrize("server", ["asgi", "wsgi"])
class TestFollow:
    """A caller's replay follows its remote call into the callee, which replays its own run."""

    def _serve(self, server: str, db: str, store: Store, port: int | None, **kw: Any) -> Any:
        if server == "asgi":
            return Uvicorn(services.fastapi_billing(db, store, **kw), port)
        return Werkzeug(services.flask_billing(db, store, **kw), port)

    def _record(
        self, server: str, db: str, store: Store, client: httpx.Client
    ) -> tuple[rp.Run, int, dict[str, Any]]:
        with self._serve(server, db, store, None) as billing, rp.record(name="agent") as run:
            out = _agent(client, billing.url)
        return run, billing.port, out

    def test_replaying_the_caller_alone_contacts_nobody(
        self, server: str, billing_db: str, billing_store: Store, client: httpx.Client
    ) -> None:
        """Billing down: the replay serves the remote call and no connection reaches its port."""
        run, port, out = self._record(server, billing_db, billing_store, client)
        with Sentinel(port) as sentinel, rp.replay(run.id) as r:
            again = _agent(client, f"http://127.0.0.1:{port}")
            assert sentinel.connections() == 0
        assert again == out
        assert r.ok

    def test_follow_replays_the_callee_with_nothing_refired(
        self, server: str, billing_db: str, billing_store: Store, client: httpx.Client
    ) -> None:
        """follow=True: billing replays its linked run; its rows are unchanged; no divergence."""
        run, port, out = self._record(server, billing_db, billing_store, client)
        rows = services.rows(billing_db)
        with self._serve(server, billing_db, billing_store, port, follow=True) as billing:
            with rp.replay(run.id, live=LIVE, follow=True) as r:
                again = _agent(client, billing.url)
        assert again == out
        assert services.rows(billing_db) == rows
        assert r.ok, r.report()
        replays = [x for x in billing_store.list_runs() if x.parent_run is not None]
        assert len(replays) == 1
        assert replays[0].parent is not None
        assert replays[0].parent.run == r.run.id

    def test_a_change_in_the_callee_is_reported_in_the_caller(
        self, server: str, billing_db: str, billing_store: Store, client: httpx.Client
    ) -> None:
        """Billing's code changed: the caller's replay names billing and its step address."""
        run, port, _ = self._record(server, billing_db, billing_store, client)
        rows = services.rows(billing_db)
        services.BILLING["version"] = 2
        with self._serve(server, billing_db, billing_store, port, follow=True) as billing:
            with rp.replay(run.id, live=LIVE, follow=True, strict=False) as r:
                with pytest.raises(httpx.HTTPStatusError):
                    _agent(client, billing.url)
        assert services.rows(billing_db) == rows
        (div,) = r.divergences
        assert div.address == ("http:POST billing/charge/0 > billing: billing:insert_charge/0")
        assert div.boundary == "billing:insert_charge"
        assert "in service billing" in (div.detail or "")

    def test_a_strict_replay_raises_the_callee_divergence(
        self, server: str, billing_db: str, billing_store: Store, client: httpx.Client
    ) -> None:
        """strict=True: the callee's divergence is the replay's first, raised at exit."""
        run, port, _ = self._record(server, billing_db, billing_store, client)
        services.BILLING["version"] = 2
        with self._serve(server, billing_db, billing_store, port, follow=True) as billing:
            with pytest.raises(rp.Divergence, match="billing: billing:insert_charge/0"):
                with rp.replay(run.id, live=LIVE, follow=True):
                    _agent(client, billing.url)


class TestFollowHeaderTrust:
    """The caller reads a callee's follow report only when it asked for one."""

    def test_an_unasked_report_is_ignored(
        self, client: httpx.Client, caplog: pytest.LogCaptureFixture
    ) -> None:
        """A service answering with a forged follow header adds no divergence to a record."""
        import base64
        import logging

        import orjson
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        forged = base64.urlsafe_b64encode(
            orjson.dumps({"run": "x", "divergences": [{"reason": "changed", "address": "a"}]})
        ).decode()

        async def liar(request: Any) -> JSONResponse:
            return JSONResponse({"ok": 1}, headers={"replayable-follow": forged})

        caplog.set_level(logging.WARNING, "replayable")
        with Uvicorn(Starlette(routes=[Route("/charge", liar, methods=["POST"])])) as srv:
            with rp.record() as run:
                client.post(srv.url + "/charge", json={})
            with rp.replay(run.id, live=["http:POST billing/charge"], allow_side_effects=True) as r:
                reply = client.post(srv.url + "/charge", json={})
        assert r.ok
        assert "replayable-follow" not in reply.headers
        assert "replayable-follow" not in next(run.events()).output["headers"]
        assert any("did not ask" in m.getMessage() for m in caplog.records)


def _billing(db: str, store: Store, **kw: Any) -> services.Counting:
    return services.Counting(services.fastapi_billing(db, store, **kw))


class TestFollowSafety:
    """follow=True sends a side-effecting remote call live only where the callee replays it."""

    def _record(self, db: str, store: Store, client: httpx.Client, **kw: Any) -> tuple[Any, int]:
        with Uvicorn(_billing(db, store, **kw)) as billing, rp.record(name="agent") as run:
            _agent(client, billing.url)
        return run, billing.port

    @pytest.mark.parametrize("live", [LIVE, ["http:POST billing/charge#1"]])
    def test_a_callee_without_middleware_is_never_contacted(
        self, live: list[str], billing_db: str, billing_store: Store, client: httpx.Client
    ) -> None:
        """Recorded against a service that records nothing: refused before any byte is sent."""
        run, port = self._record(billing_db, billing_store, client, middleware=False)
        rows = services.rows(billing_db)
        app = _billing(billing_db, billing_store, follow=True)
        with Uvicorn(app, port):
            with pytest.raises(rp.SideEffectRefused) as refused:
                rp.replay(run.id, live=live, follow=True)
        assert app.seen == []
        assert services.rows(billing_db) == rows
        message = str(refused.value)
        assert "http:POST billing/charge at http:POST billing/charge/0" in message
        assert "leave it out of live=" in message
        assert "allow_side_effects=True" in message

    def test_with_middleware_it_probes_then_follows(
        self, billing_db: str, billing_store: Store, client: httpx.Client
    ) -> None:
        """The callee acknowledges the probe, then replays: billing's rows stay as they were."""
        run, port = self._record(billing_db, billing_store, client)
        step = next(run.events())
        assert step.meta["linked"]["service"] == "billing"
        rows = services.rows(billing_db)
        app = _billing(billing_db, billing_store, follow=True)
        with Uvicorn(app, port) as billing, rp.replay(run.id, live=LIVE, follow=True) as r:
            _agent(client, billing.url)
        assert app.seen == ["OPTIONS", "POST"]
        assert services.rows(billing_db) == rows
        assert r.ok, r.report()
        (replayed,) = [e for e in r.run.events() if e.kind == "remote"]
        assert replayed.meta["linked"]["run"] != step.meta["linked"]["run"]  # billing's replay

    def test_a_callee_that_lost_its_middleware_is_refused_after_the_probe(
        self, billing_db: str, billing_store: Store, client: httpx.Client
    ) -> None:
        """The instance answering now records nothing: only the bodiless probe reaches it."""
        run, port = self._record(billing_db, billing_store, client)
        rows = services.rows(billing_db)
        app = _billing(billing_db, billing_store, middleware=False)
        with Uvicorn(app, port) as billing, rp.replay(run.id, live=LIVE, follow=True):
            with pytest.raises(rp.SideEffectRefused, match="did not acknowledge replay context"):
                _agent(client, billing.url)
        assert app.seen == ["OPTIONS"]
        assert services.rows(billing_db) == rows

    def test_a_production_instance_refuses_the_probe(
        self, billing_db: str, billing_store: Store, client: httpx.Client
    ) -> None:
        """A middleware without follow=True answers the probe 409: the charge is never sent."""
        run, port = self._record(billing_db, billing_store, client)
        rows = services.rows(billing_db)
        app = _billing(billing_db, billing_store)
        with Uvicorn(app, port) as billing, rp.replay(run.id, live=LIVE, follow=True):
            with pytest.raises(rp.SideEffectRefused, match="answered the follow probe 409"):
                _agent(client, billing.url)
        assert app.seen == ["OPTIONS"]
        assert services.rows(billing_db) == rows

    def test_a_call_with_no_recorded_counterpart_is_refused(
        self, billing_db: str, billing_store: Store, client: httpx.Client
    ) -> None:
        """A second charge the recording never saw has nothing to replay: refused unsent."""
        run, port = self._record(billing_db, billing_store, client)
        rows = services.rows(billing_db)
        app = _billing(billing_db, billing_store, follow=True)
        with Uvicorn(app, port) as billing:
            with rp.replay(run.id, live=LIVE, follow=True, strict=False) as r:
                _agent(client, billing.url)
                with pytest.raises(rp.SideEffectRefused, match="no recorded counterpart"):
                    _agent(client, billing.url)
        assert app.seen == ["OPTIONS", "POST"]
        assert services.rows(billing_db) == rows
        assert [d.reason for d in r.divergences] == ["unexpected"]

    def test_allow_side_effects_is_the_way_to_act_again(
        self, billing_db: str, billing_store: Store, client: httpx.Client
    ) -> None:
        """allow_side_effects=True sends it to a plain service, which charges again."""
        run, port = self._record(billing_db, billing_store, client, middleware=False)
        before = len(services.rows(billing_db))
        app = _billing(billing_db, billing_store, middleware=False)
        with Uvicorn(app, port) as billing:
            with rp.replay(run.id, live=LIVE, follow=True, allow_side_effects=True):
                _agent(client, billing.url)
        assert app.seen == ["POST"]
        assert len(services.rows(billing_db)) == before + 1


FORGED_LINKED = {
    "path": "../../etc/passwd",
    "too long": "a" * 200,
    "space": "a b",
    "empty": "",
    "two values": "r1, r2",
}


class TestForgedLinkedAnswers:
    """A callee's replayable-linked answer is untrusted: malformed ones are never kept."""

    @pytest.mark.parametrize("case", sorted(FORGED_LINKED))
    def test_a_malformed_answer_is_ignored(
        self, case: str, client: httpx.Client, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The step keeps no link, so a follow replay refuses to send it live."""
        import logging

        from starlette.applications import Starlette
        from starlette.responses import JSONResponse
        from starlette.routing import Route

        async def liar(request: Any) -> JSONResponse:
            return JSONResponse({"ok": 1}, headers={"replayable-linked": FORGED_LINKED[case]})

        caplog.set_level(logging.WARNING, "replayable")
        with Uvicorn(Starlette(routes=[Route("/charge", liar, methods=["POST"])])) as srv:
            with rp.record() as run:
                client.post(srv.url + "/charge", json={})
        assert "linked" not in next(run.events()).meta
        assert any("malformed replayable-linked" in r.getMessage() for r in caplog.records)
        with pytest.raises(rp.SideEffectRefused, match="no run linked"):
            rp.replay(run.id, live=LIVE, follow=True)

    def test_a_probe_answer_naming_another_run_is_refused(self, client: httpx.Client) -> None:
        """A stale or lying callee that names a different run than recorded gets no request."""
        from starlette.applications import Starlette
        from starlette.responses import JSONResponse, Response
        from starlette.routing import Route

        posts: list[int] = []

        async def charge(request: Any) -> Response:
            if request.method == "OPTIONS":
                return Response(status_code=204, headers={"replayable-linked": "someone-else"})
            posts.append(1)
            return JSONResponse({"ok": 1}, headers={"replayable-linked": "run-1"})

        app = Starlette(routes=[Route("/charge", charge, methods=["POST", "OPTIONS"])])
        with Uvicorn(app) as srv:
            with rp.record() as run:
                client.post(srv.url + "/charge", json={})
            with rp.replay(run.id, live=LIVE, follow=True):
                with pytest.raises(rp.SideEffectRefused, match="naming run someone-else"):
                    client.post(srv.url + "/charge", json={})
        assert posts == [1]
