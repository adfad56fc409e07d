"""``python -m bench [--quick] [--only TOPIC ...] [--json PATH]``: run benchmarks, print a table.

Every ``bench/bench_<topic>.py`` module is discovered and run in one process; the ones named in
:data:`EXPECTED` but not written yet are listed as missing rather than failing the run.
Results also go to ``bench/results.json`` (gitignored).
"""

from __future__ import annotations

import argparse
import importlib
import json
import math
import pkgutil
import sys
import time
import traceback
from pathlib import Path
from typing import Any

import bench
from bench import Row, machine, row

EXPECTED = ("overhead", "replay", "key", "cassette", "store")
"""Topics in the order they print; other ``bench_*`` modules follow in name order."""

RESULTS = Path(__file__).with_name("results.json")


def discover() -> list[str]:
    """Topics of the ``bench_*`` modules present, expected ones first."""
    found = sorted(
        m.name.removeprefix("bench_")
        for m in pkgutil.iter_modules(bench.__path__)
        if m.name.startswith("bench_")
    )
    return [t for t in EXPECTED if t in found] + [t for t in found if t not in EXPECTED]


def run_topic(topic: str, quick: bool) -> tuple[list[Row], float]:
    """Rows of one benchmark module (a failing module yields one row saying why)."""
    t0 = time.perf_counter()
    try:
        module = importlib.import_module(f"bench.bench_{topic}")
        rows = list(module.run(quick=quick))
    except Exception as exc:
        traceback.print_exc(file=sys.stderr)
        rows = [row(topic, float("nan"), unit="", note=f"failed: {type(exc).__name__}: {exc}")]
    for r in rows:
        r.setdefault("topic", topic)
    return rows, time.perf_counter() - t0


def _num(value: float | None) -> str:
    if value is None:
        return "—"
    if math.isnan(value):
        return "n/a"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _json_safe(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def table(rows: list[Row]) -> str:
    """A Markdown table of the rows (pastes into the README as it is)."""
    lines = [
        "| benchmark | ours | peer | peer value | unit | ratio | note |",
        "|---|---:|---|---:|---|---:|---|",
    ]
    for r in rows:
        ratio = "—" if r.get("ratio") is None else f"{r['ratio']:.2f}×"
        lines.append(
            f"| {r['benchmark']} | {_num(r['ours'])} | {r.get('peer_name') or '—'} "
            f"| {_num(r.get('peer'))} | {r['unit']} | {ratio} | {r.get('note', '')} |"
        )
    return "\n".join(lines)


def describe(m: dict[str, Any]) -> str:
    """One line naming the machine."""
    return f"{m['cpu']}, {m['cores']} cores, {m['implementation']} {m['python']}, {m['platform']}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes (a smoke test)")
    parser.add_argument("--only", nargs="*", metavar="TOPIC", help="run only these topics")
    parser.add_argument("--json", type=Path, default=RESULTS, help="where to write results")
    args = parser.parse_args(argv)

    present = discover()
    topics = present if not args.only else [t for t in present if t in args.only]
    m = machine()
    print(f"machine: {describe(m)}")
    print(f"mode: {'quick' if args.quick else 'full'}; topics: {', '.join(topics)}\n", flush=True)

    started = time.perf_counter()
    rows: list[Row] = []
    timings: dict[str, float] = {}
    for topic in topics:
        print(f"running bench_{topic} ...", file=sys.stderr, flush=True)
        topic_rows, seconds = run_topic(topic, args.quick)
        rows.extend(topic_rows)
        timings[topic] = seconds
    if not args.only:
        for topic in EXPECTED:
            if topic not in present:
                missing = row(
                    topic, float("nan"), unit="", note=f"bench/bench_{topic}.py not written yet"
                )
                rows.append({**missing, "topic": topic})
    total = time.perf_counter() - started

    print(table(rows))
    print(
        "\nratio: ours/peer for costs (µs), peer/ours for throughputs (steps/s): "
        "below 1× means replayable is ahead."
    )
    print(f"total {total:.1f} s")
    args.json.write_text(
        json.dumps(
            {
                "machine": m,
                "quick": args.quick,
                "seconds": round(total, 2),
                "timings": {k: round(v, 2) for k, v in timings.items()},
                "rows": [{k: _json_safe(v) for k, v in r.items()} for r in rows],
            },
            indent=2,
            default=str,
        )
        + "\n",
        encoding="utf-8",
    )
    print(f"results written to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
