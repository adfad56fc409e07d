"""Personal data: how well the detectors do on a labelled corpus, and what ``pii=True`` costs.

- Precision and recall per kind on ``bench/pii_corpus.json`` (400 agent payloads in six
  locales: chat messages, tool-call JSON, CRM records, free text, model answers; written by
  ``python -m bench.pii_corpus``). Each item is scanned the way a recording scans it (every
  string of a JSON payload), under the region its locale would configure, with the corpus's
  customer names listed (``names=``). A found value counts when its kind and exact text match
  a label.
- The per-call cost of recording with ``pii=True`` against recording without it: the same
  loop as ``bench_overhead`` (1 KB in, 1 KB out, flush counted), the two alternated in one
  process; once with the usual chat payload (no personal data in it) and once with a CRM
  record full of it.
"""

from __future__ import annotations

import json
import os
import statistics
import tempfile
import time
import uuid
from pathlib import Path
from typing import Any

from bench import Row, fresh_gc, now_ns, output_1kb, payload_1kb, row

__all__ = ["run", "score"]

CORPUS = Path(__file__).with_name("pii_corpus.json")
KEY = "bench-only-key-" + "0" * 32


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (k, *_strings(v))]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


def score(items: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """Per kind: true positives, false positives, false negatives."""
    from replayable._pii_detect import Detector

    names = sorted({it["name"] for it in items})
    detectors: dict[str, Detector] = {}
    counts: dict[str, dict[str, int]] = {}
    for it in items:
        region = it["region"]
        det = detectors.get(region)
        if det is None:
            det = detectors[region] = Detector(
                ("email", "phone", "card", "iban", "ip", "ssn"), names, region
            )
        text = it["text"]
        try:
            parsed = json.loads(text)
        except ValueError:
            parsed = text
        found = []
        for s in _strings(parsed):
            found += [(h.kind, s[h.start : h.end]) for h in det.find(s)]
        expected = [(lab["kind"], lab["value"]) for lab in it["labels"]]
        remaining = list(expected)
        for kind, value in found:
            c = counts.setdefault(kind, {"tp": 0, "fp": 0, "fn": 0})
            hit = next(
                (e for e in remaining if e[0] == kind and e[1].casefold() == value.casefold()), None
            )
            if hit is not None:
                remaining.remove(hit)
                c["tp"] += 1
            else:
                c["fp"] += 1
        for kind, _ in remaining:
            counts.setdefault(kind, {"tp": 0, "fp": 0, "fn": 0})["fn"] += 1
    return counts


def _crm(i: int) -> dict[str, Any]:
    return {
        "customer": {
            "name": "Dana Whitfield",
            "email": f"dana.whitfield{i % 7}@acme.io",
            "phone": "+1 415-867-5309",
            "iban": "DE89 3704 0044 0532 0130 00",
        },
        "note": "Asked for a refund of order 88213 to card 4111 1111 1111 1111; "
        "logged in from 81.2.69.160. " + "Follow up next week about the replacement. " * 14,
    }


def _record_ns(payloads: list[dict[str, Any]], pii: bool, tmp: Path) -> tuple[float, float, float]:
    """(wall ns, agent-thread CPU ns, whole-process CPU ns) per call, ``rp.flush()`` counted
    in the wall and process figures (the writer pseudonymizes, keys, chains and inserts)."""
    import replayable as rp
    from replayable._writer import stop_writer
    from replayable.store.sqlite import SQLiteStore

    fn = rp.boundary(name="bench:pii_call", kind="llm")(lambda **kw: _OUT)
    store = SQLiteStore(tmp / f"pii-{uuid.uuid4().hex}.db")
    try:
        fresh_gc()
        p0, c0, t0 = time.process_time_ns(), time.thread_time_ns(), now_ns()
        with rp.record(store=store, name="bench-pii", pii=rp.PII(key=KEY) if pii else False):
            for p in payloads:
                fn(**p)
        agent = time.thread_time_ns() - c0
        rp.flush()
        wall, whole = now_ns() - t0, time.process_time_ns() - p0
        n = len(payloads)
        return wall / n, agent / n, whole / n
    finally:
        stop_writer(store)
        store.close()


_OUT = output_1kb()


def _overhead(
    payloads: list[dict[str, Any]], repeats: int, tmp: Path
) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """(without pii, with pii): each the medians (µs per call) of wall, agent-thread CPU and
    whole-process CPU over alternated runs."""
    off: list[tuple[float, float, float]] = []
    on: list[tuple[float, float, float]] = []
    for _ in range(repeats):
        off.append(_record_ns(payloads, False, tmp))
        on.append(_record_ns(payloads, True, tmp))

    def medians(xs: list[tuple[float, float, float]]) -> tuple[float, ...]:
        return tuple(statistics.median(x[i] for x in xs) / 1000 for i in range(3))

    return medians(off), medians(on)


def _overhead_rows(
    label: str, off: tuple[float, ...], on: tuple[float, ...], note: str
) -> list[Row]:
    out = []
    for i, how in enumerate(
        ("wall incl. rp.flush()", "agent thread CPU", "whole CPU (writer too)")
    ):
        out.append(
            row(
                f"record with pii=True vs without, {label}, {how}",
                on[i],
                unit="µs/call",
                peer=off[i],
                peer_name="record, pii off",
                note=note if i == 0 else "",
            )
        )
    return out


def run(quick: bool = False) -> list[Row]:
    """Precision/recall per kind, and pii=True's per-call overhead."""
    items = json.loads(CORPUS.read_text(encoding="utf-8"))
    rows: list[Row] = []
    counts = score(items)
    for kind in ("email", "phone", "card", "iban", "ip", "ssn", "name"):
        c = counts.get(kind, {"tp": 0, "fp": 0, "fn": 0})
        found, labelled = c["tp"] + c["fp"], c["tp"] + c["fn"]
        precision = c["tp"] / found if found else float("nan")
        recall = c["tp"] / labelled if labelled else float("nan")
        rows.append(
            row(
                f"pii {kind}: precision",
                precision,
                unit="",
                note=f"{c['tp']} right, {c['fp']} wrong of {found} found",
            )
        )
        rows.append(
            row(
                f"pii {kind}: recall",
                recall,
                unit="",
                note=f"{c['tp']} of {labelled} labelled ({len(items)} payloads, 6 locales)",
            )
        )
    n = 100 if quick else 2000
    repeats = 2 if quick else 7
    with tempfile.TemporaryDirectory(prefix="replayable-bench-pii-") as d:
        tmp = Path(d)
        os.environ.pop("REPLAYABLE_PII", None)
        plain = [payload_1kb(i) for i in range(n)]
        _record_ns(plain[:50], True, tmp)  # warm-up: imports, phonenumbers metadata
        off, on = _overhead(plain, repeats, tmp)
        rows += _overhead_rows(
            "chat payload",
            off,
            on,
            "1 KB in / 1 KB out, no personal data in it (the common call); target ratio ≤ 1.2",
        )
        crm = [{"messages": [{"role": "tool", "content": json.dumps(_crm(i))}]} for i in range(n)]
        off, on = _overhead(crm, repeats, tmp)
        rows += _overhead_rows(
            "CRM payload",
            off,
            on,
            "1 KB tool result holding a name, email, phone, IBAN, card and IP: every value "
            "found and replaced",
        )
    return rows
