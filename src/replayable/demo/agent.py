"""A small support agent with a real SQLite customer database and a scripted, sampling model.

Asked to delete one customer's record, the model picks among customers with similar names. Its
answer is sampled (seeded from :func:`replayable.random`), so now and then it picks the wrong one,
and the agent deletes it: the incident. ``GUARD = True`` is the fix: the agent refuses to delete a
record whose email does not match the one the user gave.

Replay it from the command line with ``replayable replay RUN --import replayable.demo.agent``.
"""

from __future__ import annotations

import os
import re
import sqlite3
from pathlib import Path
from typing import Any

import replayable as rp

OWNER_EMAIL = "dana.whitfield@acmemail.io"
"""The requester's email: a made-up address at a made-up (but not reserved) domain, so that
``replayable demo``, which records with ``pii=True``, has personal data to pseudonymize."""

REQUEST = (
    f"Please close my account and delete my customer record. I'm Dana Whitfield, {OWNER_EMAIL}."
)

CUSTOMERS = [
    (11, "Aaron Patel", "aaron.patel@acmemail.io"),
    (12, "Dana Whitmore", "dana.whitmore@brightpost.net"),
    (13, "Dana Whitfield", OWNER_EMAIL),
    (14, "Lena Ortiz", "lena.ortiz@acmemail.io"),
    (15, "Dan Whitfield", "dan.whitfield@brightpost.net"),
]

GUARD = False
"""The fix. False reproduces the incident; True makes the agent check the email first."""

MODEL = "scripted-sampler-1"
FINGERPRINT = "fp_demo_1"
"""What the scripted model reports as its model and ``system_fingerprint`` (a model update
changes them; ``replayable drift`` reports it)."""


def pii() -> rp.PII:
    """The demo's personal-data settings: every kind, and the customers' names listed (as a
    support team would list its customers), under the key in the environment."""
    return rp.PII(names=[name for _, name, _ in CUSTOMERS])


def db_path() -> Path:
    """Where the demo database lives (``$REPLAYABLE_DEMO_DB`` or .replayable/demo/customers.db)."""
    return Path(os.environ.get("REPLAYABLE_DEMO_DB", ".replayable/demo/customers.db"))


def reset_db() -> Path:
    """Create (or re-create) the customer database with its five customers."""
    path = db_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    with sqlite3.connect(path) as db:
        db.execute("DROP TABLE IF EXISTS customers")
        db.execute("CREATE TABLE customers (id INTEGER PRIMARY KEY, name TEXT, email TEXT)")
        db.executemany("INSERT INTO customers VALUES (?, ?, ?)", CUSTOMERS)
    return path


def customers() -> list[tuple[int, str, str]]:
    """All rows of the customer table, by id."""
    with sqlite3.connect(db_path()) as db:
        return list(db.execute("SELECT id, name, email FROM customers ORDER BY id"))


@rp.boundary(kind="tool")
def search_customers(query: str) -> list[dict[str, Any]]:
    """Customers whose name shares a word with ``query`` (a fuzzy search, as real ones are)."""
    words = [w.lower() for w in query.split()]
    rows = customers()
    return [
        {"id": i, "name": n, "email": e}
        for i, n, e in rows
        if any(w[:3] in n.lower() for w in words)
    ]


@rp.boundary(kind="llm")
def choose_record(
    request: str, candidates: list[dict[str, Any]], temperature: float = 0.8
) -> dict[str, Any]:
    """The scripted model: picks which record to delete. Its answer is sampled."""
    seed = rp.random()
    ranked = sorted(candidates, key=lambda c: _similarity(request, c["name"]), reverse=True)
    # At temperature > 0 the sampler sometimes takes the runner-up: a near-identical name.
    pick = ranked[1] if len(ranked) > 1 and seed < 0.3 * temperature / 0.8 else ranked[0]
    rp.annotate(
        model=MODEL,
        system_fingerprint=FINGERPRINT,
        usage={"input_tokens": 40 + 12 * len(candidates), "output_tokens": 18},
        temperature=temperature,
    )
    return {
        "tool": "delete_record",
        "arguments": {"customer_id": pick["id"]},
        "reason": f"The user is {pick['name']}.",
    }


def _similarity(request: str, name: str) -> int:
    text = request.lower()
    return sum(1 for part in name.lower().split() if re.search(rf"\b{re.escape(part)}\b", text))


@rp.boundary(kind="tool", side_effects=True)
def delete_record(customer_id: int) -> dict[str, Any]:
    """Delete a customer row. A side effect: replay serves it, never runs it."""
    with sqlite3.connect(db_path()) as db:
        n = db.execute("DELETE FROM customers WHERE id = ?", (customer_id,)).rowcount
    return {"deleted": n, "customer_id": customer_id}


@rp.boundary(kind="agent")
def support_agent(request: str) -> dict[str, Any]:
    """Find the customer the request is about, let the model choose, and delete the record."""
    name = re.search(r"I'm ([A-Z][a-z]+ [A-Z][a-z]+)", request)
    email = re.search(r"[\w.+-]+@[\w-]+\.[\w.]+", request)
    found = search_customers(name.group(1) if name else request)
    decision = choose_record(request, found)
    target = next(c for c in found if c["id"] == decision["arguments"]["customer_id"])
    if GUARD and (email is None or target["email"] != email.group(0).rstrip(".")):
        return {"status": "refused", "reason": f"{target['email']} is not the requester's email"}
    result = delete_record(target["id"])
    return {"status": "deleted", "customer": target, "result": result}
