"""A real side effect for the framework tests: orders written to a SQLite table."""

from __future__ import annotations

import sqlite3
from pathlib import Path


class Orders:
    """A SQLite ``orders`` table; :meth:`place` inserts a row, :meth:`count` counts them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE IF NOT EXISTS orders (item TEXT, quantity INTEGER)")

    def place(self, item: str, quantity: int) -> str:
        with sqlite3.connect(self.path) as db:
            db.execute("INSERT INTO orders VALUES (?, ?)", (item, quantity))
        return f"ordered {quantity} x {item}"

    def count(self) -> int:
        with sqlite3.connect(self.path) as db:
            return int(db.execute("SELECT count(*) FROM orders").fetchone()[0])
