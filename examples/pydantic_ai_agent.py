"""A Pydantic AI shop assistant, recorded with replayable and replayed offline.

The agent orders products (a SQLite row per order: a side effect replay must never repeat) and
checks stock. One line instruments the agent: its model requests and its tools.

    OPENAI_API_KEY=... python examples/pydantic_ai_agent.py        # records a run
    python examples/pydantic_ai_agent.py --replay RUN_ID           # replays it: no model call,
                                                                   # no second order
Works with any OpenAI-compatible server (``OPENAI_BASE_URL``).
"""

from __future__ import annotations

import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import replayable as rp

QUESTION = "Please order two mugs."


def orders_db(path: Path) -> Path:
    """Create the orders table (once) and return the database path."""
    with sqlite3.connect(path) as db:
        db.execute("CREATE TABLE IF NOT EXISTS orders (item TEXT, quantity INTEGER)")
    return path


def count_orders(path: Path) -> int:
    """How many orders the database holds."""
    with sqlite3.connect(path) as db:
        return int(db.execute("SELECT count(*) FROM orders").fetchone()[0])


def build(db: Path, *, openai_client: Any = None) -> Any:
    """The instrumented agent: an OpenAI chat model and two tools, place_order a side effect."""
    from pydantic_ai import Agent
    from pydantic_ai.models.openai import OpenAIChatModel
    from pydantic_ai.providers.openai import OpenAIProvider

    provider = OpenAIProvider(openai_client=openai_client) if openai_client else None
    model = OpenAIChatModel("gpt-4o-mini", provider=provider or "openai")
    agent = Agent(model, instructions="You run a small shop. Be brief.")

    @agent.tool_plain
    def place_order(item: str, quantity: int) -> str:
        """Order `quantity` of `item`."""
        with sqlite3.connect(db) as conn:
            conn.execute("INSERT INTO orders VALUES (?, ?)", (item, quantity))
        return f"ordered {quantity} x {item}"

    @agent.tool_plain
    def check_stock(item: str) -> str:
        """How many of `item` are in stock."""
        return f"{item}: 12 in stock"

    return rp.instrument(agent, side_effects=["place_order"])


def main(argv: list[str]) -> None:
    db = orders_db(Path("orders.db"))
    client = None
    if os.environ.get("OPENAI_BASE_URL"):
        import openai

        client = openai.AsyncOpenAI(base_url=os.environ["OPENAI_BASE_URL"])
    agent = build(db, openai_client=client)
    if len(argv) > 2 and argv[1] == "--replay":
        with rp.replay(argv[2]) as r:
            answer = agent.run_sync(QUESTION).output
        print(answer, "\n" + r.report(), "\norders:", count_orders(db))
        return
    with rp.record(name="pydantic-ai-agent") as run:
        answer = agent.run_sync(QUESTION).output
    print(answer, "\nrecorded run", run.id, "\norders:", count_orders(db))


if __name__ == "__main__":
    main(sys.argv)
