"""MCP fixtures: the demo's store built by `replayable demo`, a guarded agent module beside it,
and the real MCP client driving `replayable mcp` over stdio."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from mcp import ClientSession, StdioServerParameters
from mcp.client.stdio import stdio_client

import replayable as rp
from replayable.store.base import RunQuery

GUARDED = """\
from replayable.demo import agent
from replayable.demo.agent import support_agent  # noqa: F401

agent.GUARD = True
"""


@dataclass(frozen=True)
class Demo:
    """Where `replayable demo` left its store, the incident and its fixed replay."""

    workdir: Path
    store: str
    incident: str
    fixed: str
    customers: Path


def build_demo(workdir: Path) -> Demo:
    """Run `replayable demo` in ``workdir`` and find the incident and the replay of the fix."""
    store = workdir / "traces.db"
    customers = workdir / "customers.db"
    env = {**os.environ, "REPLAYABLE_STORE": str(store), "REPLAYABLE_DEMO_DB": str(customers)}
    subprocess.run(
        [sys.executable, "-m", "replayable.cli", "demo"],
        cwd=workdir,
        env=env,
        check=True,
        capture_output=True,
        timeout=300,
    )
    runs = rp.open_store(str(store)).list_runs(RunQuery(limit=1000))
    incident = next(r for r in runs if r.parent_run is None)  # newest: the demo stops there
    fixed = next(r for r in runs if r.parent_run == incident.id and r.status == "diverged")
    (workdir / "guarded_agent.py").write_text(GUARDED, encoding="utf-8")
    return Demo(workdir, str(store), incident.id, fixed.id, customers)


@pytest.fixture(scope="module")
def demo(tmp_path_factory: pytest.TempPathFactory) -> Demo:
    """The demo's store, built once per test module."""
    return build_demo(tmp_path_factory.mktemp("demo"))


@asynccontextmanager
async def connect(
    workdir: Path, store: str, *flags: str, env: dict[str, str] | None = None
) -> AsyncIterator[ClientSession]:
    """`replayable mcp --store STORE FLAGS` in ``workdir``, as a client session over stdio."""
    params = StdioServerParameters(
        command=sys.executable,
        args=["-m", "replayable.cli", "mcp", "--store", store, *flags],
        env={**os.environ, **(env or {})},
        cwd=workdir,
    )
    with (workdir / "server.log").open("a") as log:
        async with stdio_client(params, errlog=log) as (read, write):
            async with ClientSession(read, write) as session:
                await session.initialize()
                yield session


async def call(session: ClientSession, tool: str, **arguments: Any) -> Any:
    """A tool's answer, decoded; a tool error fails the test with its message."""
    result = await session.call_tool(tool, arguments)
    text = result.content[0].text  # type: ignore[union-attr]
    assert not result.is_error, text
    return json.loads(text)


async def refused(session: ClientSession, tool: str, **arguments: Any) -> str:
    """A tool error's message (the call must be refused)."""
    result = await session.call_tool(tool, arguments)
    text: str = result.content[0].text  # type: ignore[union-attr]
    assert result.is_error, text
    return text
