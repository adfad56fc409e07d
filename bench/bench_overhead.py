"""Per-call cost of recording a boundary (1 KB in, 1 KB out), against what users would pick.

The wall figures count the whole cost: a loop of N calls *including* the final flush
(``rp.flush()`` after the block, which only hands off; OTel's ``force_flush``; Chronicle's store;
VCR.py's cassette save), divided by N, minus the same loop with nothing recording.

The agent/writer split is CPU time: the agent's thread (``time.thread_time``, the loop and the
block's exit) against the whole process (``time.process_time``, the flush included: the writer
thread, SQLite), next to an OTel span measured the same two ways (its batch exporter thread in
the process figure).
"""

from __future__ import annotations

import json
import statistics
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench import Row, fresh_gc, median_ns, no_gc, now_ns, output_1kb, payload_1kb, row
from bench._peers import chronicle_version, loopback_server

__all__ = ["run"]

_OUT = output_1kb()


def call_model(model: str, messages: list[dict[str, Any]], temperature: float) -> Any:
    """The function under every recorder: returns a prebuilt 1 KB completion."""
    return _OUT


def _loop_ns(fn: Callable[..., Any], payloads: list[dict[str, Any]]) -> int:
    t0 = now_ns()
    for p in payloads:
        fn(**p)
    return now_ns() - t0


def _bare(payloads: list[dict[str, Any]], repeats: int) -> float:
    def once() -> int:
        fresh_gc()
        return _loop_ns(call_model, payloads)

    return median_ns(once, repeats) / len(payloads)


def _cpu_bare(payloads: list[dict[str, Any]], repeats: int) -> float:
    """The bare loop's CPU time per call (ns), least of ``repeats``."""

    def once() -> int:
        fresh_gc()
        t0 = time.thread_time_ns()
        for p in payloads:
            call_model(**p)
        return time.thread_time_ns() - t0

    return min(once() for _ in range(repeats)) / len(payloads)


def _ours_cpu(payloads: list[dict[str, Any]], repeats: int, tmp: Path) -> tuple[float, float]:
    """(agent-thread CPU ns, whole-process CPU ns) per recorded call, medians."""
    import replayable as rp
    from replayable.store.sqlite import SQLiteStore

    wrapped = rp.boundary(name="bench:call_model", kind="llm")(call_model)
    agent: list[int] = []
    whole: list[int] = []
    for _ in range(repeats):
        store = SQLiteStore(tmp / f"cpu-{uuid.uuid4().hex}.db")
        try:
            fresh_gc()
            p0, t0 = time.process_time_ns(), time.thread_time_ns()
            with rp.record(store=store, name="bench-overhead"):
                for p in payloads:
                    wrapped(**p)
            agent.append(time.thread_time_ns() - t0)
            rp.flush()
            whole.append(time.process_time_ns() - p0)
        finally:
            store.close()
    n = len(payloads)
    return statistics.median(agent) / n, statistics.median(whole) / n


def _ours(payloads: list[dict[str, Any]], repeats: int, tmp: Path) -> float:
    import replayable as rp
    from replayable._writer import stop_writer
    from replayable.store.sqlite import SQLiteStore

    wrapped = rp.boundary(name="bench:call_model", kind="llm")(call_model)

    def once() -> int:
        store = SQLiteStore(tmp / f"ours-{uuid.uuid4().hex}.db")
        try:
            fresh_gc()
            t0 = now_ns()
            with rp.record(store=store, name="bench-overhead") as run:
                for p in payloads:
                    wrapped(**p)
            rp.flush()
            elapsed = now_ns() - t0
            assert run.event_count == len(payloads), f"recorded {run.event_count} events"
            return elapsed
        finally:
            stop_writer(store)
            store.close()

    return median_ns(once, repeats) / len(payloads)


def _inactive(quick: bool) -> tuple[float, float]:
    """(bare ns/call, boundary-with-no-run ns/call), timeit style (GC off, tight loop)."""
    import replayable as rp

    wrapped = rp.boundary(name="bench:call_model_inactive", kind="llm")(call_model)
    p = payload_1kb()
    model, messages, temperature = p["model"], p["messages"], p["temperature"]
    n = 2_000 if quick else 200_000

    def loop(fn: Callable[..., Any]) -> int:
        rng = range(n)
        with no_gc():
            t0 = now_ns()
            for _ in rng:
                fn(model, messages, temperature=temperature)
            return now_ns() - t0

    repeats = 2 if quick else 7
    bare = median_ns(lambda: loop(call_model), repeats) / n
    ours = median_ns(lambda: loop(wrapped), repeats) / n
    return bare, ours


def _otel(payloads: list[dict[str, Any]], repeats: int) -> tuple[float, float, float]:
    """(wall ns, agent-thread CPU ns, whole-process CPU ns) per traced call, medians."""
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    # A queue big enough that no span is dropped: the same work as recording every call.
    provider.add_span_processor(
        BatchSpanProcessor(exporter, max_queue_size=max(2048, 2 * len(payloads)))
    )
    tracer = provider.get_tracer("bench")

    def traced(**kwargs: Any) -> Any:
        # OpenInference-style: the payload travels as JSON string attributes.
        with tracer.start_as_current_span(
            "call_model",
            attributes={"input.value": json.dumps(kwargs), "input.mime_type": "application/json"},
        ) as span:
            out = call_model(**kwargs)
            span.set_attribute("output.value", json.dumps(out))
            span.set_attribute("output.mime_type", "application/json")
            return out

    agent: list[int] = []
    whole: list[int] = []

    def once() -> int:
        exporter.clear()
        fresh_gc()
        p0, c0 = time.process_time_ns(), time.thread_time_ns()
        t0 = now_ns()
        for p in payloads:
            traced(**p)
        agent.append(time.thread_time_ns() - c0)
        provider.force_flush()
        elapsed = now_ns() - t0
        whole.append(time.process_time_ns() - p0)
        got = len(exporter.get_finished_spans())
        assert got == len(payloads), f"OTel exported {got} of {len(payloads)} spans"
        return elapsed

    try:
        n = len(payloads)
        wall = median_ns(once, repeats) / n
        return wall, statistics.median(agent) / n, statistics.median(whole) / n
    finally:
        provider.shutdown()


def _chronicle(payloads: list[dict[str, Any]], repeats: int, tmp: Path) -> float:
    import chronicle

    traced = chronicle.boundary("call_model", kind="tool")(call_model)

    def once() -> int:
        path = tmp / f"chronicle-{uuid.uuid4().hex}.jsonl"
        fresh_gc()
        t0 = now_ns()
        with chronicle.record("bench-overhead", store=str(path)):
            for p in payloads:
                traced(**p)
        elapsed = now_ns() - t0
        with open(path, "rb") as f:
            lines = sum(1 for _ in f)
        assert lines == len(payloads), f"Chronicle wrote {lines} of {len(payloads)} envelopes"
        return elapsed

    return median_ns(once, repeats) / len(payloads)


def _vcr(n: int, repeats: int, tmp: Path) -> tuple[float, float]:
    """(bare httpx request ns, VCR.py-recorded request ns), per request, cassette save included."""
    import httpx
    import vcr

    payloads = [payload_1kb(i) for i in range(n)]
    with loopback_server() as base, httpx.Client(base_url=base) as client:

        def bare_once() -> int:
            fresh_gc()
            t0 = now_ns()
            for p in payloads:
                client.post("/v1/chat/completions", json=p).json()
            return now_ns() - t0

        def vcr_once() -> int:
            path = tmp / f"vcr-{uuid.uuid4().hex}.yaml"
            fresh_gc()
            t0 = now_ns()
            with vcr.use_cassette(str(path), record_mode="once") as cassette:
                for p in payloads:
                    client.post("/v1/chat/completions", json=p).json()
            elapsed = now_ns() - t0
            assert len(cassette) == n, f"VCR.py recorded {len(cassette)} of {n} requests"
            return elapsed

        bare_once()  # warm the connection
        bare = median_ns(bare_once, repeats) / n
        rec = median_ns(vcr_once, repeats) / n
    return bare, rec


def run(quick: bool = False) -> list[Row]:
    """Recording overhead per call against a bare call, OTel, VCR.py and Chronicle."""
    n = 200 if quick else 5_000
    repeats = 2 if quick else 7
    payloads = [payload_1kb(i) for i in range(n)]
    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="replayable-bench-") as d:
        tmp = Path(d)
        _ours(payloads[: min(50, n)], 1, tmp)  # warm-up: imports, environment(), git lookup
        bare = _bare(payloads, repeats)
        ours_us = (_ours(payloads, repeats, tmp) - bare) / 1000
        rows.append(
            row(
                "record overhead, 1 KB in/out",
                ours_us,
                unit="µs/call",
                peer=bare / 1000,
                peer_name="bare call",
                note=f"N={n} calls incl. the final flush to SQLite; peer: the bare call itself",
            )
        )

        bare_cpu = _cpu_bare(payloads, repeats)
        agent_ns, whole_ns = _ours_cpu(payloads, repeats, tmp)
        agent_us, whole_us = (agent_ns - bare_cpu) / 1000, (whole_ns - bare_cpu) / 1000
        try:
            otel_wall, _otel_agent, otel_whole = _otel(payloads, repeats)
            otel_us = (otel_wall - bare) / 1000
            otel_cpu_us = (otel_whole - bare_cpu) / 1000
            rows.append(
                row(
                    "record, agent thread (CPU)",
                    agent_us,
                    unit="µs/call",
                    peer=otel_cpu_us,
                    peer_name="opentelemetry-sdk span, whole (CPU)",
                    note="ours: the agent thread's CPU (snapshot and hand-off); OTel: its span's "
                    "whole CPU, batch exporter included; target ratio ≤ 0.25",
                )
            )
            rows.append(
                row(
                    "record, writer thread (CPU)",
                    whole_us - agent_us,
                    unit="µs/call",
                    peer=otel_cpu_us,
                    peer_name="opentelemetry-sdk span, whole (CPU)",
                    note="process CPU minus the agent thread's: keys, redaction, hash chain, "
                    "SQLite inserts (rp.flush() counted)",
                )
            )
            rows.append(
                row(
                    "record, whole (CPU: agent + writer)",
                    whole_us,
                    unit="µs/call",
                    peer=otel_cpu_us,
                    peer_name="opentelemetry-sdk span, whole (CPU)",
                    note="process CPU of the loop and rp.flush(); target ratio ≤ 1",
                )
            )
            rows.append(
                row(
                    "record overhead vs OTel span",
                    ours_us,
                    unit="µs/call",
                    peer=otel_us,
                    peer_name="opentelemetry-sdk span",
                    note="span with payload as JSON attributes, BatchSpanProcessor to memory, "
                    "force_flush counted; target ratio ≤ 0.25",
                )
            )
        except ImportError as exc:
            rows.append(_missing("record overhead vs OTel span", ours_us, "opentelemetry-sdk", exc))

        version = chronicle_version()
        try:
            chron_us = (_chronicle(payloads, repeats, tmp) - bare) / 1000
            rows.append(
                row(
                    "record overhead vs Chronicle",
                    ours_us,
                    unit="µs/call",
                    peer=chron_us,
                    peer_name=f"agent-chronicle {version}",
                    note="chronicle.boundary + chronicle.record to its default JSONL store; "
                    "target ratio ≤ 0.15",
                )
            )
        except ImportError as exc:
            rows.append(_missing("record overhead vs Chronicle", ours_us, "agent-chronicle", exc))

        try:
            n_http = 40 if quick else 1_000
            bare_http, vcr_http = _vcr(n_http, 2 if quick else 5, tmp)
            rows.append(
                row(
                    "record overhead vs VCR.py",
                    ours_us,
                    unit="µs/call",
                    peer=(vcr_http - bare_http) / 1000,
                    peer_name="vcrpy (httpx, loopback)",
                    note=f"peer: per-request cost above a bare httpx POST "
                    f"({bare_http / 1000:.0f} µs) over N={n_http}, cassette save counted; "
                    "target ratio ≤ 0.1",
                )
            )
        except ImportError as exc:
            rows.append(_missing("record overhead vs VCR.py", ours_us, "vcrpy/httpx", exc))

    bare_ns, inactive_ns = _inactive(quick)
    rows.append(
        row(
            "inactive boundary overhead",
            (inactive_ns - bare_ns) / 1000,
            unit="µs/call",
            note=f"no run active: one context-variable read (bare call {bare_ns:.0f} ns); "
            "target ≤ 0.5 µs",
        )
    )
    return rows


def _missing(name: str, ours: float, peer: str, exc: BaseException) -> Row:
    return row(name, ours, unit="µs/call", note=f"{peer} not installed ({exc})")
