"""MCP over streamable HTTP carries the run's context in _meta; the tool server links its run."""

from __future__ import annotations

import logging
from pathlib import Path

import mcp
import pytest
from tests.integrations import services
from tests.integrations.services import Uvicorn

import replayable as rp
from replayable import _propagation as prop
from replayable.store import Store


@pytest.fixture
def tools_store(tmp_path: Path) -> Store:
    """The tool server's own store."""
    return rp.open_store(tmp_path / "tools-traces.db")


async def _ask(url: str) -> str:
    async with rp.instrument(mcp.Client(url + "/mcp")) as client:
        result = await client.call_tool("check_stock", {"item": "mug"})
    return str(result.content[0].text)


class TestMcpLinked:
    """A tool call made inside a run starts a linked run in the MCP server."""

    async def test_tool_server_run_links_to_the_tool_step(self, tools_store: Store) -> None:
        """The server's run names the caller's run and tool step; its lookup records into it."""
        with Uvicorn(services.mcp_tools(tools_store), lifespan="on") as tools:
            async with rp.record(name="agent") as run:
                answer = await _ask(tools.url)
        assert answer == "mug: 9 in stock"
        step = next(e for e in run.events() if e.boundary == "mcp:tools/call.check_stock")
        (callee,) = [r for r in tools_store.list_runs() if r.parent is not None]
        assert callee.parent == prop.Link(run.id, step.address)
        assert callee.trace_id == run.trace_id
        assert [e.boundary for e in callee.events()] == ["tools:stock_level"]

    async def test_follow_replays_the_tool_servers_run(self, tools_store: Store) -> None:
        """A followed tool call replays the server's linked run: its lookup is served."""
        with Uvicorn(services.mcp_tools(tools_store), lifespan="on") as tools:
            async with rp.record(name="agent") as run:
                await _ask(tools.url)
            port = tools.port
        with Uvicorn(services.mcp_tools(tools_store, follow=True), port, lifespan="on") as tools:
            async with rp.replay(run.id, live=["mcp:tools/call.check_stock"], follow=True) as r:
                assert await _ask(tools.url) == "mug: 9 in stock"
        assert r.ok, r.report()
        (replayed,) = [x for x in tools_store.list_runs() if x.parent_run is not None]
        assert replayed.parent is not None
        assert replayed.parent.run == r.run.id
        (ev,) = replayed.events()
        assert ev.meta.get("served")

    async def test_a_change_in_the_tool_server_is_reported_in_the_caller(
        self, tools_store: Store
    ) -> None:
        """The tool server's code changed: the caller's replay names the server's step."""
        with Uvicorn(services.mcp_tools(tools_store), lifespan="on") as tools:
            async with rp.record(name="agent") as run:
                await _ask(tools.url)
            port = tools.port
        services.TOOLS["version"] = 2
        try:
            app = services.mcp_tools(tools_store, follow=True)
            with Uvicorn(app, port, lifespan="on") as tools:
                async with rp.replay(
                    run.id, live=["mcp:tools/call.check_stock"], follow=True, strict=False
                ) as r:
                    await _ask(tools.url)
        finally:
            services.TOOLS["version"] = 1
        (div,) = r.divergences
        assert div.address == "mcp:tools/call.check_stock/0 > mcp: tools:stock_level/0"
        assert div.boundary == "tools:stock_level"
        assert "in service mcp" in (div.detail or "")

    async def test_a_failing_tool_still_links_its_run(self, tools_store: Store) -> None:
        """A tool that raised answers the SDK's error result, and the caller's step still
        keeps the tool server's run (which recorded the failure)."""
        services.TOOLS["version"] = 3
        try:
            with Uvicorn(services.mcp_tools(tools_store), lifespan="on") as tools:
                async with rp.record(name="agent") as run:
                    answer = await _ask(tools.url)
        finally:
            services.TOOLS["version"] = 1
        assert answer == "Error executing tool check_stock"  # the SDK's own wording
        step = next(e for e in run.events() if e.boundary == "mcp:tools/call.check_stock")
        assert step.output["isError"] is True
        (callee,) = [r for r in tools_store.list_runs() if r.parent is not None]
        assert step.meta["linked"] == {"run": callee.id, "service": "mcp"}
        assert callee.status == "error"
        assert [e.boundary for e in callee.events()] == ["tools:stock_level"]

    async def test_a_plain_tool_server_is_never_followed(self, tools_store: Store) -> None:
        """Recorded against an MCP server without replayable: refused, the tool never called."""
        with Uvicorn(services.mcp_tools(tools_store, linked=False), lifespan="on") as tools:
            async with rp.record(name="agent") as run:
                await _ask(tools.url)
        step = next(e for e in run.events() if e.boundary == "mcp:tools/call.check_stock")
        assert "linked" not in step.meta
        with pytest.raises(rp.SideEffectRefused, match="no run linked to this step"):
            rp.replay(run.id, live=["mcp:tools/call.check_stock"], follow=True)

    async def test_a_server_not_following_refuses_the_probe(self, tools_store: Store) -> None:
        """A replayable server without follow=True does not acknowledge the probe: the tool
        call is refused unsent, and sent anyway by hand it is refused by the server."""
        with Uvicorn(services.mcp_tools(tools_store), lifespan="on") as tools:
            async with rp.record(name="agent") as run:
                await _ask(tools.url)
            port = tools.port
        step = next(e for e in run.events() if e.boundary == "mcp:tools/call.check_stock")
        services.CALLS.clear()
        with Uvicorn(services.mcp_tools(tools_store), port, lifespan="on") as tools:
            async with rp.replay(
                run.id, live=["mcp:tools/call.check_stock"], follow=True, strict=False
            ) as r:
                with pytest.raises(ExceptionGroup) as refused:  # through the client's tasks
                    await _ask(tools.url)
                assert refused.group_contains(rp.SideEffectRefused, match="did not acknowledge")
            baggage = prop.baggage_entry(r.run.id, "x/0", "follow", prop.Link(run.id, step.address))
            meta = {"traceparent": TRACEPARENT, "baggage": baggage}
            async with mcp.Client(tools.url + "/mcp") as client:
                result = await client.call_tool("check_stock", {"item": "mug"}, meta=meta)
        assert result.is_error
        assert "follow=True" in str(result.content[0].text)
        assert services.CALLS == []

    async def test_a_server_that_lost_replayable_is_refused_after_the_probe(
        self, tools_store: Store
    ) -> None:
        """Recorded through a replayable server, replayed against a plain one: the probe gets a
        plain listing, the tool call is refused unsent."""
        with Uvicorn(services.mcp_tools(tools_store), lifespan="on") as tools:
            async with rp.record(name="agent") as run:
                await _ask(tools.url)
            port = tools.port
        services.CALLS.clear()
        app = services.mcp_tools(tools_store, linked=False)
        with Uvicorn(app, port, lifespan="on") as tools:
            async with rp.replay(run.id, live=["mcp:tools/call.check_stock"], follow=True):
                with pytest.raises(ExceptionGroup) as refused:  # through the client's tasks
                    await _ask(tools.url)
                assert refused.group_contains(
                    rp.SideEffectRefused, match="without replayable-linked"
                )
        assert services.CALLS == []

    async def test_a_bare_session_probes_then_follows(self, tools_store: Store) -> None:
        """An instrumented ClientSession probes on itself, past its recorded listing: the
        server acknowledges, replays its run; the tool runs only in the server's replay."""
        from mcp import ClientSession
        from mcp.client.streamable_http import streamable_http_client

        async def ask(url: str) -> str:
            async with streamable_http_client(url + "/mcp") as (read, write, *_):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    rp.instrument(session)
                    result = await session.call_tool("check_stock", {"item": "mug"})
            return str(result.content[0].text)

        with Uvicorn(services.mcp_tools(tools_store), lifespan="on") as tools:
            async with rp.record(name="agent") as run:
                assert await ask(tools.url) == "mug: 9 in stock"
            port = tools.port
        step = next(e for e in run.events() if e.boundary == "mcp:tools/call.check_stock")
        assert "linked" in step.meta
        services.CALLS.clear()
        app = services.mcp_tools(tools_store, follow=True)
        with Uvicorn(app, port, lifespan="on") as tools:
            async with rp.replay(run.id, live=["mcp:tools/call.check_stock"], follow=True) as r:
                assert await ask(tools.url) == "mug: 9 in stock"
        assert r.ok, r.report()
        assert [e.boundary for e in r.run.events()] == [e.boundary for e in run.events()]
        (replayed,) = [x for x in tools_store.list_runs() if x.parent_run is not None]
        assert replayed.parent is not None
        assert replayed.parent.run == r.run.id

    async def test_a_probe_answer_runs_no_tool(self, tools_store: Store) -> None:
        """The probe, sent by hand, is answered naming the linked run, and no tool runs."""
        with Uvicorn(services.mcp_tools(tools_store), lifespan="on") as tools:
            async with rp.record(name="agent") as run:
                await _ask(tools.url)
            port = tools.port
        step = next(e for e in run.events() if e.boundary == "mcp:tools/call.check_stock")
        services.CALLS.clear()
        baggage = prop.baggage_entry("r2", "x/0", "follow", prop.Link(run.id, step.address))
        meta = {"traceparent": TRACEPARENT, "baggage": baggage, "replayable-probe": "follow"}
        app = services.mcp_tools(tools_store, follow=True)
        with Uvicorn(app, port, lifespan="on") as tools:
            async with mcp.Client(tools.url + "/mcp") as client:
                listing = await client.list_tools(meta=meta, cache_mode="bypass")
        assert (listing.meta or {}).get("replayable-linked") == step.meta["linked"]["run"]
        assert [t.name for t in listing.tools] == ["check_stock"]
        assert services.CALLS == []


TRACEPARENT = f"00-{'a' * 32}-{'1' * 16}-01"
FORGED_META = {
    "wrong format": {"traceparent": "01-xyz", "baggage": "replayable=1!r1!record!a%2F0"},
    "huge traceparent": {
        "traceparent": TRACEPARENT + "0" * 20_000,
        "baggage": "replayable=1!r1!record!a%2F0",
    },
    "huge baggage": {
        "traceparent": TRACEPARENT,
        "baggage": "replayable=1!r1!record!" + "a" * 9000,
    },
    "path run id": {"traceparent": TRACEPARENT, "baggage": "replayable=1!..%2F..%2Fx!record!a"},
}


class TestMcpForgedMeta:
    """Context in a tool call's _meta comes from the network: it is never trusted."""

    @pytest.mark.parametrize("case", sorted(FORGED_META))
    async def test_malformed_context_links_nothing(
        self, case: str, tools_store: Store, caplog: pytest.LogCaptureFixture
    ) -> None:
        """The tool runs as for any caller, no linked run is recorded, a warning is logged."""
        caplog.set_level(logging.WARNING, "replayable")
        services.CALLS.clear()
        with Uvicorn(services.mcp_tools(tools_store), lifespan="on") as tools:
            async with mcp.Client(tools.url + "/mcp") as client:
                result = await client.call_tool(
                    "check_stock", {"item": "mug"}, meta=FORGED_META[case]
                )
        assert not result.is_error
        assert services.CALLS == ["mug"]
        assert "replayable-linked" not in (result.meta or {})
        assert tools_store.list_runs() == []
        assert any("ignored" in r.getMessage() for r in caplog.records)

    async def test_a_follow_naming_an_unknown_run_is_refused(
        self, tools_store: Store, caplog: pytest.LogCaptureFixture
    ) -> None:
        """Even a server started with follow=True replays nothing and runs nothing for a run
        its store does not link to that step."""
        caplog.set_level(logging.WARNING, "replayable")
        services.CALLS.clear()
        meta = {
            "traceparent": TRACEPARENT,
            "baggage": prop.baggage_entry("r2", "x/0", "follow", prop.Link("nosuchrun", "y/0")),
        }
        app = services.mcp_tools(tools_store, follow=True)
        with Uvicorn(app, lifespan="on") as tools:
            async with mcp.Client(tools.url + "/mcp") as client:
                result = await client.call_tool("check_stock", {"item": "mug"}, meta=meta)
        assert result.is_error
        assert services.CALLS == []
        assert "replayable-follow" not in (result.meta or {})
        assert tools_store.list_runs() == []
        assert any("no run of this store" in r.getMessage() for r in caplog.records)
