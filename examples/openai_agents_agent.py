"""An OpenAI Agents SDK agent that places orders, recorded with replayable and replayed offline.

    OPENAI_API_KEY=... python examples/openai_agents_agent.py        # records a run
    python examples/openai_agents_agent.py --replay RUN_ID           # replays it: no model call,
                                                                     # no order placed again

One line, ``rp.instrument(agent, side_effects=["place_order"])``, makes the agent's model calls
``llm`` steps and its function tools ``tool`` steps; ``place_order`` writes a row to
``orders.db``, so it is marked as a side effect: replay serves its recorded result, and
``replayable replay RUN --live place_order`` is refused unless side effects are allowed.
``OPENAI_BASE_URL`` points the SDK at any OpenAI-compatible server.
"""

from __future__ import annotations

import asyncio
import sqlite3
import sys
from pathlib import Path
from typing import Any

from agents import Agent, Runner, function_tool

import replayable as rp

QUESTION = "Order two mugs for the office, then tell me what you did."


def build(db: Path) -> Agent[Any]:
    """The shop agent, instrumented; its orders go to the SQLite file ``db``."""
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS orders (item TEXT, quantity INTEGER)")

    @function_tool
    def place_order(item: str, quantity: int) -> str:
        """Order `quantity` of `item`."""
        with sqlite3.connect(db) as conn:
            conn.execute("INSERT INTO orders VALUES (?, ?)", (item, quantity))
        return f"ordered {quantity} x {item}"

    agent = Agent(
        name="shop",
        instructions="You order what the customer asks for, then confirm briefly.",
        tools=[place_order],
    )
    return rp.instrument(agent, side_effects=["place_order"])  # type: ignore[no-any-return]


async def main(argv: list[str]) -> None:
    agent = build(Path("orders.db"))
    if len(argv) > 2 and argv[1] == "--replay":
        async with rp.replay(argv[2]) as r:
            result = await Runner.run(agent, QUESTION)
        print(result.final_output, "\n", r.report())
        return
    async with rp.record(name="openai-agents-shop") as run:
        result = await Runner.run(agent, QUESTION)
    print(result.final_output, "\nrecorded run", run.id)


if __name__ == "__main__":
    asyncio.run(main(sys.argv))
