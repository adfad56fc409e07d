"""An A2A booking agent (a SQLite side effect) served with the A2A SDK on 127.0.0.1, and the
caller's helpers: the SDK's documented server (DefaultRequestHandler, JSON-RPC and agent-card
routes, uvicorn) and client (create_client from the agent card)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import replayable as rp
from replayable.integrations.a2a import serve

BOOKING = {"version": 1}
"""The booking agent's code version: 2 books two seats (a change the follow replay shows)."""
SEEN: list[str] = []
"""The messages the booking agent's executor ran (the test resets it)."""


@rp.boundary(kind="tool", side_effects=True, name="booking:insert_booking")
def insert_booking(db: str, guest: str, seats: int) -> int:
    """Write the booking; returns its row id."""
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bookings (guest TEXT, seats INTEGER)")
        cur = conn.execute("INSERT INTO bookings VALUES (?, ?)", (guest, seats))
        return int(cur.lastrowid or 0)


def bookings(db: str | Path) -> list[tuple[Any, ...]]:
    """Every booking in the agent's database."""
    with sqlite3.connect(db) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS bookings (guest TEXT, seats INTEGER)")
        return list(conn.execute("SELECT rowid, guest, seats FROM bookings ORDER BY rowid"))


def card(port: int) -> Any:
    """The booking agent's card (JSON-RPC on 127.0.0.1:port)."""
    from a2a.types import AgentCapabilities, AgentCard, AgentInterface, AgentSkill

    return AgentCard(
        name="booking",
        description="Books seats.",
        version="1.0.0",
        capabilities=AgentCapabilities(streaming=False),
        default_input_modes=["text"],
        default_output_modes=["text"],
        skills=[AgentSkill(id="book", name="book", description="Book seats.", tags=["book"])],
        supported_interfaces=[
            AgentInterface(
                protocol_binding="JSONRPC",
                protocol_version="1.0",
                url=f"http://127.0.0.1:{port}/a2a/jsonrpc",
            )
        ],
    )


def booking_app(
    db: str, store: Any, port: int, *, linked: bool = True, follow: bool = False
) -> Any:
    """The booking agent as the A2A SDK serves it (Starlette routes), its executor wrapped by
    replayable's ``serve`` unless ``linked=False``."""
    from a2a.helpers import get_message_text, new_text_message
    from a2a.server.agent_execution import AgentExecutor
    from a2a.server.request_handlers import DefaultRequestHandler
    from a2a.server.routes import create_agent_card_routes, create_jsonrpc_routes
    from a2a.server.tasks import InMemoryTaskStore
    from starlette.applications import Starlette

    class BookingExecutor(AgentExecutor):
        """Books the seats the message asks for and answers with the booking's id."""

        async def execute(self, context: Any, event_queue: Any) -> None:
            text = get_message_text(context.message)
            SEEN.append(text)
            guest, seats = text.split(":")
            write = insert_booking if linked else insert_booking.__wrapped__  # type: ignore[attr-defined]
            n = int(seats) * BOOKING["version"]
            row = write(db, guest, n)
            await event_queue.enqueue_event(
                new_text_message(f"booked {n} for {guest} as #{row}", context_id=context.context_id)
            )

        async def cancel(self, context: Any, event_queue: Any) -> None:
            raise NotImplementedError

    executor: Any = BookingExecutor()
    if linked:
        executor = serve(executor, store=store, service="booking", follow=follow)
    the_card = card(port)
    handler = DefaultRequestHandler(
        agent_executor=executor, task_store=InMemoryTaskStore(), agent_card=the_card
    )
    routes = [
        *create_agent_card_routes(agent_card=the_card),
        *create_jsonrpc_routes(request_handler=handler, rpc_url="/a2a/jsonrpc"),
    ]
    return Starlette(routes=routes)


async def book(port: int, guest: str, seats: int) -> str:
    """The caller's agent: message the booking agent (an instrumented A2A client) and return
    its answer's text."""
    from a2a.client import ClientConfig, create_client
    from a2a.helpers import get_message_text, new_text_message
    from a2a.types import Role, SendMessageRequest

    client = rp.instrument(
        await create_client(card(port), client_config=ClientConfig(streaming=False))
    )
    message = new_text_message(f"{guest}:{seats}", role=Role.ROLE_USER)
    answers = []
    try:
        async for event in client.send_message(SendMessageRequest(message=message)):
            answers.append(get_message_text(event.message))
    finally:
        await client.close()
    return " ".join(answers)
