"""Fixed cost of a short run: ``with rp.record(): one_call()``, start and end of the run
included, minus the cost of the one call recorded inside it.

A web handler or a queue worker records one short run per request, so what a run costs apart
from its calls matters as much as the per-call cost. The end of a run only hands it to the
background writer (which seals and writes it, many short runs to a transaction), so the block
exits without waiting for the store: the first figure is what the agent waits for. The second
is the wall time until everything is on disk (``rp.flush()`` after the runs). Peer: Chronicle's
``chronicle.record`` around the same call.
"""

from __future__ import annotations

import tempfile
import uuid
from pathlib import Path

from bench import Row, fresh_gc, median_ns, now_ns, row
from bench._peers import chronicle_version

__all__ = ["run"]


def tiny(x: int) -> int:
    """The one call each run makes."""
    return x + 1


def _ours(runs: int, repeats: int, tmp: Path) -> tuple[float, float, float]:
    """(ns per run, ns per call recorded in a long run, ns per run until written)."""
    import replayable as rp
    from replayable._writer import stop_writer, writer_for
    from replayable.store.sqlite import SQLiteStore

    wrapped = rp.boundary(name="bench:tiny", kind="tool")(tiny)
    store = SQLiteStore(tmp / f"runend-{uuid.uuid4().hex}.db")
    writer = writer_for(store)
    try:
        with rp.record(store=store):  # warm: the writer thread, git and platform lookups
            wrapped(0)
        writer.flush()

        def short_runs() -> int:
            fresh_gc()
            t0 = now_ns()
            for i in range(runs):
                with rp.record(store=store, name="short"):
                    wrapped(i)
            elapsed = now_ns() - t0
            writer.flush()
            return elapsed

        def one_run() -> int:
            fresh_gc()
            with rp.record(store=store, name="long"):
                t0 = now_ns()
                for i in range(runs):
                    wrapped(i)
                elapsed = now_ns() - t0
            writer.flush()
            return elapsed

        def until_written() -> int:
            fresh_gc()
            t0 = now_ns()
            for i in range(runs):
                with rp.record(store=store, name="short"):
                    wrapped(i)
            writer.flush()
            return now_ns() - t0

        per_run = median_ns(short_runs, repeats) / runs
        per_call = median_ns(one_run, repeats) / runs
        written = median_ns(until_written, repeats) / runs
        return per_run, per_call, written
    finally:
        stop_writer(store)
        store.close()


def _chronicle(runs: int, repeats: int, tmp: Path) -> float:
    import chronicle

    traced = chronicle.boundary("tiny", kind="tool")(tiny)
    store = str(tmp / f"chronicle-{uuid.uuid4().hex}.jsonl")

    def once() -> int:
        fresh_gc()
        t0 = now_ns()
        for i in range(runs):
            with chronicle.record("short", store=store):
                traced(i)
        return now_ns() - t0

    return median_ns(once, repeats) / runs


def run(quick: bool = False) -> list[Row]:
    """One row per figure (µs per run)."""
    runs = 50 if quick else 2_000
    repeats = 1 if quick else 5
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        per_run, per_call, written = _ours(runs, repeats, tmp)
        peer = _chronicle(runs, repeats, tmp)
    fixed = max(per_run - per_call, 0.0)
    return [
        row(
            "short run, fixed cost (start + end)",
            fixed / 1000,
            unit="µs/run",
            peer=peer / 1000,
            peer_name=f"agent-chronicle {chronicle_version()}, whole short run",
            note=f"N={runs} runs of one call each, minus that call's cost in a long run "
            f"({per_call / 1000:.1f} µs); target ≤ 50 µs",
        ),
        row(
            "short run until written to SQLite",
            written / 1000,
            unit="µs/run",
            note="create, one event, finish, until rp.flush() returns (runs batched by the writer)",
        ),
    ]
