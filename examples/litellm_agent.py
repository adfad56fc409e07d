"""A tool-using shop agent on LiteLLM, recorded with replayable and replayed offline.

    OPENAI_API_KEY=... python examples/litellm_agent.py            # records a run
    python examples/litellm_agent.py --replay RUN_ID               # replays it: no model call,
                                                                   # no order placed again

``MODEL`` picks any LiteLLM model (default ``openai/gpt-4o-mini``); ``OPENAI_BASE_URL`` points
at any OpenAI-compatible server. ``place_order`` writes a row to ``orders.db``: it is a side
effect, so replay serves its recorded result instead of ordering again.
"""

from __future__ import annotations

import json
import os
import sqlite3
import sys
from pathlib import Path
from typing import Any

import litellm

import replayable as rp

rp.instrument(litellm)

TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "place_order",
            "description": "Order a quantity of an item",
            "parameters": {
                "type": "object",
                "properties": {"item": {"type": "string"}, "quantity": {"type": "integer"}},
                "required": ["item", "quantity"],
            },
        },
    }
]


class Shop:
    """A SQLite orders table: the world the agent changes."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE IF NOT EXISTS orders (item TEXT, quantity INTEGER)")

    @rp.boundary(kind="tool", side_effects=True)
    def place_order(self, item: str, quantity: int) -> str:
        with sqlite3.connect(self.path) as db:
            db.execute("INSERT INTO orders VALUES (?, ?)", (item, quantity))
        return f"ordered {quantity} x {item}"

    def count(self) -> int:
        with sqlite3.connect(self.path) as db:
            return int(db.execute("SELECT count(*) FROM orders").fetchone()[0])


class ShopAgent:
    """Asks the model, places the orders it asks for, and returns its final answer."""

    def __init__(self, shop: Shop, model: str, **call_options: Any) -> None:
        self.shop = shop
        self.model = model
        self.call_options = call_options

    @rp.boundary(kind="agent")
    def run(self, question: str) -> str:
        messages: list[dict[str, Any]] = [{"role": "user", "content": question}]
        for _ in range(5):
            resp = litellm.completion(
                model=self.model, messages=messages, tools=TOOLS, **self.call_options
            )
            msg = resp.choices[0].message
            if not msg.tool_calls:
                return str(msg.content or "")
            messages.append(msg.model_dump(exclude_none=True))
            for call in msg.tool_calls:
                result = self.shop.place_order(**json.loads(call.function.arguments))
                messages.append({"role": "tool", "tool_call_id": call.id, "content": result})
        return "gave up"


def main(argv: list[str]) -> None:
    shop = Shop(Path("orders.db"))
    agent = ShopAgent(shop, os.environ.get("MODEL", "openai/gpt-4o-mini"))
    question = "Order two mugs for the office."
    if len(argv) > 2 and argv[1] == "--replay":
        with rp.replay(argv[2]) as r:
            answer = agent.run(question)
        print(answer, "\n", r.report())
        return
    with rp.record(name="litellm-agent") as run:
        answer = agent.run(question)
    print(answer, "\nrecorded run", run.id, "\norders:", shop.count())


if __name__ == "__main__":
    main(sys.argv)
