"""Sampling: what a run the head sample drops costs, against one it keeps.

Runs of five calls (1 KB in, 1 KB out each) recorded with ``sample=0.05``: the trace id of each
run is chosen so the head keeps it (low 64 bits 0) or drops it (all ones), with the default tail
rules on (no run here triggers one, so a dropped run is held to its end, then dropped). Per run:
the agent thread's CPU (``time.thread_time``: the snapshots and hand-off), the whole process's
CPU with ``rp.flush()`` counted (the writer's keying, redaction, hashing and SQLite insert), and
the wall time including the flush. The kept and dropped loops alternate in one process, and a
plain unsampled recording of the same runs is the third column's reference.
"""

from __future__ import annotations

import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench import Row, fresh_gc, now_ns, output_1kb, payload_1kb, row

__all__ = ["run"]

KEEP_ID = "f" * 16 + "0" * 16
DROP_ID = "0" * 16 + "f" * 16
CALLS = 5


def call_model(**payload: Any) -> dict[str, Any]:
    """The boundary each run calls: a 1 KB answer."""
    return output_1kb()


def _measure(runs: int, repeats: int, tmp: Path) -> dict[str, tuple[float, float, float]]:
    """(agent CPU, whole CPU, wall) ns per run, medians, for "kept", "dropped" and "plain"."""
    import replayable as rp
    from replayable.store.sqlite import SQLiteStore

    wrapped = rp.boundary(name="bench:sampled_model", kind="llm")(call_model)
    payload = payload_1kb()
    store = SQLiteStore(tmp / f"sampling-{uuid.uuid4().hex}.db")
    samples: dict[str, list[tuple[int, int, int]]] = {"kept": [], "dropped": [], "plain": []}
    options: dict[str, dict[str, Any]] = {
        "kept": {"sample": 0.05, "metadata": {"trace_id": KEEP_ID}},
        "dropped": {"sample": 0.05, "metadata": {"trace_id": DROP_ID}},
        "plain": {},
    }
    try:
        with rp.record(store=store):  # warm: the writer thread, git and platform lookups
            wrapped(**payload)
        rp.flush()
        for _ in range(repeats):
            for name, kw in options.items():
                fresh_gc()
                p0, c0, t0 = time.process_time_ns(), time.thread_time_ns(), now_ns()
                for _ in range(runs):
                    with rp.record(store=store, name="sampled", **kw):
                        for _ in range(CALLS):
                            wrapped(**payload)
                agent = time.thread_time_ns() - c0
                rp.flush()
                samples[name].append((agent, time.process_time_ns() - p0, now_ns() - t0))
    finally:
        rp.flush()
        store.close()
    return {
        name: tuple(statistics.median(s[i] for s in got) / runs for i in range(3))  # type: ignore[misc]
        for name, got in samples.items()
    }


def run(quick: bool = False) -> list[Row]:
    """Dropped against kept, per run of five 1 KB calls (µs)."""
    runs = 20 if quick else 400
    repeats = 1 if quick else 5
    with tempfile.TemporaryDirectory() as d:
        got = _measure(runs, repeats, Path(d))
    kept, dropped, plain = got["kept"], got["dropped"], got["plain"]
    note = f"N={runs} runs of {CALLS} calls, 1 KB in/out, sample=0.05, default tail rules"
    return [
        row(
            "sampled run dropped, agent thread (CPU)",
            dropped[0] / 1000,
            unit="µs/run",
            peer=kept[0] / 1000,
            peer_name="the same run kept by the head",
            note=note,
        ),
        row(
            "sampled run dropped, whole (CPU, rp.flush() counted)",
            dropped[1] / 1000,
            unit="µs/run",
            peer=kept[1] / 1000,
            peer_name="the same run kept by the head",
            note=f"unsampled recording of the same run: {plain[1] / 1000:.1f} µs",
        ),
        row(
            "sampled run dropped, wall incl. rp.flush()",
            dropped[2] / 1000,
            unit="µs/run",
            peer=kept[2] / 1000,
            peer_name="the same run kept by the head",
            note=f"unsampled recording of the same run: {plain[2] / 1000:.1f} µs",
        ),
    ]
