"""``replayable mcp``: recorded runs for coding agents, over the Model Context Protocol.

Tools to list runs, read a run's step tree and one step (a value whole, page by page), diff two
runs and verify one; with ``allow_replay``, tools that replay a run against the code on disk,
fork it at a step, and check many runs. Resources for a run and a step, and an "investigate
this incident" prompt. Needs ``pip install "replayable[mcp]"``.

For example (a sketch, not run as a doctest)::

    from replayable.mcp_server import create_server
    create_server(rp.open_store(".replayable/traces.db")).run("stdio")
"""

from __future__ import annotations

from replayable._exports import publish
from replayable.mcp_server._server import create_http_app, create_server

__all__ = ["create_http_app", "create_server"]


publish(globals())
