"""Store throughput: 1 KB events written in batches to SQLite and PostgreSQL, and streamed back.

The peer is what people write first: one ``INSERT`` and one commit per event. PostgreSQL needs
a server: ``$REPLAYABLE_TEST_POSTGRES`` (``eval "$(bash .ci/postgres.sh)"`` starts one); without
it the PostgreSQL rows say so instead of failing.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import Row, row

__all__ = ["run"]

BATCH = 1000


def make_rows(run_id: str, n: int) -> list[tuple[Any, ...]]:
    """``n`` chained event rows of about 1 KB each (input ~900 B, output ~100 B)."""
    from replayable.store.base import event_to_row
    from replayable.trace import Event, event_hash

    rows = []
    prev = ""
    for i in range(n):
        ev = Event(
            run_id=run_id,
            seq=i,
            chain_seq=i,
            address=f"app.agent:run/0 > app.llm:chat/{i}",
            parent_seq=0,
            boundary="app.llm:chat",
            kind="llm",
            key=f"{i:064x}",
            input={"messages": [{"role": "user", "content": f"question {i} " + "x" * 820}]},
            output={"content": "answer " + "y" * 80},
            meta={},
            started_at=1.7e9 + i,
            duration_ns=1000 + i,
        )
        ev.hash = event_hash(prev, ev)
        prev = ev.hash
        rows.append(event_to_row(ev))
    return rows


def _rate(n: int, fn: Callable[[], object]) -> float:
    t0 = time.perf_counter()
    fn()
    return n / (time.perf_counter() - t0)


def _batches(write: Callable[[list[tuple[Any, ...]]], None], rows: list[tuple[Any, ...]]) -> None:
    for i in range(0, len(rows), BATCH):
        write(rows[i : i + BATCH])


def _drain(it: Any) -> int:
    return sum(1 for _ in it)


def _sqlite(n: int, n_peer: int, folder: Path) -> list[Row]:
    from replayable.store.base import EVENT_COLUMNS
    from replayable.store.sqlite import SQLiteStore
    from replayable.trace import Run

    store = SQLiteStore(folder / "bench.db")
    store.create_run(Run(id="bench"))
    rows = make_rows("bench", n)
    write = _rate(n, lambda: _batches(store.write_rows, rows))
    read = _rate(n, lambda: _drain(store.iter_events("bench")))
    store.close()

    naive = sqlite3.connect(folder / "naive.db")
    naive.execute("PRAGMA journal_mode=WAL")
    naive.execute(f"CREATE TABLE events ({', '.join(EVENT_COLUMNS)})")
    sql = f"INSERT INTO events VALUES ({','.join('?' * len(EVENT_COLUMNS))})"

    def per_row() -> None:
        for r in rows[:n_peer]:
            naive.execute(sql, r)
            naive.commit()

    peer = _rate(n_peer, per_row)
    naive.close()
    return [
        row(
            "SQLite write, 1 KB events",
            write,
            unit="events/s",
            peer=peer,
            peer_name="INSERT + commit per event",
            higher_is_better=True,
            note=f"{n:,} events in batches of {BATCH} (WAL, synchronous=NORMAL); target ≥ 50,000",
        ),
        row(
            "SQLite stream back",
            read,
            unit="rows/s",
            note=f"iter_events over {n:,} events, decoded to Event objects",
        ),
    ]


def _postgres(n: int, n_peer: int) -> list[Row]:
    url = os.environ.get("REPLAYABLE_TEST_POSTGRES")
    if not url:
        note = 'no server: eval "$(bash .ci/postgres.sh)" first'
        return [
            row("PostgreSQL write, 1 KB events", float("nan"), unit="events/s", note=note),
            row("PostgreSQL stream back", float("nan"), unit="rows/s", note=note),
        ]
    import psycopg

    from replayable.store.postgres import PostgresStore
    from replayable.trace import Run

    schema = f"rp_bench_{secrets.token_hex(4)}"
    with psycopg.connect(url, autocommit=True) as admin:
        admin.execute(f"CREATE SCHEMA {schema}")
    sep = "&" if "?" in url else "?"
    try:
        store = PostgresStore(f"{url}{sep}options=-csearch_path%3D{schema}")
        store.create_run(Run(id="bench"))
        rows = make_rows("bench", n)
        write = _rate(n, lambda: _batches(store.write_rows, rows))
        read = _rate(n, lambda: _drain(store.iter_events("bench")))
        store.close()
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute(f"SET search_path = {schema}")
            conn.execute("CREATE TABLE naive (LIKE events)")
            sql = f"INSERT INTO naive VALUES ({', '.join(['%s'] * len(rows[0]))})"
            peer_rows = make_rows("naive", n_peer)
            peer = _rate(n_peer, lambda: [conn.execute(sql, r) for r in peer_rows])
    finally:
        with psycopg.connect(url, autocommit=True) as admin:
            admin.execute(f"DROP SCHEMA {schema} CASCADE")
    return [
        row(
            "PostgreSQL write, 1 KB events",
            write,
            unit="events/s",
            peer=peer,
            peer_name="INSERT per event, autocommit",
            higher_is_better=True,
            note=f"{n:,} events with COPY in batches of {BATCH}, loopback; target ≥ 20,000",
        ),
        row(
            "PostgreSQL stream back",
            read,
            unit="rows/s",
            note=f"iter_events over {n:,} events, server-side cursor",
        ),
    ]


def run(quick: bool = False) -> list[Row]:
    """Events/s written in batches and rows/s read back, SQLite and PostgreSQL."""
    n, n_peer = (2000, 200) if quick else (100_000, 1000)
    with tempfile.TemporaryDirectory(prefix="rp-bench-store-") as tmp:
        rows = _sqlite(n, n_peer, Path(tmp))
    return rows + _postgres(n // 2 if not quick else n, n_peer)


if __name__ == "__main__":
    for r in run():
        print(f"{r['benchmark']:<34} {r['ours']:>12,.0f} {r['unit']:<9} {r['note']}")
