"""A directory of JSONL trace files as a read-only store.

Every ``*.jsonl`` file under the directory (recursively) that starts with a trace header is a
run. Only headers are read to list runs; a run's events are read when asked for. Recording into
it fails with :class:`~replayable.errors.StoreUnavailable` (fail-open, like any store that cannot
be written): record into SQLite or PostgreSQL, then ``replayable export`` into the directory.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path

import orjson

from replayable._tracefile import read_line
from replayable.errors import RunNotFound, StoreUnavailable, TraceCorrupt
from replayable.store.base import Checkpoint, CheckRow, CheckRunRow, EventRow, RunQuery
from replayable.trace import TRACE_FORMAT, Event, Run, iter_trace, read_trace

__all__ = ["TraceDirStore"]

log = logging.getLogger("replayable")


def _header(path: Path) -> Run | None:
    """The run in a trace file's header line, or None if it is not a trace file (one whose
    first line never ends is passed over with one warning, having read a bounded amount)."""
    try:
        with path.open("rb") as fh:
            header = orjson.loads(read_line(fh, str(path), 1))
    except TraceCorrupt as exc:
        log.warning("skipped %s", exc)
        return None
    except (OSError, orjson.JSONDecodeError):
        return None
    if not isinstance(header, dict) or header.get("format") != TRACE_FORMAT:
        return None
    try:
        return Run.from_dict(header["run"])
    except (KeyError, TypeError, ValueError):
        return None


class TraceDirStore:
    """Runs read from the JSONL trace files in a directory (e.g. promoted regression traces).

    >>> import os
    >>> import replayable as rp
    >>> from replayable.trace import write_trace
    >>> lookup = rp.boundary(kind="tool")(lambda name: {"name": name, "id": 7})
    >>> with rp.record(name="support") as run:
    ...     lookup("Bob")["id"]
    7
    >>> _ = write_trace(run, run.events(), os.path.join(tmp_dir, "incident.jsonl"))
    >>> store = TraceDirStore(tmp_dir)
    >>> [run.name for run in store.list_runs()]
    ['support']
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.url = str(self.path)
        if not self.path.is_dir():
            raise StoreUnavailable(f"trace directory {self.path} does not exist")

    def runs_with_paths(self) -> dict[str, tuple[Run, Path]]:
        """Every readable run by id, with the trace file it was read from."""
        runs: dict[str, tuple[Run, Path]] = {}
        for file in sorted(self.path.rglob("*.jsonl")):
            run = _header(file)
            if run is not None:
                run.store = self
                runs.setdefault(run.id, (run, file))
        return runs

    def path_of(self, run_id: str) -> Path:
        """The trace file holding this run (id or unique prefix)."""
        runs = self.runs_with_paths()
        if run_id in runs:
            return runs[run_id][1]
        found = [pair for rid, pair in runs.items() if rid.startswith(run_id)]
        if len(found) == 1:
            return found[0][1]
        if not found:
            raise RunNotFound(f"no run {run_id!r} among the trace files in {self.path}")
        raise RunNotFound(f"run id prefix {run_id!r} is ambiguous in {self.path}; give more of it")

    # -- reading -----------------------------------------------------------------------------

    def get_run(self, run_id: str) -> Run:
        """The run with this id or unique id prefix."""
        run = _header(self.path_of(run_id))
        if run is None:  # the file changed under us
            raise TraceCorrupt(f"trace file for run {run_id!r} in {self.path} has a bad header")
        run.store = self
        return run

    def iter_events(self, run_id: str) -> Iterator[Event]:
        """The run's events in seq order, streamed (a file out of seq order is sorted)."""
        path = self.path_of(run_id)
        _, events = iter_trace(path)
        last = -1
        for ev in events:
            if ev.seq < last:
                events.close()  # type: ignore[attr-defined]
                _, all_events = read_trace(path)
                yield from sorted(all_events, key=lambda e: e.seq)
                return
            last = ev.seq
            yield ev

    def list_runs(self, query: RunQuery | None = None) -> list[Run]:
        """Runs matching ``query``, newest first."""
        q = query or RunQuery()
        out: list[Run] = []
        newest = sorted(self.runs_with_paths().values(), key=lambda p: (p[0].started_at, p[0].id))
        for run, file in reversed(newest):
            if not self._matches(run, file, q):
                continue
            out.append(run)
            if len(out) >= q.limit:
                break
        return out

    @staticmethod
    def _matches(run: Run, file: Path, q: RunQuery) -> bool:
        if q.name is not None and run.name != q.name:
            return False
        if q.status is not None and run.status != q.status:
            return False
        if q.since is not None and run.started_at < q.since:
            return False
        if q.until is not None and run.started_at >= q.until:
            return False
        if any(run.tags.get(k) != v for k, v in (q.tags or {}).items()):
            return False
        if q.boundary is None and q.has_error is None:
            return True
        # One streamed pass over the events (a large file is never held in memory).
        found = q.boundary is None
        errored = run.status == "error"
        _, events = iter_trace(file)
        for e in events:
            found = found or e.boundary == q.boundary or e.boundary.endswith(f":{q.boundary}")
            errored = errored or e.error is not None
        if not found:
            return False
        return q.has_error is None or errored == q.has_error

    # -- writing: refused --------------------------------------------------------------------

    def _read_only(self) -> StoreUnavailable:
        return StoreUnavailable(
            f"{self.path} is a directory of trace files, a read-only store: record into "
            "SQLite or PostgreSQL, and add files with `replayable export RUN -o FILE`"
        )

    def create_run(self, run: Run) -> None:
        """Refused: the store is read-only."""
        raise self._read_only()

    def finish_run(self, run: Run) -> None:
        """Refused: the store is read-only."""
        raise self._read_only()

    def write_rows(self, rows: Sequence[EventRow], checkpoints: Sequence[Checkpoint] = ()) -> None:
        """Refused: the store is read-only."""
        raise self._read_only()

    def put_run(self, run: Run, rows: Sequence[EventRow]) -> bool:
        """Refused: the store is read-only."""
        raise self._read_only()

    def replace_run(self, run: Run, rows: Sequence[EventRow]) -> None:
        """Refused: the store is read-only (``replayable scan --fix FILE...`` rewrites files)."""
        raise self._read_only()

    def delete_runs(self, *, before: float) -> int:
        """Refused: the store is read-only."""
        raise self._read_only()

    def save_check(self, check: CheckRow, runs: Sequence[CheckRunRow]) -> None:
        """Refused: the store is read-only."""
        raise self._read_only()

    def add_counts(self, counts: Mapping[str, int]) -> None:
        """Refused: the store is read-only."""
        raise self._read_only()

    def counts(self) -> dict[str, int]:
        """None: a directory of trace files keeps no counters."""
        return {}

    def list_checks(self, limit: int = 50) -> list[CheckRow]:
        """None: checks are kept in SQLite or PostgreSQL, never in a trace directory."""
        return []

    def get_check(self, check_id: str) -> tuple[CheckRow, list[CheckRunRow]]:
        """Refused: a trace directory holds no checks."""
        raise RunNotFound(
            f"no check {check_id!r} in {self.path}: a directory of trace files keeps no checks"
        )

    def close(self) -> None:
        """Nothing to release."""

    def __repr__(self) -> str:
        return f"TraceDirStore({str(self.path)!r})"
