"""Invoice currency mix-up: asked to invoice ACME GmbH €18,500.00, the model sends the invoice
in US dollars."""

from __future__ import annotations

import re
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import replayable as rp
from bench.incidents._common import Scenario, connect, guarded, harmless, register, run_agent
from bench.incidents._common import scratch_world as _scratch

REQUEST = "Invoice ACME GmbH €18,500.00 for the March retainer."
APPROVED = (
    "I didn't send the invoice: ACME GmbH is billed in EUR, but it was about to go out in USD."
)
INCIDENT = "Done. Sent invoice INV-1001 to ACME GmbH for $18,500.00 USD."


def _seed(db: sqlite3.Connection) -> None:
    db.executemany(
        "INSERT INTO customers VALUES (?, ?)", [("ACME GmbH", "EUR"), ("Initech", "USD")]
    )
    db.execute("INSERT INTO invoices VALUES (1000, 'Initech', 420000, 'USD')")


def _plan(system: str, request: str) -> dict[str, Any]:
    amount = re.search(r"[€$]([\d,]+\.\d\d)", request)
    assert amount is not None
    cents = int(amount.group(1).replace(",", "").replace(".", ""))
    currency = "EUR" if "currency the user states" in system and "€" in request else "USD"
    return {"customer": "ACME GmbH", "amount_cents": cents, "currency": currency}


SCENARIO = register(
    Scenario(
        name="invoice",
        tool="send_invoice",
        schema="CREATE TABLE customers (name TEXT PRIMARY KEY, currency TEXT);"
        "CREATE TABLE invoices (id INTEGER PRIMARY KEY, customer TEXT, amount_cents INTEGER,"
        " currency TEXT);",
        seed=_seed,
        prompt="You are a billing agent. Invoices are in USD unless told otherwise.",
        prompt_fix="You are a billing agent. Always invoice in the currency the user states.",
        plan=_plan,
        incident=lambda db: (
            db.execute(
                "SELECT count(*) FROM invoices i JOIN customers c ON c.name = i.customer "
                "WHERE i.currency != c.currency"
            ).fetchone()[0]
            > 0
        ),
        counts=("customers", "invoices"),
    )
)


@rp.boundary(kind="tool", side_effects=True)
def send_invoice(customer: str, amount_cents: int, currency: str) -> dict[str, Any]:
    """Send an invoice: writes the invoice row (the fix checks the customer's currency)."""
    db = connect("invoice")
    row = db.execute("SELECT currency FROM customers WHERE name = ?", (customer,)).fetchone()
    billed_in = row[0] if row else currency
    if guarded() and currency != billed_in:
        return harmless(
            {
                "status": "blocked",
                "customer": customer,
                "message": f"Invoice blocked: {customer} is billed in {billed_in}, not {currency}.",
            }
        )
    cur = db.execute(
        "INSERT INTO invoices (customer, amount_cents, currency) VALUES (?, ?, ?)",
        (customer, amount_cents, currency),
    )
    symbol = "€" if currency == "EUR" else "$"
    return {
        "status": "sent",
        "invoice": f"INV-{cur.lastrowid}",
        "message": f"Sent invoice INV-{cur.lastrowid} to {customer} for "
        f"{symbol}{amount_cents / 100:,.2f} {currency}.",
    }


def _agent_guard(arguments: dict[str, Any]) -> str | None:
    if arguments["currency"] != "EUR" and arguments["customer"].endswith("GmbH"):
        return "Invoice blocked by the agent: the request was in euros."
    return None


@rp.boundary(kind="agent")
def invoice_agent(request: str) -> str:
    """The billing agent: the model drafts the invoice, the tool sends it, the model reports."""
    return run_agent(SCENARIO, request, send_invoice, _agent_guard)


@contextmanager
def scratch_world(directory: Path) -> Iterator[Path]:
    """A scratch copy of the invoicing database for a test's live send_invoice."""
    with _scratch(SCENARIO, directory) as path:
        yield path
