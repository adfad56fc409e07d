"""MCP: an instrumented ``mcp.Client`` against a real stdio server subprocess; the replay never
spawns it."""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any

import pytest
from tests.integrations.orders import Orders

import replayable as rp
from replayable.errors import Divergence, SideEffectRefused, UnsupportedClient

SERVER = Path(__file__).with_name("mcp_shop_server.py")


class Shop:
    """Where the stdio server writes: its start marker and its orders database."""

    def __init__(self, tmp_path: Path) -> None:
        self.marker = tmp_path / "started.txt"
        self.marker.write_text("")
        self.orders = Orders(tmp_path / "shop.db")

    def params(self) -> Any:
        from mcp import StdioServerParameters

        env = {**os.environ, "SHOP_MARKER": str(self.marker), "SHOP_DB": str(self.orders.path)}
        return StdioServerParameters(command=sys.executable, args=[str(SERVER)], env=env)

    @property
    def starts(self) -> int:
        return len(self.marker.read_text().split())


@pytest.fixture
def shop(tmp_path: Path) -> Shop:
    return Shop(tmp_path)


async def session(shop: Shop, quantity: int = 2, **options: Any) -> dict[str, Any]:
    """The documented shape: an instrumented Client, entered inside the record or replay."""
    from mcp import Client

    async with rp.instrument(Client(shop.params()), **options) as client:
        tools = await client.list_tools()
        page = await client.read_resource("catalog://mug")
        prompt = await client.get_prompt("greet", {"name": "Ana"})
        order = await client.call_tool("place_order", {"item": "mug", "quantity": quantity})
        stock = await client.call_tool("check_stock", {"item": "mug"})
    return {
        "tools": [t.name for t in tools.tools],
        "page": page.contents[0].text,
        "prompt": prompt.messages[0].content.text,
        "order": order.content[0].text,
        "stock": stock,
    }


class TestClient:
    async def test_replay_serves_every_request_without_spawning_the_server(
        self, shop: Shop
    ) -> None:
        """Same results from the recording; the server never starts and no order is placed."""
        async with rp.record() as run:
            recorded = await session(shop)
        assert shop.starts == 1
        assert shop.orders.count() == 1
        names = [e.boundary for e in rp.open_store(None).iter_events(run.id)]
        assert names == [
            "mcp:tools/list",
            "mcp:resources/read",
            "mcp:prompts/get",
            "mcp:tools/call.place_order",
            "mcp:tools/call.check_stock",
        ]
        async with rp.replay(run.id) as r:
            replayed = await session(shop)
        assert replayed == recorded
        assert type(replayed["stock"]).__name__ == "CallToolResult"
        assert shop.starts == 1
        assert shop.orders.count() == 1
        assert r.ok

    async def test_a_changed_tool_argument_diverges_naming_the_tool_and_field(
        self, shop: Shop
    ) -> None:
        """place_order with another quantity: the divergence names the tool and `quantity`."""
        async with rp.record() as run:
            await session(shop)
        with pytest.raises(Divergence) as exc:
            async with rp.replay(run.id):
                await session(shop, quantity=3)
        assert exc.value.boundary == "mcp:tools/call.place_order"
        assert [c.path for c in exc.value.changes] == ["quantity"]
        assert shop.starts == 1
        assert shop.orders.count() == 1

    async def test_annotations_decide_which_tools_may_run_live(self, shop: Shop) -> None:
        """destructiveHint and unannotated tools are refused live; readOnlyHint tools are not."""
        async with rp.record() as run:
            await session(shop)
        with pytest.raises(SideEffectRefused, match="place_order"):
            rp.replay(run.id, live=["place_order"])
        async with rp.replay(run.id, live=["check_stock"]) as r:
            replayed = await session(shop)
        assert replayed["stock"].content[0].text == "mug: 9 in stock"
        assert shop.starts == 2  # the live call connected, on demand
        assert shop.orders.count() == 1  # place_order was still served
        assert r.ok

    async def test_side_effects_and_safe_override_the_annotations(self, shop: Shop) -> None:
        """side_effects=["check_stock"] refuses a read-only tool; safe=["notify"] allows one."""
        from mcp import Client

        async with rp.record() as run:
            await session(shop, side_effects=["check_stock"])
        with pytest.raises(SideEffectRefused, match="check_stock"):
            rp.replay(run.id, live=["check_stock"])

        async with rp.record() as run:
            async with rp.instrument(Client(shop.params())) as client:
                await client.list_tools()
                await client.call_tool("notify", {"message": "hi"})
        with pytest.raises(SideEffectRefused, match="notify"):
            rp.replay(run.id, live=["notify"])
        rp.instrument(Client(shop.params()), safe=["notify"])
        rp.replay(run.id, live=["notify"])  # accepted

    async def test_an_error_result_replays_as_recorded(self, shop: Shop) -> None:
        """A call the server answers with isError comes back the same."""
        from mcp import Client

        async def call() -> Any:
            async with rp.instrument(Client(shop.params())) as client:
                return await client.call_tool("no_such_tool", {"x": 1})

        async with rp.record() as run:
            recorded = await call()
        assert recorded.is_error
        async with rp.replay(run.id):
            replayed = await call()
        assert replayed == recorded
        assert shop.starts == 1


class TestClientSession:
    async def test_a_bare_session_records_and_serves(self, shop: Shop) -> None:
        """stdio_client + ClientSession: calls are served; the transport stays the user's."""
        from mcp import ClientSession, stdio_client

        async def run_session() -> str:
            async with stdio_client(shop.params()) as (read, write):
                async with ClientSession(read, write) as s:
                    await s.initialize()
                    rp.instrument(s, side_effects=["place_order"])
                    result = await s.call_tool("place_order", {"item": "cup", "quantity": 1})
            return str(result.content[0].text)

        async with rp.record() as run:
            recorded = await run_session()
        async with rp.replay(run.id) as r:
            replayed = await run_session()
        assert replayed == recorded
        assert shop.orders.count() == 1
        assert r.ok


class TestBadInput:
    def test_a_tool_both_safe_and_side_effecting_is_refused(self, shop: Shop) -> None:
        """side_effects and safe must not overlap."""
        from mcp import Client

        with pytest.raises(UnsupportedClient, match="both"):
            rp.instrument(Client(shop.params()), side_effects=["x"], safe=["x"])

    def test_instrumenting_twice_is_refused(self, shop: Shop) -> None:
        """A second instrument() would wrap the wrappers: it is an error."""
        from mcp import Client

        client = rp.instrument(Client(shop.params()))
        with pytest.raises(UnsupportedClient, match="already"):
            rp.instrument(client)
