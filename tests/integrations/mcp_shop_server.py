"""A real MCP server for the tests, run over stdio: a shop with annotated tools.

Every start appends the process id to the file named by ``$SHOP_MARKER``, so a test can tell
whether a replay spawned it; orders go to the SQLite file named by ``$SHOP_DB``.
"""

from __future__ import annotations

import os
import sqlite3
from pathlib import Path

from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

with Path(os.environ["SHOP_MARKER"]).open("a") as marker:
    marker.write(f"{os.getpid()}\n")

shop = MCPServer("shop")


@shop.tool(annotations=ToolAnnotations(readOnlyHint=False, destructiveHint=True))
def place_order(item: str, quantity: int) -> str:
    """Order `quantity` of `item`."""
    with sqlite3.connect(os.environ["SHOP_DB"]) as db:
        db.execute("CREATE TABLE IF NOT EXISTS orders (item TEXT, quantity INTEGER)")
        db.execute("INSERT INTO orders VALUES (?, ?)", (item, quantity))
    return f"ordered {quantity} x {item}"


@shop.tool(annotations=ToolAnnotations(readOnlyHint=True))
def check_stock(item: str) -> str:
    """How many of `item` are in stock (reads only)."""
    return f"{item}: {len(item) * 3} in stock"


@shop.tool()
def notify(message: str) -> str:
    """Send a message to the shop owner (unannotated: MCP assumes it may write)."""
    return f"sent: {message}"


@shop.resource("catalog://{name}")
def catalog(name: str) -> str:
    """The catalog page of one product."""
    return f"{name}: stoneware, 350 ml"


@shop.prompt()
def greet(name: str) -> str:
    """A greeting for a customer."""
    return f"Greet {name} warmly."


if __name__ == "__main__":
    shop.run("stdio")
