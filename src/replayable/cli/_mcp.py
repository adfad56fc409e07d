"""``mcp``: recorded runs for coding agents, over the Model Context Protocol."""

from __future__ import annotations

import os
from pathlib import Path

import click

from replayable.cli._common import (
    err_console,
    fail,
    get_store,
    handle_errors,
    listen,
    main,
    require_token,
    store_option,
)


@main.command("mcp")
@store_option
@click.option(
    "--allow-replay",
    is_flag=True,
    help="Add the tools that run the agent's code (replay_run, fork_run, check_runs). Side "
    "effects stay refused, as in the CLI.",
)
@click.option("--http", is_flag=True, help="Serve streamable HTTP at /mcp instead of stdio.")
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface (with --http).")
@click.option(
    "--port",
    default=8766,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port (with --http).",
)
@click.option(
    "--auth-token",
    envvar="REPLAYABLE_MCP_TOKEN",
    show_envvar=True,
    help="Token every HTTP request must carry as 'Authorization: Bearer TOKEN' (required when "
    "--host is not local).",
)
@click.option(
    "--timeout",
    default=300.0,
    show_default=True,
    type=click.FloatRange(min=1),
    help="Seconds a replay, fork or check may run before it is stopped.",
)
@handle_errors
def mcp_cmd(
    store_url: str | None,
    allow_replay: bool,
    http: bool,
    host: str,
    port: int,
    auth_token: str | None,
    timeout: float,
) -> None:
    """Serve recorded runs to a coding agent over MCP (stdio by default).

    Tools: list_runs, show_run, show_step, diff_runs, verify_run; with --allow-replay also
    replay_run (your code on disk against a recording, imported fresh at each call from this
    directory), fork_run and check_runs. Resources replayable://runs/{id} and
    replayable://runs/{id}/steps/{seq}; the prompt investigate_incident.

    Read-only by default. Every value returned is the redacted stored value. With --http it
    binds 127.0.0.1; binding elsewhere needs --auth-token.

    \b
    claude mcp add replayable -- replayable mcp --allow-replay
    replayable mcp --http --port 8766
    """
    if not http and (host != "127.0.0.1" or auth_token):
        fail("--host and --auth-token are for --http (stdio needs neither)")
    if http:
        require_token(host, auth_token, "your traces", envvar="REPLAYABLE_MCP_TOKEN")
    try:
        from replayable.mcp_server import create_http_app, create_server
    except ImportError as exc:
        fail(f'the MCP server needs {exc.name}: pip install "replayable[mcp]"')
        return
    store = get_store(store_url)
    server = create_server(
        store,
        allow_replay=allow_replay,
        store_url=store_url,
        cwd=Path(os.getcwd()),
        timeout=timeout,
    )
    if not http:
        server.run("stdio")
        return
    import uvicorn

    app = create_http_app(server, host=host, token=auth_token)
    sock = listen(host, port)
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    err_console().print(
        f"replayable MCP server for {store.url} at http://{shown}:{port}/mcp"
        + ("  (Authorization: Bearer token required)" if auth_token else ""),
        markup=False,
    )
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
