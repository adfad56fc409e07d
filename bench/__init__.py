"""Benchmarks: replayable side by side with the tools users would pick instead.

Run them all with ``python -m bench`` (``--quick`` for tiny sizes). Each ``bench_<topic>.py``
module exposes ``run(quick: bool = False) -> list[dict]``; every row is built by :func:`row`.
This module holds what they share: rows, timing, payloads and a description of the machine.
"""

from __future__ import annotations

import gc
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

__all__ = [
    "Row",
    "chat_request",
    "fresh_gc",
    "machine",
    "median_ns",
    "no_gc",
    "now_ns",
    "output_1kb",
    "payload_1kb",
    "row",
]

Row = dict[str, Any]


def row(
    benchmark: str,
    ours: float,
    *,
    unit: str,
    peer: float | None = None,
    peer_name: str | None = None,
    note: str = "",
    higher_is_better: bool = False,
) -> Row:
    """One result row. ``ratio`` is ours/peer for costs and peer/ours for throughputs, so a
    ratio below 1 always means replayable is ahead."""
    ratio: float | None = None
    if peer is not None and peer > 0 and ours > 0:
        ratio = peer / ours if higher_is_better else ours / peer
    return {
        "benchmark": benchmark,
        "ours": ours,
        "peer": peer,
        "peer_name": peer_name,
        "unit": unit,
        "ratio": ratio,
        "note": note,
    }


@contextmanager
def no_gc() -> Iterator[None]:
    """Collect, then keep the cyclic GC out of a timed section (as ``timeit`` does)."""
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def fresh_gc() -> None:
    """Start a timed section from a clean heap (the GC stays on: its cost is part of the cost)."""
    gc.collect()


def median_ns(once: Callable[[], int], repeats: int) -> float:
    """Median of ``repeats`` runs of ``once`` (which returns the nanoseconds it measured)."""
    return float(statistics.median(once() for _ in range(max(1, repeats))))


def now_ns() -> int:
    """The benchmark clock."""
    return time.perf_counter_ns()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict[str, Any]:
    """The machine the numbers come from: CPU, cores, Python, platform."""
    return {
        "cpu": _cpu_model(),
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "implementation": platform.python_implementation(),
        "platform": platform.platform(terse=True),
    }


_WORDS = (
    "the customer asked about the refund policy for orders shipped after the holiday sale "
    "and whether the warehouse in Lyon can expedite replacement parts for model X-200 units "
)


def _text(n: int, salt: int = 0) -> str:
    base = (_WORDS * (n // len(_WORDS) + 2))[salt % 17 :]
    return base[:n]


def payload_1kb(i: int = 0) -> dict[str, Any]:
    """Keyword arguments of a chat-style call whose JSON is about 1 KB."""
    return {
        "model": "gpt-4o-mini",
        "messages": [
            {"role": "system", "content": _text(200, i)},
            {"role": "user", "content": _text(380, i + 1)},
            {"role": "assistant", "content": _text(200, i + 2)},
            {"role": "user", "content": f"step {i}: " + _text(120, i + 3)},
        ],
        "temperature": 0.2,
    }


def output_1kb(i: int = 0) -> dict[str, Any]:
    """A chat-completion-like return value whose JSON is about 1 KB."""
    return {
        "id": f"chatcmpl-{i:08d}",
        "model": "gpt-4o-mini-2024-07-18",
        "choices": [
            {
                "index": 0,
                "finish_reason": "stop",
                "message": {"role": "assistant", "content": _text(820, i)},
            }
        ],
        "usage": {"prompt_tokens": 212, "completion_tokens": 161, "total_tokens": 373},
    }


def chat_request(i: int = 0) -> dict[str, Any]:
    """A realistic chat request: 20 messages (with tool calls and results), 3 tool schemas."""
    tools = []
    for name, props in (
        ("search_orders", {"customer_id": "string", "status": "string", "limit": "integer"}),
        ("refund_order", {"order_id": "string", "amount": "number", "reason": "string"}),
        ("send_email", {"to": "string", "subject": "string", "body": "string"}),
    ):
        tools.append(
            {
                "type": "function",
                "function": {
                    "name": name,
                    "description": f"{name.replace('_', ' ')}: " + _text(120, len(name)),
                    "parameters": {
                        "type": "object",
                        "properties": {
                            p: {"type": t, "description": f"The {p.replace('_', ' ')}."}
                            for p, t in props.items()
                        },
                        "required": list(props)[:2],
                        "additionalProperties": False,
                    },
                },
            }
        )
    messages: list[dict[str, Any]] = [{"role": "system", "content": _text(600, i)}]
    for turn in range(19):
        if turn % 4 == 2:
            messages.append(
                {
                    "role": "assistant",
                    "content": None,
                    "tool_calls": [
                        {
                            "id": f"call_{turn}",
                            "type": "function",
                            "function": {
                                "name": "search_orders",
                                "arguments": f'{{"customer_id": "c-{turn}", "limit": 5}}',
                            },
                        }
                    ],
                }
            )
        elif turn % 4 == 3:
            messages.append(
                {"role": "tool", "tool_call_id": f"call_{turn - 1}", "content": _text(300, turn)}
            )
        else:
            role = "user" if turn % 2 == 0 else "assistant"
            messages.append({"role": role, "content": _text(240, turn + i)})
    return {
        "model": "gpt-4o-2024-08-06",
        "messages": messages,
        "tools": tools,
        "tool_choice": "auto",
        "temperature": 0.0,
        "max_tokens": 1024,
        "seed": 7,
    }
