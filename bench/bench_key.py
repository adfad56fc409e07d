"""Canonical key of a realistic chat request, against the naive ``json.dumps`` hash."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from typing import Any

from bench import Row, chat_request, median_ns, no_gc, now_ns, row

__all__ = ["run"]


def naive_key(value: Any) -> str:
    """What people write first: sorted ``json.dumps``, ``default=str``, SHA-256."""
    return hashlib.sha256(json.dumps(value, sort_keys=True, default=str).encode()).hexdigest()


def _per_call_ns(fn: Callable[[Any], str], values: list[Any], loops: int, repeats: int) -> float:
    def once() -> int:
        with no_gc():
            t0 = now_ns()
            for _ in range(loops):
                for v in values:
                    fn(v)
            return now_ns() - t0

    return median_ns(once, repeats) / (loops * len(values))


def run(quick: bool = False) -> list[Row]:
    """µs per key: ``replayable.key`` vs ``sha256(json.dumps(sort_keys=True, default=str))``."""
    import replayable as rp

    values = [chat_request(i) for i in range(10)]
    loops = 5 if quick else 300
    repeats = 2 if quick else 7
    ours = _per_call_ns(rp.key, values, loops, repeats)
    naive = _per_call_ns(naive_key, values, loops, repeats)
    size = len(json.dumps(values[0]))
    return [
        row(
            "canonical key, chat request",
            ours / 1000,
            unit="µs/key",
            peer=naive / 1000,
            peer_name="sha256(json.dumps(sort_keys))",
            note=f"20 messages + 3 tool schemas ({size / 1024:.1f} KB); ours also drops "
            "transient keys and refuses unserializable values; target ratio ≤ 2",
        )
    ]
