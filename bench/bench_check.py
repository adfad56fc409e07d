"""Checking a corpus: runs per second replaying 10,000 recorded runs of the demo agent from
SQLite against the code as it is now, ``rp.check`` with one and two worker processes, against
the loop a user would write today (``rp.replay`` per run, one process, every replay recorded).

The corpus is 200 real recordings of the demo agent (the model samples, so they differ), each
copied under new run ids (events re-chained and the run sealed, so every copy verifies) up to
the size wanted.
"""

from __future__ import annotations

import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

from bench import Row, fresh_gc, now_ns, row

__all__ = ["run"]


def _corpus(path: Path, n: int, distinct: int) -> list[str]:
    """A SQLite store at ``path`` holding ``n`` runs of the demo agent; their ids."""
    import os

    import replayable as rp
    from replayable._writer import stop_writer
    from replayable.demo import agent
    from replayable.store.base import event_to_row
    from replayable.store.sqlite import SQLiteStore
    from replayable.trace import Event, Run, chain_events

    os.environ["REPLAYABLE_DEMO_DB"] = str(path.with_name("customers.db"))
    store = SQLiteStore(path)
    originals: list[Run] = []
    for _ in range(distinct):
        agent.reset_db()
        with rp.record(store, name="support-agent", tags={"bench": "check"}) as run:
            agent.support_agent(agent.REQUEST)
        originals.append(run)
    stop_writer(store)
    recorded = [(r, list(store.iter_events(r.id))) for r in originals]
    ids = [r.id for r in originals]
    for i in range(n - distinct):
        src, events = recorded[i % distinct]
        copy = Run.from_dict({**src.to_dict(), "id": f"{src.id[:12]}c{i:07d}"})
        moved = [Event.from_dict(e.to_dict()) for e in sorted(events, key=lambda e: e.chain_seq)]
        rows = [event_to_row(e) for e in chain_events(copy, moved)]  # re-chained, sealed
        store.put_run(copy, rows)
        ids.append(copy.id)
    store.close()
    return ids


def _naive(url: str, n: int) -> tuple[float, float]:
    """(runs/s, runs per CPU-second) of the loop a user writes today: list the runs,
    rp.replay each one (recorded, as every replay is), call the agent with its request."""
    import os

    import replayable as rp
    from replayable._writer import stop_writer
    from replayable.demo import agent
    from replayable.store import open_store
    from replayable.store.base import RunQuery

    store = open_store(url)
    runs = store.list_runs(RunQuery(limit=n))
    fresh_gc()
    c0 = os.times()
    t0 = now_ns()
    for run in runs:
        with rp.replay(run, store=store, strict=False) as r:
            agent.support_agent(r.recorded_events[0].input["request"])
        assert r.ok, r.report()
    stop_writer(store)  # every replay is written: that is part of the loop's cost
    elapsed = (now_ns() - t0) / 1e9
    c1 = os.times()
    cpu = (c1.user - c0.user) + (c1.system - c0.system)
    return len(runs) / elapsed, len(runs) / max(cpu, 1e-9)


def _check(url: str, jobs: int, n: int) -> tuple[float, float]:
    """(runs/s of wall time, runs per CPU-second of this process and its workers)."""
    import os

    import replayable as rp

    fresh_gc()
    c0 = os.times()
    t0 = now_ns()
    report = rp.check(url, imports=["replayable.demo.agent"], jobs=jobs)
    elapsed = (now_ns() - t0) / 1e9
    c1 = os.times()
    assert report.counts["unchanged"] == n, report.counts
    cpu = sum(getattr(c1, f) - getattr(c0, f) for f in ("user", "system"))
    cpu += sum(getattr(c1, f) - getattr(c0, f) for f in ("children_user", "children_system"))
    return n / elapsed, n / max(cpu, 1e-9)


def run(quick: bool = False) -> list[Row]:
    """Runs/s checking 10,000 runs (300 with ``quick``): --jobs 1, --jobs 2, naive loop."""
    from replayable.store import close_all

    n, distinct = (300, 40) if quick else (10_000, 200)
    naive_n = 300 if quick else 2_000  # the naive loop is slow: its rate over fewer runs
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="replayable-bench-check-") as d:
        path = Path(d) / "corpus.db"
        _corpus(path, n, distinct)
        url = f"sqlite:///{path}"
        one, one_cpu = _check(url, 1, n)
        # Worker processes fork when nothing else runs threads here, else they are spawned.
        method = "fork" if sys.platform == "linux" and threading.active_count() == 1 else "spawn"
        two, two_cpu = _check(url, 2, n)
        naive, naive_cpu = _naive(url, naive_n)
        close_all()
    size = f"{n:,} runs"
    opts: dict[str, Any] = {"unit": "runs/s", "higher_is_better": True}
    efficiency = two_cpu / one_cpu
    rows.append(
        row(
            f"check {size} --jobs 1 vs rp.replay loop",
            one,
            peer=naive,
            peer_name="rp.replay per run, 1 process",
            note=f"demo agent from SQLite; {one / naive:.1f}× the naive loop (its rate over "
            f"{naive_n:,} runs); check keeps outcomes only",
            **opts,
        )
    )
    rows.append(
        row(
            f"check {size} --jobs 1 vs rp.replay loop, per CPU-second",
            one_cpu,
            peer=naive_cpu,
            peer_name="rp.replay per run, 1 process",
            unit="runs/CPU-s",
            higher_is_better=True,
            note=f"{one_cpu / naive_cpu:.1f}× less CPU per run than the naive loop (which "
            "records every replay); CPU time does not depend on the machine's load",
        )
    )
    rows.append(
        row(
            f"check {size} --jobs 2 vs --jobs 1",
            two,
            peer=one,
            peer_name="check --jobs 1",
            note=f"wall clock: speed-up {two / one:.2f}× (target ≥ 1.7×, ≥ 1,000 runs/s); "
            f"workers {method}ed",
            **opts,
        )
    )
    rows.append(
        row(
            f"check {size} --jobs 2 vs --jobs 1, per CPU-second",
            two_cpu,
            peer=one_cpu,
            peer_name="check --jobs 1",
            unit="runs/CPU-s",
            higher_is_better=True,
            note=f"parallel efficiency {efficiency:.0%}: on 2 idle cores --jobs 2 would be "
            f"~{2 * efficiency:.2f}× --jobs 1 (a shared machine caps one session's CPU share)",
        )
    )
    return rows
