"""A LangChain ``create_agent`` shop assistant, recorded with replayable and replayed offline.

The agent orders products (a SQLite row per order: a side effect replay must never repeat) and
checks stock. One line each instruments the chat model and the tools.

    OPENAI_API_KEY=... python examples/langchain_agent.py          # records a run
    python examples/langchain_agent.py --replay RUN_ID             # replays it: no model call,
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


def build(db: Path, *, base_url: str | None = None, api_key: str | None = None) -> Any:
    """The instrumented agent: an OpenAI chat model and two tools, place_order a side effect."""
    from langchain.agents import create_agent
    from langchain_core.tools import tool
    from langchain_openai import ChatOpenAI

    @tool
    def place_order(item: str, quantity: int) -> str:
        """Order `quantity` of `item`."""
        with sqlite3.connect(db) as conn:
            conn.execute("INSERT INTO orders VALUES (?, ?)", (item, quantity))
        return f"ordered {quantity} x {item}"

    @tool
    def check_stock(item: str) -> str:
        """How many of `item` are in stock."""
        return f"{item}: 12 in stock"

    model = rp.instrument(ChatOpenAI(model="gpt-4o-mini", base_url=base_url, api_key=api_key))
    tools = rp.instrument([place_order, check_stock], side_effects=["place_order"])
    return create_agent(model, tools, system_prompt="You run a small shop. Be brief.")


def ask(agent: Any, question: str = QUESTION) -> str:
    """Run the agent on one question and return its final answer."""
    state = agent.invoke({"messages": [{"role": "user", "content": question}]})
    return str(state["messages"][-1].content)


def main(argv: list[str]) -> None:
    db = orders_db(Path("orders.db"))
    agent = build(db, base_url=os.environ.get("OPENAI_BASE_URL"))
    if len(argv) > 2 and argv[1] == "--replay":
        with rp.replay(argv[2]) as r:
            answer = ask(agent)
        print(answer, "\n" + r.report(), "\norders:", count_orders(db))
        return
    with rp.record(name="langchain-agent") as run:
        answer = ask(agent)
    print(answer, "\nrecorded run", run.id, "\norders:", count_orders(db))


if __name__ == "__main__":
    main(sys.argv)
