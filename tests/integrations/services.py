"""Services for the cross-service tests: a billing service (FastAPI or Flask, a SQLite side
effect), and loopback servers (uvicorn for ASGI, werkzeug for WSGI) started on 127.0.0.1."""

from __future__ import annotations

import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

import uvicorn

import replayable as rp
from replayable.integrations.web import ASGIMiddleware, WSGIMiddleware

BILLING = {"version": 1}
"""The billing code's version: 2 charges a fee on top (a code change the replay must show)."""


@rp.boundary(kind="tool", side_effects=True, name="billing:insert_charge")
def insert_charge(db: str, user: str, cents: int) -> int:
    """Write the charge; returns its row id."""
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS charges (user TEXT, cents INTEGER)")
        cur = conn.execute("INSERT INTO charges VALUES (?, ?)", (user, cents))
        return int(cur.lastrowid or 0)


@rp.boundary(kind="tool", name="billing:risk_score")
def risk_score(user: str) -> int:
    """A read-only lookup."""
    return len(user) * 7


def charge(db: str, user: str, cents: int, *, plain: bool = False) -> dict[str, Any]:
    """The billing handler's logic, shared by the FastAPI and the Flask service (``plain``:
    a service without replayable, its functions undecorated)."""
    score = (risk_score.__wrapped__ if plain else risk_score)(user)  # type: ignore[attr-defined]
    total = cents + (30 if BILLING["version"] == 2 else 0)
    row = (insert_charge.__wrapped__ if plain else insert_charge)(db, user, total)  # type: ignore[attr-defined]
    return {"charge_id": row, "user": user, "cents": total, "risk": score}


def rows(db: str | Path) -> list[tuple[Any, ...]]:
    """Every charge in billing's database."""
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS charges (user TEXT, cents INTEGER)")
        return list(conn.execute("SELECT rowid, user, cents FROM charges ORDER BY rowid"))


def fastapi_billing(  # type: ignore[no-untyped-def]
    db: str,
    store: Any,
    *,
    follow: bool = False,
    requests: str = "with-context",
    middleware: bool = True,
):
    """The billing service as a FastAPI app with replayable's ASGI middleware (none when
    ``middleware=False``: a service that records nothing)."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/charge")
    def post_charge(body: dict[str, Any]) -> dict[str, Any]:
        return charge(db, str(body["user"]), int(body["cents"]), plain=not middleware)

    @app.get("/health")
    def health() -> dict[str, str]:
        return {"ok": "yes"}

    if middleware:
        app.add_middleware(
            ASGIMiddleware, store=store, service="billing", follow=follow, requests=requests
        )
    return app


class Counting:
    """An ASGI app wrapped to count the HTTP requests that reach it, by method."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.seen: list[str] = []

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope.get("type") == "http":
            self.seen.append(str(scope["method"]))
        await self.app(scope, receive, send)


def flask_billing(db: str, store: Any, *, follow: bool = False, requests: str = "with-context"):  # type: ignore[no-untyped-def]
    """The billing service as a Flask app with replayable's WSGI middleware."""
    from flask import Flask, jsonify, request

    app = Flask("billing")

    @app.post("/charge")
    def post_charge() -> Any:
        body = request.get_json()
        return jsonify(charge(db, str(body["user"]), int(body["cents"])))

    app.wsgi_app = WSGIMiddleware(  # type: ignore[method-assign]
        app.wsgi_app, store=store, service="billing", follow=follow, requests=requests
    )
    return app


def free_port() -> int:
    """A port free on 127.0.0.1 right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Uvicorn:
    """An ASGI app served by uvicorn on 127.0.0.1:port in a thread (``with`` starts/stops it)."""

    def __init__(self, app: Any, port: int | None = None, *, lifespan: str = "off") -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(
            app, host="127.0.0.1", port=self.port, log_level="warning", lifespan=lifespan
        )
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> Uvicorn:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline or not self.thread.is_alive():
                raise RuntimeError(f"uvicorn did not start on port {self.port}")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)


class Werkzeug:
    """A WSGI app served by werkzeug's threaded server on 127.0.0.1:port in a thread."""

    def __init__(self, app: Any, port: int | None = None) -> None:
        from werkzeug.serving import make_server

        self.server = make_server("127.0.0.1", port or 0, app, threaded=True)
        self.port = self.server.server_port
        self.url = f"http://127.0.0.1:{self.port}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> Werkzeug:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)


class Sentinel:
    """A bare listening socket on a port: counts the connections that reach it."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", port))
        self.sock.listen(16)
        self.sock.setblocking(False)

    def connections(self) -> int:
        """How many connections are waiting to be accepted (all of them, drained)."""
        n = 0
        while True:
            try:
                conn, _ = self.sock.accept()
            except BlockingIOError:
                return n
            conn.close()
            n += 1

    def __enter__(self) -> Sentinel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.sock.close()


TOOLS = {"version": 1}
"""The tool server's code version: 2 looks the item up in capitals (a changed input), 3 fails
after the lookup."""


@rp.boundary(kind="retrieval", name="tools:stock_level")
def stock_level(item: str) -> int:
    """The tool server's own lookup (a boundary recorded into the linked run)."""
    return len(item) * 3


def mcp_tools(store: Any, *, follow: bool = False, linked: bool = True) -> Any:
    """An MCP tool server (streamable HTTP) whose tool calls link to their callers (a plain
    MCP server when ``linked=False``); ``CALLS`` counts the tool calls it ran."""
    from mcp.server.mcpserver import MCPServer
    from mcp.types import ToolAnnotations

    from replayable.integrations.mcp import serve

    server = MCPServer("tools")

    @server.tool(annotations=ToolAnnotations(readOnlyHint=True))
    def check_stock(item: str) -> str:
        """How many of `item` are in stock."""
        CALLS.append(item)
        lookup = stock_level if linked else stock_level.__wrapped__  # type: ignore[attr-defined]
        key = item.upper() if TOOLS["version"] == 2 else item
        level = lookup(key)
        if TOOLS["version"] == 3:
            raise ValueError(f"stock of {item} unknown")
        return f"{item}: {level} in stock"

    if linked:
        serve(server, store=store, service="tools", follow=follow)
    return server.streamable_http_app()


CALLS: list[str] = []
"""The tool calls the MCP tool server ran (the test resets it)."""


AGENT: dict[str, str] = {}
"""Where the agent service finds the model, billing and the tool server (set by the test)."""
API_KEY = "sk-test-abcdefghijklmnopqrstuvwxyz0123456789"


async def handle_ticket(ticket: dict[str, Any]) -> dict[str, Any]:
    """The support agent: ask the model, charge through billing, check stock over MCP."""
    import httpx
    import mcp
    import openai

    model = rp.instrument(
        openai.AsyncOpenAI(base_url=AGENT["model"], api_key=API_KEY, max_retries=0)
    )
    try:
        reply = await model.chat.completions.create(
            model="gpt-4o-mini", messages=[{"role": "user", "content": ticket["text"]}]
        )
    finally:
        await model.close()
    async with rp.instrument(httpx.AsyncClient(), service="billing") as billing:
        charged = await billing.post(
            AGENT["billing"] + "/charge", json={"user": ticket["user"], "cents": ticket["cents"]}
        )
        charged.raise_for_status()
    async with rp.instrument(mcp.Client(AGENT["tools"] + "/mcp")) as tools:
        stock = await tools.call_tool("check_stock", {"item": ticket["item"]})
    return {
        "answer": reply.choices[0].message.content,
        "charge": charged.json(),
        "stock": stock.content[0].text,
    }


def agent_service(store: Any) -> Any:
    """The agent as a FastAPI service: every request is a run (requests='all')."""
    from fastapi import FastAPI

    app = FastAPI()

    @app.post("/ticket")
    async def ticket(body: dict[str, Any]) -> dict[str, Any]:
        return await handle_ticket(body)

    app.add_middleware(ASGIMiddleware, store=store, service="agent", requests="all")
    return app
