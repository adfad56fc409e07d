"""Cassette lookup: a dict keyed by canonical input, against the linear-scan matcher of simple
fixture libraries (walk the recorded calls, compare each input until one is equal)."""

from __future__ import annotations

import random
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import orjson

from bench import Row, median_ns, no_gc, now_ns, row

__all__ = ["run"]


def _boundary() -> Any:
    import replayable as rp

    @rp.boundary(kind="llm", name="bench.cassette:complete")
    def complete(prompt: str, model: str = "gpt-4o-mini", temperature: float = 0.0) -> str:
        raise AssertionError("a replayed cassette never calls the model")

    return complete


def _inputs(n: int) -> list[dict[str, Any]]:
    return [
        {"model": "gpt-4o-mini", "prompt": f"question {i}: what is {i} squared?", "temperature": 0}
        for i in range(n)
    ]


def _write(path: Path, inputs: list[dict[str, Any]]) -> None:
    from replayable import canonical
    from replayable.boundary import get_boundary

    b = get_boundary("bench.cassette:complete")
    with path.open("wb") as fh:
        for i, inp in enumerate(inputs):
            data = canonical.snapshot(inp)
            line = {
                "boundary": b.name,
                "error": None,
                "input": inp,
                "key": canonical.input_key(b, data),
                "kind": "llm",
                "output": f"answer {i}",
            }
            fh.write(orjson.dumps(line, option=orjson.OPT_SORT_KEYS) + b"\n")


def _linear(entries: list[dict[str, Any]], name: str, inp: dict[str, Any]) -> Any:
    for e in entries:
        if e["boundary"] == name and e["input"] == inp:
            return e["output"]
    raise LookupError(inp)


def _lookup_ns(n: int, queries: int, repeats: int) -> tuple[float, float, float]:
    """(ours ns/lookup, linear ns/lookup, ours load ms) for a cassette of ``n`` entries."""
    import replayable as rp

    complete = _boundary()
    inputs = _inputs(n)
    rng = random.Random(7)
    picks = [inputs[rng.randrange(n)] for _ in range(queries)]
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "tape.jsonl"
        _write(path, inputs)
        t0 = now_ns()
        with rp.cassette(path, mode="replay"):
            pass
        load_ms = (now_ns() - t0) / 1e6

        def ours() -> int:
            with rp.cassette(path, mode="replay") as tape:
                tape._cursor.clear()  # repeated queries must not walk past a recording
                with no_gc():
                    t = now_ns()
                    for p in picks:
                        complete(**p)
                    return now_ns() - t

        entries = [orjson.loads(line) for line in path.read_bytes().splitlines()]
        name = "bench.cassette:complete"

        def linear() -> int:
            with no_gc():
                t = now_ns()
                for p in picks:
                    _linear(entries, name, dict(p))
                return now_ns() - t

        return (
            median_ns(ours, repeats) / queries,
            median_ns(linear, repeats) / queries,
            load_ms,
        )


def _suite_ms(calls: int, repeats: int) -> float:
    """Wall time to open a cassette of ``calls`` recordings and replay every one of them."""
    import replayable as rp

    complete = _boundary()
    inputs = _inputs(calls)
    with TemporaryDirectory() as tmp:
        path = Path(tmp) / "suite.jsonl"
        _write(path, inputs)

        def once() -> int:
            t = now_ns()
            with rp.cassette(path, mode="replay"):
                for p in inputs:
                    complete(**p)
            return now_ns() - t

        return median_ns(once, repeats) / 1e6


def run(quick: bool = False) -> list[Row]:
    """Lookup cost per call for 1,000 and 100,000 entries; a 1,000-call suite's replay time."""
    sizes = (1_000, 10_000) if quick else (1_000, 100_000)
    queries = 200 if quick else 2_000
    repeats = 2 if quick else 5
    rows = []
    for n in sizes:
        ours, linear, load_ms = _lookup_ns(n, queries if n <= 10_000 else queries // 10, repeats)
        rows.append(
            row(
                f"cassette lookup, {n:,} entries",
                ours / 1000,
                unit="µs/call",
                peer=linear / 1000,
                peer_name="linear-scan matcher",
                note=f"full boundary call in replay mode (bind, canonical key, dict hit, "
                f"decode) vs scanning recorded inputs for an equal one; file loads in "
                f"{load_ms:.0f} ms",
            )
        )
    suite = _suite_ms(1_000, repeats)
    rows.append(
        row(
            "cassette suite, 1,000 recorded calls",
            suite,
            unit="ms",
            note="open the file and replay all 1,000 calls; target: well under 1 s",
        )
    )
    return rows


if __name__ == "__main__":
    for r in run():
        ratio = f"{r['ratio']:.4f}" if r["ratio"] else "-"
        peer = "-" if r["peer"] is None else f"{r['peer']:.2f}"
        print(f"{r['benchmark']}: ours {r['ours']:.2f} {r['unit']}, peer {peer}, ratio {ratio}")
