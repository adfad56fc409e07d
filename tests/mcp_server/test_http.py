"""`replayable mcp --http`: streamable HTTP on loopback; a bind beyond this machine needs a
token, and then every request without it is refused. Tests bind 127.0.0.1 only: the public
bind's rules are checked on the app built for it, served on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import httpx
import pytest
from click.testing import CliRunner
from mcp import ClientSession
from mcp.client.streamable_http import streamable_http_client
from mcp.shared._httpx_utils import create_mcp_http_client

import replayable as rp
from replayable.cli import main
from replayable.errors import InvalidInput
from replayable.mcp_server import create_http_app, create_server
from replayable.store import Store, open_store

TOKEN = "s3cret-token"
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {
        "protocolVersion": "2025-06-18",
        "capabilities": {},
        "clientInfo": {"name": "t", "version": "1"},
    },
}
MCP_HEADERS = {"accept": "application/json, text/event-stream"}


@contextmanager
def served(app: Any) -> Iterator[str]:
    """``app`` under uvicorn on 127.0.0.1 (a free port, lifespan on), in a thread."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]})
    thread.start()
    try:
        deadline = time.monotonic() + 20
        while not server.started:
            assert time.monotonic() < deadline, "the MCP server did not start"
            time.sleep(0.02)
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        sock.close()


@pytest.fixture
def store() -> Store:
    """A store holding one run."""
    st = open_store(None)
    with rp.record(st, name="one"):
        rp.boundary(kind="tool", name="t:echo")(lambda x: x)("hi")
    return st


class TestPublicBind:
    def test_the_cli_refuses_a_public_bind_without_a_token(self) -> None:
        """`--http --host 0.0.0.0` without --auth-token: one error line, exit 2, nothing bound."""
        result = CliRunner().invoke(main, ["mcp", "--http", "--host", "0.0.0.0"])
        assert result.exit_code == 2
        assert "exposes your traces to the network" in result.output
        assert "--auth-token" in result.output

    def test_host_and_token_without_http_are_refused(self) -> None:
        """stdio binds nothing: --host or --auth-token without --http is a mistake, said so."""
        result = CliRunner().invoke(main, ["mcp", "--host", "0.0.0.0"])
        assert result.exit_code == 2
        assert "are for --http" in result.output

    def test_the_app_for_a_public_bind_needs_a_token(self, store: Store) -> None:
        """create_http_app refuses host 0.0.0.0 without a token (the same rule as the CLI)."""
        with pytest.raises(InvalidInput, match="pass a token"):
            create_http_app(create_server(store), host="0.0.0.0", token=None)

    async def test_requests_without_the_token_are_refused(self, store: Store) -> None:
        """The app built for a public bind answers 401 without the bearer token, and serves
        the MCP client that sends it."""
        app = create_http_app(create_server(store), host="0.0.0.0", token=TOKEN)
        with served(app) as url:
            async with httpx.AsyncClient() as http:
                bare = await http.post(f"{url}/mcp", json=INIT, headers=MCP_HEADERS)
                wrong = await http.post(
                    f"{url}/mcp",
                    json=INIT,
                    headers={**MCP_HEADERS, "authorization": "Bearer nope"},
                )
            assert bare.status_code == 401
            assert wrong.status_code == 401
            client = create_mcp_http_client(headers={"Authorization": f"Bearer {TOKEN}"})
            async with (
                client,
                streamable_http_client(f"{url}/mcp", http_client=client) as (
                    read,
                    write,
                ),
            ):
                async with ClientSession(read, write) as session:
                    await session.initialize()
                    tools = await session.list_tools()
                    runs = await session.call_tool("list_runs", {})
        assert "list_runs" in {t.name for t in tools.tools}
        assert '"one"' in runs.content[0].text  # type: ignore[union-attr]


class TestTheCommand:
    def test_a_port_in_use_is_a_clear_error(self, store: Store) -> None:
        """`mcp --http` on a port another process holds exits 2 naming it, without first
        announcing the server's address."""
        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            held.listen()
            port = held.getsockname()[1]
            result = CliRunner().invoke(main, ["mcp", "--http", "--port", str(port)])
        assert result.exit_code == 2, result.output
        assert f"127.0.0.1:{port}" in result.output
        assert "--port" in result.output
        assert "/mcp" not in result.output


class TestLocalBind:
    async def test_a_foreign_host_header_is_refused(self, store: Store) -> None:
        """Bound locally, a request naming another host is refused (DNS rebinding); one
        naming 127.0.0.1 reaches the MCP endpoint."""
        app = create_http_app(create_server(store), host="127.0.0.1", token=None)
        with served(app) as url:
            async with httpx.AsyncClient() as http:
                foreign = await http.post(
                    f"{url}/mcp", json=INIT, headers={**MCP_HEADERS, "host": "evil.example"}
                )
                local = await http.post(f"{url}/mcp", json=INIT, headers=MCP_HEADERS)
        assert foreign.status_code == 400
        assert local.status_code == 200
