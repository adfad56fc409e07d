"""An agent whose tools live on an MCP server, recorded with replayable and replayed offline.

The model (OpenAI SDK) picks a tool; the agent calls it on the MCP server
(``examples/mcp_shop_server.py``, started over stdio). ``place_order`` writes a SQLite row, a
side effect replay must never repeat. In replay the MCP server is not even started.

    OPENAI_API_KEY=... python examples/mcp_agent.py                # records a run
    python examples/mcp_agent.py --replay RUN_ID                   # replays it: no model call,
                                                                   # no server, no second order
Works with any OpenAI-compatible server (``OPENAI_BASE_URL``).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from pathlib import Path
from typing import Any

import replayable as rp

QUESTION = "Please order two mugs."
SERVER = Path(__file__).with_name("mcp_shop_server.py")


def server_params(env: dict[str, str] | None = None) -> Any:
    """How to start the shop's MCP server: this Python, over stdio."""
    from mcp import StdioServerParameters

    return StdioServerParameters(
        command=sys.executable, args=[str(SERVER)], env={**os.environ, **(env or {})}
    )


async def ask(llm: Any, params: Any, question: str = QUESTION) -> str:
    """One agent run: list the MCP tools, let the model call them, return its answer."""
    from mcp import Client

    async with rp.instrument(Client(params), side_effects=["place_order"]) as shop:
        listing = await shop.list_tools()
        tools = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    "description": t.description or "",
                    "parameters": t.input_schema,
                },
            }
            for t in listing.tools
        ]
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": "You run a small shop. Be brief."},
            {"role": "user", "content": question},
        ]
        for _ in range(5):
            resp = await llm.chat.completions.create(
                model="gpt-4o-mini", messages=messages, tools=tools
            )
            msg = resp.choices[0].message
            if not msg.tool_calls:
                return str(msg.content or "")
            messages.append(msg.model_dump(exclude_none=True))
            for call in msg.tool_calls:
                result = await shop.call_tool(
                    call.function.name, json.loads(call.function.arguments)
                )
                text = "".join(getattr(c, "text", "") for c in result.content)
                messages.append({"role": "tool", "tool_call_id": call.id, "content": text})
    return "gave up after 5 turns"


async def main(argv: list[str]) -> None:
    import openai

    llm = rp.instrument(openai.AsyncOpenAI())
    params = server_params()
    if len(argv) > 2 and argv[1] == "--replay":
        async with rp.replay(argv[2]) as r:
            answer = await ask(llm, params)
        print(answer, "\n" + r.report())
        return
    async with rp.record(name="mcp-agent") as run:
        answer = await ask(llm, params)
    print(answer, "\nrecorded run", run.id)


if __name__ == "__main__":
    asyncio.run(main(sys.argv))
