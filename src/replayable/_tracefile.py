"""Trace files: one run as JSONL, written atomically and read back streamed.

A trace file is a header line (format, version, run with its environment), then one event a
line in ``seq`` (start) order, field names sorted so files diff well in git. The hashes in it are
the run's chain (see :mod:`replayable._chain`), so a file verifies on its own.

Everything here is re-exported by :mod:`replayable.trace`, the public home of these names
(import them from there; this module takes the data model from it and verification from
:mod:`replayable._chain`).
"""

from __future__ import annotations

import io
import os
import re
import tempfile
from collections.abc import Generator, Iterable, Iterator
from pathlib import Path
from typing import IO, Any

import orjson

from replayable._chain import Verification, verify_pairs, verify_run
from replayable._model import Event, Run
from replayable.errors import ReplayableError, TraceCorrupt

__all__ = [
    "MAX_LINE_BYTES",
    "TRACE_FORMAT",
    "TRACE_VERSION",
    "check_run_id",
    "check_trace",
    "iter_trace",
    "parse_trace",
    "read_trace",
    "read_trace_header",
    "trace_lines",
    "verify_trace",
    "write_trace",
]

TRACE_FORMAT = "replayable-trace"
TRACE_VERSION = 2
"""Version 2 adds ``hash_version`` to the header (hash format 2); version 1 files still read."""
_READABLE_VERSIONS = (1, 2)

MAX_LINE_BYTES = 64 * 1024 * 1024
"""The longest line (newline included) a trace file may have. One line holds one event, and a
stored value is cut at 1 MB, so a longer line is damage or not a trace at all: it is refused
after reading this much, so a file whose line never ends cannot take the machine's memory."""

_SORTED = orjson.OPT_SORT_KEYS


def trace_lines(run: Run, events: Iterable[Event]) -> Iterator[bytes]:
    """The lines of a trace file (each ending in a newline): the header, then events by seq.

    Top-level keys are sorted; recorded values keep their stored order (what is hashed).
    """
    header = {"format": TRACE_FORMAT, "version": TRACE_VERSION, "run": run.to_dict()}
    yield orjson.dumps(header, option=_SORTED) + b"\n"
    for ev in sorted(events, key=lambda e: e.seq):
        # Fields in sorted order (to_dict gives them so); values keep their recorded order.
        yield orjson.dumps(ev.to_dict()) + b"\n"


def write_trace(run: Run, events: Iterable[Event], path: str | os.PathLike[str]) -> Path:
    """Write one run as a JSONL trace file, atomically (temp file + rename).

    A target that exists and is not a regular file (a pipe, ``/dev/stdout``, ``/dev/null``) is
    written in place instead, so it stays what it is.

    >>> import os
    >>> import replayable as rp
    >>> lookup = rp.boundary(kind="tool")(lambda name: {"name": name, "id": 7})
    >>> with rp.record() as run:
    ...     lookup("Bob")["id"]
    7
    >>> write_trace(run, run.events(), os.path.join(tmp_dir, "traces", "incident.jsonl")).name
    'incident.jsonl'
    """
    check_run_id(run.id)
    target = Path(path)
    try:
        if target.exists() and not target.is_file():
            if target.is_dir():
                raise ReplayableError(f"cannot write trace file {target}: it is a directory")
            with target.open("wb") as fh:
                fh.writelines(trace_lines(run, events))
            return target
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    except OSError as exc:
        raise ReplayableError(f"cannot write trace file {target}: {exc.strerror or exc}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.writelines(trace_lines(run, events))
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except BaseException as exc:
        Path(tmp).unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise ReplayableError(
                f"cannot write trace file {target}: {exc.strerror or exc}"
            ) from None
        raise
    return target


_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def check_run_id(run_id: Any) -> str:
    """``run_id`` if it is a valid run id, else :class:`TraceCorrupt`.

    A run id is 1-128 ASCII letters, digits, ``.``, ``_`` and ``-``, starting with a letter or
    digit, with no ``..``: it becomes a file name (``export``), so it must never be a path.
    """
    if not isinstance(run_id, str) or not _RUN_ID.fullmatch(run_id) or ".." in run_id:
        raise TraceCorrupt(
            f"invalid run id {run_id!r}: a run id is letters, digits, '.', '_' and '-' "
            "(at most 128, no '..')"
        )
    return run_id


def read_line(fh: IO[bytes], where: str, lineno: int) -> bytes:
    """The next line of ``fh`` (``b""`` at the end), read with bounded memory: a line longer
    than :data:`MAX_LINE_BYTES` raises :class:`TraceCorrupt` naming ``where`` and ``lineno``."""
    raw = fh.readline(MAX_LINE_BYTES + 1)
    if len(raw) > MAX_LINE_BYTES:
        raise TraceCorrupt(
            f"{where}: line {lineno} is longer than {MAX_LINE_BYTES // (1024 * 1024)} MiB "
            "(a trace line holds one event): not a trace file, or a damaged one",
            line=lineno,
        )
    return raw


def _lines(fh: IO[bytes], p: Path) -> Iterator[tuple[int, bytes]]:
    """Numbered lines of a trace file, streamed; the last must end in a newline."""
    lineno = 1
    while raw := read_line(fh, str(p), lineno):
        if not raw.endswith(b"\n"):
            raise TraceCorrupt(f"{p}: line {lineno} is truncated (no newline)", line=lineno)
        yield lineno, raw
        lineno += 1


def _header_run(p: Path, raw: bytes) -> Run:
    try:
        header = orjson.loads(raw)
    except orjson.JSONDecodeError:
        raise TraceCorrupt(f"{p}: line 1 (header) is not valid JSON", line=1) from None
    if not isinstance(header, dict) or header.get("format") != TRACE_FORMAT:
        raise TraceCorrupt(f"{p}: not a replayable trace file (bad header)", line=1)
    version = header.get("version")
    if version not in _READABLE_VERSIONS:
        raise TraceCorrupt(
            f"{p}: trace format version {version!r} is not supported (this replayable reads "
            f"versions {', '.join(map(str, _READABLE_VERSIONS))}); upgrade replayable or "
            "re-export the run",
            line=1,
        )
    try:
        run = Run.from_dict(header.get("run"))
        check_run_id(run.id)
    except (TypeError, ValueError, KeyError, TraceCorrupt) as exc:
        raise TraceCorrupt(f"{p}: line 1 (header): {_reason(exc)}", line=1) from None
    return run


def _reason(exc: BaseException) -> str:
    if isinstance(exc, KeyError):
        return f"missing field {exc.args[0]!r}"
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _event(p: Path, lineno: int, raw: bytes) -> Event:
    try:
        return Event.from_dict(orjson.loads(raw))
    except orjson.JSONDecodeError:
        raise TraceCorrupt(
            f"{p}: line {lineno} is not a valid event (not valid JSON)", line=lineno
        ) from None
    except (KeyError, TypeError, ValueError) as exc:
        raise TraceCorrupt(
            f"{p}: line {lineno} is not a valid event: {_reason(exc)}", line=lineno
        ) from None


def _open(p: Path) -> IO[bytes]:
    try:
        if p.is_dir():
            raise TraceCorrupt(f"{p} is a directory, not a trace file")
        return p.open("rb")
    except FileNotFoundError:
        raise TraceCorrupt(f"no such trace file: {p}") from None
    except OSError as exc:
        raise TraceCorrupt(f"cannot read trace file {p}: {exc.strerror or exc}") from None


def _open_trace(path: str | os.PathLike[str]) -> tuple[Run, Generator[tuple[Event, int | None]]]:
    """The header's run, and the file's events (with their line numbers) streamed."""
    p = Path(path)
    fh = _open(p)
    lines = _lines(fh, p)
    try:
        first = next(lines, None)
        if first is None:
            raise TraceCorrupt(f"{p}: empty trace file", line=1)
        run = _header_run(p, first[1])
    except BaseException:
        fh.close()
        raise

    def events() -> Generator[tuple[Event, int | None]]:
        with fh:
            for lineno, raw in lines:
                yield _event(p, lineno, raw), lineno

    return run, events()


def read_trace_header(path: str | os.PathLike[str]) -> Run:
    """The run in a trace file's header line (reads one line, and closes the file)."""
    p = Path(path)
    with _open(p) as fh:
        first = next(_lines(fh, p), None)
    if first is None:
        raise TraceCorrupt(f"{p}: empty trace file", line=1)
    return _header_run(p, first[1])


def iter_trace(path: str | os.PathLike[str]) -> tuple[Run, Iterator[Event]]:
    """A trace file's run and its events, streamed in file (seq) order."""
    run, pairs = _open_trace(path)
    return run, (ev for ev, _ in pairs)


def read_trace(path: str | os.PathLike[str]) -> tuple[Run, list[Event]]:
    """Read a JSONL trace file; raises :class:`TraceCorrupt` naming the bad line."""
    run, events = iter_trace(path)
    return run, list(events)


def parse_trace(data: bytes, p: str | os.PathLike[str] = "trace") -> tuple[Run, list[Event]]:
    """A trace file's bytes as a run and its events (``p`` names it in errors); raises
    :class:`TraceCorrupt` naming the bad line."""
    name = Path(p)
    lines = _lines(io.BytesIO(data), name)
    first = next(lines, None)
    if first is None:
        raise TraceCorrupt(f"{name}: empty trace file", line=1)
    run = _header_run(name, first[1])
    return run, [_event(name, lineno, raw) for lineno, raw in lines]


def verify_trace(path: str | os.PathLike[str], *, key: bytes | None = None) -> Verification:
    """Verify a trace file, streaming it (a large file is never held in memory).

    Raises :class:`TraceCorrupt` for a file that cannot be read as a trace at all.
    """
    run, lines = _open_trace(path)
    return verify_pairs(run, lines, key=key, in_file=True)


def check_trace(path: str | os.PathLike[str]) -> tuple[Run, list[Event]]:
    """Read a trace file and verify its chain; raises :class:`TraceCorrupt` naming the line.

    >>> import os
    >>> import replayable as rp
    >>> lookup = rp.boundary(kind="tool")(lambda name: {"name": name, "id": 7})
    >>> with rp.record() as recorded:
    ...     lookup("Bob")["id"]
    7
    >>> path = os.path.join(tmp_dir, "incident.jsonl")
    >>> _ = write_trace(recorded, recorded.events(), path)
    >>> run, events = check_trace(path)
    >>> run.id == recorded.id, [e.output for e in events]
    (True, [{'name': 'Bob', 'id': 7}])
    """
    run, events = read_trace(path)
    lines = {ev.seq: i for i, ev in enumerate(events, start=2)}
    result = verify_run(run, events, lines=lines)
    if not result.ok:
        raise TraceCorrupt(
            f"{path}: line {result.line}: {result.problem}", line=result.line, seq=result.bad_seq
        )
    return run, events
