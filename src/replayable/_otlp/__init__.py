"""Runs other tools traced, over OTLP: read export requests and files, map their spans to
steps, keep each trace as a run (``replayable import --format otlp``, ``replayable collect``).

- :mod:`._decode`: OTLP protobuf and OTLP/JSON (gzip) to plain spans, with the bounds.
- :mod:`._conventions`: what a span means under GenAI, OpenInference, Langfuse or Logfire.
- :mod:`._run`: one trace's spans as a run and its chained events.
- :mod:`._collect`: the OTLP/HTTP receiver that assembles traces as they arrive.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

from replayable._otlp._decode import (
    MAX_BODY,
    MAX_SPANS,
    Span,
    decode_json,
    decode_protobuf,
    decode_request,
    gunzip,
)
from replayable._otlp._run import build_run, by_trace, run_id_of, source_line
from replayable.errors import InvalidOtlp
from replayable.store.base import event_to_row

if TYPE_CHECKING:
    from replayable._pii import PII, Pseudonymizer
    from replayable.store.base import Store
    from replayable.trace import Event, Run

__all__ = [
    "MAX_BODY",
    "MAX_SPANS",
    "Span",
    "build_run",
    "by_trace",
    "decode_request",
    "import_otlp",
    "read_otlp_file",
    "run_id_of",
    "runs_of",
    "source_line",
]

_GZIP_MAGIC = b"\x1f\x8b"
_UTF8_BOM = b"\xef\xbb\xbf"


def read_otlp_file(path: str | os.PathLike[str], *, limit: int = MAX_BODY * 4) -> list[Span]:
    """The spans of an OTLP file: the Collector file exporter's JSON lines (one export
    request a line), one OTLP/JSON export request, or one protobuf export request; gzip or not.
    Files (and what gzip unpacks) over ``limit`` bytes are refused (413).

    Raises :class:`InvalidOtlp` naming the line that cannot be read.
    """
    p = Path(path)
    try:
        size = p.stat().st_size
        if size > limit:
            raise InvalidOtlp(f"{p} is {size} bytes, over the import bound of {limit}", status=413)
        with p.open("rb") as fh:  # at most limit + 1 bytes: a device or a pipe has no size
            data = fh.read(limit + 1)
    except OSError as exc:
        raise InvalidOtlp(f"cannot read {p}: {exc.strerror or exc}") from exc
    if len(data) > limit:
        raise InvalidOtlp(f"{p} is over the import bound of {limit} bytes", status=413)
    if data.startswith(_GZIP_MAGIC):
        data = gunzip(data, limit)
    data = data.removeprefix(_UTF8_BOM)  # Windows editors and PowerShell write one
    text = data.lstrip()
    if not text:
        raise InvalidOtlp(f"{p} is empty: no spans to import")
    if not text.startswith(b"{"):
        return _protobuf_file(p, data)
    lines = data.splitlines()
    if len([ln for ln in lines if ln.strip()]) > 1 and lines[0].strip().endswith(b"}"):
        spans: list[Span] = []
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                spans.extend(decode_json(line))
            except InvalidOtlp as exc:
                raise InvalidOtlp(f"{p}: {exc}", line=n, status=exc.status) from None
            if len(spans) > MAX_SPANS:
                raise InvalidOtlp(f"{p} has over {MAX_SPANS} spans", line=n, status=413)
        return spans
    try:
        return decode_json(data)
    except InvalidOtlp as exc:
        raise InvalidOtlp(f"{p}: {exc}", status=exc.status) from None


def _protobuf_file(p: Path, data: bytes) -> list[Span]:
    """The spans of a file that is no JSON object: a protobuf export request; a file that
    parses as other JSON (an array, null) is refused as the JSON it is, naming the file."""
    try:
        return decode_protobuf(data)
    except InvalidOtlp as exc:
        try:
            orjson.loads(data)
        except orjson.JSONDecodeError:
            raise InvalidOtlp(f"{p}: {exc}", status=exc.status) from None
    try:
        return decode_json(data)
    except InvalidOtlp as exc:
        raise InvalidOtlp(f"{p}: {exc}", status=exc.status) from None


def runs_of(spans: list[Span], pii: Pseudonymizer | None = None) -> list[tuple[Run, list[Event]]]:
    """Every trace in ``spans`` as a run with its events (one trace, one run), checked
    whole before any is returned; ``pii``: personal data pseudonymized as a recording does."""
    return [build_run(trace, pii) for trace in by_trace(spans).values()]


def import_otlp(
    path: str | os.PathLike[str],
    store: Store | str | None = None,
    *,
    pii: PII | bool | None = None,
) -> list[tuple[Run, bool]]:
    """Import the traces in an OTLP file as runs, all or nothing: every trace is read and
    mapped before any run is written. Returns each run with whether it was written (False:
    a run of that trace was already in the store).

    ``store`` is a store or its URL (default: the default store). ``pii``: personal data
    pseudonymized before anything is written, as ``rp.record(pii=...)`` does (default: the
    store's default, else ``$REPLAYABLE_PII``).
    """
    from replayable._pii import for_record
    from replayable.store import open_store

    spans = read_otlp_file(path)
    target = open_store(store)
    runs = runs_of(spans, for_record(pii, target))  # a missing key fails before any write
    if not runs:
        raise InvalidOtlp(f"{path} has no spans to import")
    out: list[tuple[Run, bool]] = []
    for run, events in runs:
        written = target.put_run(run, [event_to_row(e) for e in events])
        run.store = target
        out.append((run, written))
    return out
