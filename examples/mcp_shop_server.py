"""The MCP server of ``examples/mcp_agent.py``: a shop over stdio, orders in SQLite ($SHOP_DB).

If ``$SHOP_MARKER`` names a file, each start appends its process id there (the tests use it to
show that a replay never starts this server).
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

if os.environ.get("SHOP_MARKER"):
    with Path(os.environ["SHOP_MARKER"]).open("a") as marker:
        marker.write(f"{os.getpid()}\n")

shop = MCPServer("shop")


@shop.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True))
def place_order(item: str, quantity: int) -> str:
    """Order `quantity` of `item`."""
    with sqlite3.connect(os.environ.get("SHOP_DB", "orders.db")) as db:
        db.execute("CREATE TABLE IF NOT EXISTS orders (item TEXT, quantity INTEGER)")
        db.execute("INSERT INTO orders VALUES (?, ?)", (item, quantity))
    return f"ordered {quantity} x {item}"


@shop.tool(annotations=ToolAnnotations(readOnlyHint=True))
def check_stock(item: str) -> str:
    """How many of `item` are in stock."""
    return f"{item}: 12 in stock"


if __name__ == "__main__":
    shop.run("stdio")
