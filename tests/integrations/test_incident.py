"""One incident across an agent service, a billing service and an MCP tool server: recorded
as linked runs, shown as one tree, replayed alone and end to end with nothing re-fired."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from tests.integrations import services
from tests.integrations.fakeserver import FakeLLMServer
from tests.integrations.services import Sentinel, Uvicorn

import replayable as rp
from replayable._linked import linked_tree
from replayable.store import Store

TICKET = {"text": "refund my mug", "user": "bob", "cents": 500, "item": "mug"}
LIVE = ["http:POST billing/charge"]


@dataclass
class Incident:
    """The recorded incident and where everything lives."""

    run: rp.Run
    answer: dict[str, object]
    agent: Store
    billing: Store
    tools: Store
    billing_db: str
    billing_port: int
    tools_url: str
    model: FakeLLMServer


@pytest.fixture(autouse=True)
def _billing_version() -> Iterator[None]:
    services.BILLING["version"] = 1
    yield
    services.BILLING["version"] = 1


@pytest.fixture
def incident(tmp_path: Path) -> Iterator[Incident]:
    """Record one ticket through the agent service, billing and the MCP tool server, then stop
    the model server and billing (the tool server stays up, to see it is not called)."""
    stores = {n: rp.open_store(tmp_path / f"{n}-traces.db") for n in ("agent", "billing", "tools")}
    db = str(tmp_path / "billing.db")
    model = FakeLLMServer(seed=3).start()
    with (
        Uvicorn(services.mcp_tools(stores["tools"]), lifespan="on") as tools,
        Uvicorn(services.fastapi_billing(db, stores["billing"])) as billing,
    ):
        services.AGENT.update(model=model.openai_url, billing=billing.url, tools=tools.url)
        with Uvicorn(services.agent_service(stores["agent"])) as agent, httpx.Client() as web:
            answer = web.post(agent.url + "/ticket", json=TICKET, timeout=30).json()
        model.stop()
        (run,) = stores["agent"].list_runs()
        incident = Incident(
            run,
            answer,
            stores["agent"],
            stores["billing"],
            stores["tools"],
            db,
            billing.port,
            tools.url,
            model,
        )
    with Uvicorn(services.mcp_tools(stores["tools"], follow=True), tools.port, lifespan="on"):
        yield incident


class TestOneIncident:
    """The incident is one tree, replayable end to end with nothing re-fired."""

    def test_recorded_as_one_tree(self, incident: Incident) -> None:
        """Billing's and the tool server's runs hang under the agent's remote and tool steps."""
        tree = linked_tree(incident.run, [incident.agent, incident.billing, incident.tools])
        assert sorted(tree) == ["http:POST billing/charge/0", "mcp:tools/call.check_stock/0"]
        (billing,) = tree["http:POST billing/charge/0"]
        assert [e.boundary for e in billing.events] == [
            "billing:risk_score",
            "billing:insert_charge",
        ]
        (tools,) = tree["mcp:tools/call.check_stock/0"]
        assert [e.boundary for e in tools.events] == ["tools:stock_level"]
        assert billing.run.trace_id == tools.run.trace_id == incident.run.trace_id

    async def test_replaying_the_caller_alone_reaches_nobody(self, incident: Incident) -> None:
        """Model and billing down: every call is served; no connection reaches billing's port."""
        tool_runs = len(incident.tools.list_runs())
        with Sentinel(incident.billing_port) as sentinel:
            async with rp.replay(incident.run.id, store=incident.agent) as r:
                again = await services.handle_ticket(TICKET)
            assert sentinel.connections() == 0
        assert again == incident.answer
        assert r.ok, r.report()
        assert len(incident.tools.list_runs()) == tool_runs

    async def test_end_to_end_with_follow(self, incident: Incident) -> None:
        """Billing up again: it replays its own run; its rows stay; the model gets 0 requests."""
        rows = services.rows(incident.billing_db)
        model = FakeLLMServer(seed=3).start()
        services.AGENT["model"] = model.openai_url
        app = services.fastapi_billing(incident.billing_db, incident.billing, follow=True)
        try:
            with Uvicorn(app, incident.billing_port):
                async with rp.replay(
                    incident.run.id,
                    store=incident.agent,
                    live=[*LIVE, "mcp:tools/call.check_stock"],
                    follow=True,
                ) as r:
                    again = await services.handle_ticket(TICKET)
        finally:
            model.stop()
        assert again == incident.answer
        assert r.ok, r.report()
        assert services.rows(incident.billing_db) == rows
        assert model.requests == []
        followed = [x for x in incident.billing.list_runs() if x.parent_run is not None]
        assert [x.parent.run for x in followed if x.parent] == [r.run.id]

    async def test_a_billing_change_is_reported_with_its_step(self, incident: Incident) -> None:
        """Billing's code changed: the agent's replay reports billing's step address."""
        rows = services.rows(incident.billing_db)
        services.BILLING["version"] = 2
        app = services.fastapi_billing(incident.billing_db, incident.billing, follow=True)
        with Uvicorn(app, incident.billing_port):
            async with rp.replay(
                incident.run.id, store=incident.agent, live=LIVE, follow=True, strict=False
            ) as r:
                with pytest.raises(httpx.HTTPStatusError):
                    await services.handle_ticket(TICKET)
        assert services.rows(incident.billing_db) == rows
        addresses = [d.address for d in r.divergences]
        assert "http:POST billing/charge/0 > billing: billing:insert_charge/0" in addresses
        assert "billing" in r.report()
