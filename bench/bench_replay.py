"""Replay throughput: steps per second, loading the recording included, against the peers.

Ours replays a run from SQLite (load, match every call, serve it, and record the replay itself,
flushed at exit). Chronicle replays its exported trace directory, VCR.py plays a cassette of the
same number of HTTP requests (httpx, loopback). The floor does ours's essential work in straight
-line code with no library around it (read the rows, verify the chain, compare each input's
bytes, decode each output, chain the replay's steps on the digests verifying computed, insert
the one range row that stands for them): how far the library is from what Python, SQLite and
SHA-256 allow on this machine, timed alternately with ours.
"""

from __future__ import annotations

import sqlite3
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

import orjson

from bench import Row, fresh_gc, median_ns, now_ns, output_1kb, payload_1kb, row
from bench._peers import chronicle_version, loopback_server

__all__ = ["run"]

# VCR.py and Chronicle find each recorded response by scanning the whole recording, so their
# replay is quadratic; past these sizes one repeat would take minutes.
VCR_MAX_STEPS = 2_000
CHRONICLE_MAX_STEPS = 10_000

_OUTS: dict[int, Any] = {}


def step(model: str, messages: list[dict[str, Any]], temperature: float) -> Any:
    """One recorded step: returns a 1 KB completion (never called when served from a replay)."""
    i = int(messages[-1]["content"].split(":", 1)[0].removeprefix("step "))
    return _OUTS.setdefault(i, output_1kb(i))


_COLUMNS = (
    "length(run_id) + 8 + 8 + length(address) + 8 + length(boundary) + length(kind) + "
    "length(key) + coalesce(length(input), 0) + coalesce(length(output), 0) + "
    "coalesce(length(error), 0) + coalesce(length(meta), 0) + 8 + 8 + length(hash)"
)


def _stored(path: Path, run_id: str) -> tuple[int, int]:
    """Rows and bytes (text columns by length, numbers as 8) a run takes in ``events``."""
    db = sqlite3.connect(path)
    try:
        n, size = db.execute(
            f"SELECT count(*), coalesce(sum({_COLUMNS}), 0) FROM events WHERE run_id = ?",
            (run_id,),
        ).fetchone()
    finally:
        db.close()
    return int(n), int(size)


def _ours(
    payloads: list[dict[str, Any]], repeats: int, tmp: Path
) -> tuple[float, float, dict[str, tuple[int, int]]]:
    """Median ns of our replay and of the floor's, timed alternately on one recording, and
    the rows and bytes the source and the last replay take in the store."""
    import replayable as rp
    from replayable._writer import stop_writer
    from replayable.store.sqlite import SQLiteStore

    wrapped = rp.boundary(name="bench:step", kind="llm")(step)
    path = tmp / f"replay-{uuid.uuid4().hex}.db"
    store = SQLiteStore(path)
    try:
        with rp.record(store=store, name="bench-replay") as source:
            for p in payloads:
                wrapped(**p)
        floor = _Floor(path, source, payloads)
        replays: list[str] = []

        def once() -> int:
            fresh_gc()
            t0 = now_ns()
            with rp.replay(source.id, store=store) as r:
                for p in payloads:
                    wrapped(**p)
            rp.flush()  # the replay's run is written, as the floor's is
            elapsed = now_ns() - t0
            assert r.ok, r.report()
            assert r.run.event_count == len(payloads), r.run.event_count
            replays.append(r.run.id)
            return elapsed

        times = [(once(), floor.once()) for _ in range(max(1, repeats))]
        floor.close()
        sizes = {"source": _stored(path, source.id), "replay": _stored(path, replays[-1])}
        return (
            statistics.median(t for t, _ in times),
            statistics.median(f for _, f in times),
            sizes,
        )
    finally:
        stop_writer(store)
        store.close()


class _Floor:
    """Ours's essential work on the same recording, in straight-line code: one query for the
    rows, the chain recomputed and compared, each input compared as bytes and each output
    decoded, then what writing the replay costs now that it took the recorded path: its steps
    chained (the digests verifying computed) and one range row inserted with the run, one
    commit. Only the format's own definitions come from replayable."""

    # The columns ours reads (the run id is the one asked for), in this order.
    SELECT = (
        "SELECT seq, chain_seq, address, parent_seq, boundary, kind, key, CAST(input AS BLOB), "
        "CAST(output AS BLOB), CAST(error AS BLOB), CAST(meta AS BLOB), started_at, "
        "duration_ns, hash FROM events WHERE run_id = ? ORDER BY seq"
    )

    def __init__(self, path: Path, source: Any, payloads: list[dict[str, Any]]) -> None:
        self.db = sqlite3.connect(path, isolation_level=None)
        self.db.execute("PRAGMA mmap_size=268435456")
        self.db.execute("PRAGMA synchronous=NORMAL")  # as ours writes (WAL: no fsync a commit)
        self.source = source
        self.payloads = payloads
        self.insert_one = (
            "INSERT INTO events (run_id, seq, chain_seq, address, parent_seq, boundary, kind, "
            "key, input, output, error, meta, started_at, duration_ns, hash) VALUES "
            "(" + ",".join("?" * 15) + ")"
        )

    def once(self) -> int:
        from replayable.trace import Run, genesis_hash, link_hash, payload_digest

        fresh_gc()
        t0_ns = now_ns()
        db, src = self.db, self.source
        events = db.execute(self.SELECT, (src.id,)).fetchall()
        prev = genesis_hash(src)
        payloads: dict[int, str] = {}
        for seq, chain, addr, parent, name, kind, key, i, o, err, meta, at, ns, digest in sorted(
            events, key=lambda e: e[1]
        ):
            payload = payloads[seq] = payload_digest(i, o)
            prev = link_hash(
                prev, src.id, seq, chain, addr, parent, name, kind, key, at, ns, payload, err, meta
            )
            assert prev == digest, "the recording does not verify"
        served = []
        for e, p in zip(events, self.payloads, strict=True):
            t = time.perf_counter_ns()
            assert orjson.dumps(p) == e[7], "the replay diverged"
            orjson.loads(e[8])
            served.append((e, time.time(), time.perf_counter_ns() - t))
        run = Run(id=uuid.uuid4().hex[:20], name="floor", started_at=time.time())
        # The replay took the recorded path: one range row, chained over the steps it stands
        # for (each one's timing the range's span shared evenly, as ours reads it back).
        t0, n = served[0][1], len(served)
        span = round((served[-1][1] - t0) * 1e9) + served[-1][2]
        prev = before = genesis_hash(run)
        for k, (e, _, _) in enumerate(served):
            seq, _, addr, parent, name, kind, key = e[:7]
            meta = b'{"served":true,"source_seq":%d}' % seq
            lo = k * span // n  # the steps tile the span, as ours reads them back
            at, ns = t0 + lo / 1e9, (k + 1) * span // n - lo
            prev = link_hash(
                prev, run.id, seq, k, addr, parent, name, kind, key, at, ns, payloads[seq], None,
                meta,
            )  # fmt: skip
        first = events[0]
        ref = orjson.dumps({"$range": [src.id, first[0], n, events[-1][13], before]})
        row = (
            run.id, first[0], 0, first[2], first[3], first[4], first[5], first[6], "null", "null",
            None, ref.decode(), t0, span, prev,
        )  # fmt: skip
        db.execute("BEGIN")
        db.execute(
            "INSERT INTO runs (id, name, started_at, status) VALUES (?, ?, ?, 'ok')",
            (run.id, run.name, run.started_at),
        )
        db.execute(self.insert_one, row)
        db.execute(
            "INSERT INTO run_refs (run_id, source_run) VALUES (?, ?) ON CONFLICT DO NOTHING",
            (run.id, src.id),
        )
        db.execute("COMMIT")
        return now_ns() - t0_ns

    def close(self) -> None:
        self.db.close()


def _peak_mb(payloads: list[dict[str, Any]], tmp: Path) -> float:
    """Peak traced memory (MB) of one replay of ``payloads``, loading included (untimed)."""
    import tracemalloc

    import replayable as rp
    from replayable._writer import stop_writer
    from replayable.store.sqlite import SQLiteStore

    wrapped = rp.boundary(name="bench:step", kind="llm")(step)
    store = SQLiteStore(tmp / f"peak-{uuid.uuid4().hex}.db")
    try:
        with rp.record(store=store, name="bench-replay") as source:
            for p in payloads:
                wrapped(**p)
        fresh_gc()
        tracemalloc.start()
        try:
            with rp.replay(source.id, store=store):
                for p in payloads:
                    wrapped(**p)
            rp.flush()
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        return peak / 1e6
    finally:
        stop_writer(store)
        store.close()


def _chronicle(payloads: list[dict[str, Any]], repeats: int, tmp: Path) -> float:
    import chronicle

    traced = chronicle.boundary("step", kind="tool")(step)
    fixture = tmp / f"chronicle-{uuid.uuid4().hex}"
    with chronicle.record(
        "bench-replay", store=str(fixture.with_suffix(".jsonl")), export=str(fixture)
    ):
        for p in payloads:
            traced(**p)

    def once() -> int:
        fresh_gc()
        t0 = now_ns()
        with chronicle.replay_trace(str(fixture)) as session:
            for p in payloads:
                out = traced(**p)
        elapsed = now_ns() - t0
        assert out == step(**payloads[-1])
        assert sum(1 for c in session.call_log() if c.mode == "stub") == len(payloads)
        return elapsed

    return median_ns(once, repeats)


def _vcr(payloads: list[dict[str, Any]], repeats: int, tmp: Path) -> float:
    import httpx
    import vcr

    path = tmp / f"vcr-{uuid.uuid4().hex}.yaml"
    with loopback_server() as base, httpx.Client(base_url=base) as client:
        with vcr.use_cassette(str(path), record_mode="once"):
            for i, p in enumerate(payloads):
                client.post(f"/v1/step/{i}", json=p)

        def once() -> int:
            fresh_gc()
            t0 = now_ns()
            with vcr.use_cassette(str(path), record_mode="none") as cassette:
                for i, p in enumerate(payloads):
                    client.post(f"/v1/step/{i}", json=p).json()
            elapsed = now_ns() - t0
            assert cassette.all_played, "VCR.py did not play every recorded request"
            return elapsed

        return median_ns(once, repeats)


def run(quick: bool = False) -> list[Row]:
    """Steps/s replaying 1,000- and 10,000-step runs (20 and 50 with ``quick``)."""
    sizes = (20, 50) if quick else (1_000, 10_000)
    rows: list[Row] = []
    version = chronicle_version()
    vcr_small: float | None = None  # VCR.py req/s at 1,000 requests, to extrapolate from
    with tempfile.TemporaryDirectory(prefix="replayable-bench-") as d:
        tmp = Path(d)
        for n in sizes:
            payloads = [payload_1kb(i) for i in range(n)]
            repeats = 1 if quick else (5 if n <= 1_000 else 3)
            ours_ns, floor_ns, stored = _ours(payloads, repeats, tmp)
            ours = n / (ours_ns / 1e9)
            (rows_n, replay_bytes), (src_rows, src_bytes) = stored["replay"], stored["source"]
            rows.append(
                row(
                    f"replay {n:,} steps, stored",
                    replay_bytes / 1e3,
                    unit="KB",
                    peer=src_bytes / 1e3,
                    peer_name=f"the source run it replays ({src_rows:,} rows)",
                    note=f"{rows_n} row(s) in events: served steps are ranges referring to the "
                    "source (1 KB in, 1 KB out a step)",
                )
            )
            rows.append(
                row(
                    f"replay {n:,} steps vs the floor",
                    ours,
                    unit="steps/s",
                    peer=n / (floor_ns / 1e9),
                    peer_name="floor: the same work, straight-line (sqlite3, hashlib, orjson)",
                    higher_is_better=True,
                    note="timed alternately with ours on one recording: what is left above "
                    "Python, SQLite and SHA-256 on this machine",
                )
            )

            if version is None:
                rows.append(
                    row(
                        f"replay {n:,} steps vs Chronicle",
                        ours,
                        unit="steps/s",
                        higher_is_better=True,
                        note="agent-chronicle not installed",
                    )
                )
            elif n > CHRONICLE_MAX_STEPS:
                rows.append(
                    row(
                        f"replay {n:,} steps vs Chronicle",
                        ours,
                        unit="steps/s",
                        higher_is_better=True,
                        note="Chronicle not run at this size",
                    )
                )
            else:
                chron = n / (_chronicle(payloads, 1 if n > 1_000 else repeats, tmp) / 1e9)
                rows.append(
                    row(
                        f"replay {n:,} steps vs Chronicle",
                        ours,
                        unit="steps/s",
                        peer=chron,
                        peer_name=f"agent-chronicle {version}",
                        higher_is_better=True,
                        note="ours: SQLite load + match + serve + record the replay; Chronicle: "
                        "replay_trace of its exported fixture dir (all stubbed); "
                        "target ≥ 30,000 steps/s",
                    )
                )

            try:
                if n > VCR_MAX_STEPS:
                    if vcr_small is None:
                        vcr_small = 1_000 / (_vcr(payloads[:1_000], 1, tmp) / 1e9)
                    # O(n²): the 10x larger cassette plays at about a tenth of the rate.
                    rows.append(
                        row(
                            f"replay {n:,} steps vs VCR.py",
                            ours,
                            unit="steps/s",
                            peer=None,
                            peer_name="vcrpy (httpx)",
                            higher_is_better=True,
                            note=f"not run: VCR.py scans the cassette for every request "
                            f"(quadratic); 1,000 played at {vcr_small:,.0f} req/s, {n:,} would "
                            f"take ~{(n / 1_000) ** 2 * 1_000 / vcr_small:,.0f} s",
                        )
                    )
                else:
                    # one repeat: VCR.py takes ~15 s for 1,000 requests on a 2-core VM
                    peer = n / (_vcr(payloads, 1 if n >= 1_000 else repeats, tmp) / 1e9)
                    if n == 1_000:
                        vcr_small = peer
                    rows.append(
                        row(
                            f"replay {n:,} steps vs VCR.py",
                            ours,
                            unit="steps/s",
                            peer=peer,
                            peer_name="vcrpy (httpx)",
                            higher_is_better=True,
                            note="VCR.py: cassette load + play N httpx requests (record_mode=none)",
                        )
                    )
            except ImportError as exc:
                rows.append(
                    row(
                        f"replay {n:,} steps vs VCR.py",
                        ours,
                        unit="steps/s",
                        higher_is_better=True,
                        note=f"vcrpy/httpx not installed ({exc})",
                    )
                )
        n = sizes[-1]
        rows.append(
            row(
                f"replay {n:,} steps, peak memory",
                _peak_mb([payload_1kb(i) for i in range(n)], tmp),
                unit="MB",
                note="tracemalloc peak over load + replay + recording the replay (1 KB in/out "
                "a step; the source's events stay in memory while it is replayed)",
            )
        )
    return rows
