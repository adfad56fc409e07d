"""Checking one batch of runs, in a worker process, a Dask task or the caller itself."""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from replayable import _writer
from replayable._check._report import RunOutcome
from replayable._rootcall import call_recorded, root_call
from replayable._writer import Pending, Writer, pending_row
from replayable.errors import Divergence, RecordedError, ReplayableError, TraceCorrupt
from replayable.record import environment, new_run_id
from replayable.replay import Replay, Replayer, _check_version
from replayable.store import Store, open_store
from replayable.store.base import EventRow, Outcome
from replayable.trace import (
    Event,
    Run,
    check_recording,
    genesis_hash,
    parse_trace,
    read_trace,
    seal_run,
)

__all__ = ["ENV", "Done", "Item", "Task", "run_batch"]


class _Buffer(Writer):
    """The check policy's answer to "what to keep": a writer with no thread and no store.
    Events stay in memory; only a replay worth keeping (diverged or failed) becomes rows."""

    def __init__(self) -> None:  # no background thread: nothing is written from here
        self.error = None
        self._failed = False
        self.pending: list[Pending] = []

    def submit(self, item: Pending) -> None:
        """Keep the event in memory."""
        self.pending.append(item)

    def run_op(self, op: Callable[[], None]) -> None:
        """Run-level store operations are skipped: a kept replay is written whole, later."""

    @property
    def busy(self) -> bool:
        """Nothing is ever queued."""
        return False

    def flush(self, timeout: float | None = 30.0, *, stall_limit: float | None = None) -> bool:
        """Nothing is queued."""
        return True

    def begin_run(self, run: Run) -> None:
        """The run is not created: a kept replay is written whole, later."""

    def end_run(self, run: Run) -> None:
        """The run is not finished in a store: a kept replay is written whole, later."""

    def seal(self, run: Run) -> None:
        """Sealed when kept (see ``_CheckReplayer.kept``)."""


@dataclass(slots=True)
class Item:
    """One run to check: its index in the selection and where its events come from."""

    index: int
    run: dict[str, Any] | None = None
    """The run's header (its events are read from the task's store unless ``path`` or
    ``data`` is given)."""
    path: str | None = None
    """A trace file readable by the worker."""
    data: bytes | None = None
    """A trace file's bytes, shipped with the task."""
    label: str = ""


@dataclass(slots=True)
class Task:
    """A batch of runs for one worker."""

    items: list[Item]
    store: str | None
    imports: tuple[str, ...]
    live: tuple[str, ...]
    check_id: str
    sys_path: tuple[str, ...] = ()


@dataclass(slots=True)
class Done:
    """One checked run: its outcome, the signature's parts, and a kept replay."""

    index: int
    outcome: RunOutcome
    parts: dict[str, Any] | None = None
    kept: tuple[dict[str, Any], list[EventRow]] | None = None


_IMPORTED: set[str] = set()
ENV: dict[str, Any] = {}


def _prepare(task: Task) -> None:
    """Import the agent's modules, once per worker process."""
    for p in task.sys_path:
        if p not in sys.path:
            sys.path.append(p)
    for name in task.imports:
        if name not in _IMPORTED:
            importlib.invalidate_caches()  # a module written since this worker started
            importlib.import_module(name)
            _IMPORTED.add(name)


def run_batch(task: Task) -> list[Done]:
    """Check a batch of runs (what a worker process or a Dask task runs)."""
    _prepare(task)
    if not ENV:
        ENV.update(environment())
    if _NOWHERE not in _writer._WRITERS:
        # A check's replays are never written through a store's background writer: give
        # their stand-in store a buffer, so no writer thread starts (after a fork, again).
        _writer._WRITERS[_NOWHERE] = _Buffer()
    store = open_store(task.store) if task.store is not None else None
    return [_check_item(item, store, task) for item in task.items]


def _load_item(item: Item, store: Store | None) -> tuple[Run, list[Event]]:
    if item.data is not None:
        return parse_trace(item.data, item.label or "shipped trace")
    if item.path is not None:
        return read_trace(item.path)
    assert item.run is not None
    assert store is not None
    run = Run.from_dict(item.run)
    return run, list(store.iter_events(run.id))


def _check_item(item: Item, store: Store | None, task: Task) -> Done:
    t0 = time.perf_counter()
    run_id = str((item.run or {}).get("id") or item.label)
    name = (item.run or {}).get("name")

    def out(outcome: Outcome, detail: str, **kw: Any) -> Done:
        parts = kw.pop("parts", None)
        kept = kw.pop("kept", None)
        o = RunOutcome(
            run_id=run_id,
            name=name,
            outcome=outcome,
            detail=detail,
            duration_s=time.perf_counter() - t0,
            **kw,
        )
        return Done(item.index, o, parts, kept)

    try:
        run, events = _load_item(item, store)
    except TraceCorrupt as exc:
        return out("not_replayable", f"damaged trace: {exc}")
    run_id, name = run.id, run.name
    if run.status in ("running", "incomplete"):
        return out("not_replayable", f"the recording is {run.status}: it never finished")
    try:
        _check_version(run)
    except TraceCorrupt as exc:
        return out("not_replayable", f"incompatible version: {exc}")
    try:  # the chain and its head (edits, a cut tail); with a signing key, the signature
        verified = check_recording(run, events)
    except TraceCorrupt as exc:
        return out("not_replayable", f"does not verify: {exc}")
    if not verified.ok:
        return out("not_replayable", f"damaged trace: {verified.problem}")
    try:
        b, ev = root_call(run, events)
        replay_run = Run(
            id=new_run_id(),
            name=f"replay of {run.name or run.id}",
            tags=dict(run.tags),
            metadata={"replay_of": run.id, "check": task.check_id},
            environment=dict(ENV),
            started_at=time.time(),
            parent_run=run.id,
        )
        session = _CheckReplayer(replay_run, run, events, live=task.live)
    except ReplayableError as exc:
        return out("not_replayable", str(exc).splitlines()[0])
    raised: BaseException | None = None
    try:
        with Replay(session):
            call_recorded(b, ev)
    except Divergence:
        pass  # kept in session.divergences
    except RecordedError as exc:
        raised = exc  # a recorded exception served back: the agent's own business
    except ReplayableError as exc:
        return out("not_replayable", str(exc).splitlines()[0])
    except Exception as exc:
        raised = exc
    divs = session.divergences
    first = next((d for d in divs if d.reason != "skipped"), None)
    recorded_error = (ev.error or {}).get("type") if ev.error is not None else None
    raised_type = None if raised is None else _type_name(raised)
    if (
        first is None
        and raised is not None
        and (recorded_error is None or not recorded_error.endswith(raised_type or ""))
    ):
        kept = session.kept("error")
        sig = raised_type or "Exception"
        was = f" (the recording raised {recorded_error})" if recorded_error else ""
        return out(
            "failed",
            f"raised {sig}: {str(raised).splitlines()[0] if str(raised) else ''}{was}".rstrip(),
            signature=sig,
            replay_id=kept[0]["id"],
            kept=kept,
        )
    first = first or (divs[0] if divs else None)
    if first is None and recorded_error is not None and raised is None:
        first = Divergence(
            reason="outcome",
            address=ev.address,
            boundary=ev.boundary,
            run_id=run.id,
            detail=f"the recording raised {recorded_error}; the code now returns",
        )
    if first is None:
        return out("unchanged", "took the recorded path")
    fields = sorted({c.path for c in first.changes})
    sig = f"{first.reason} {first.boundary}" + (f" [{', '.join(fields)}]" if fields else "")
    kept = session.kept("diverged")
    more = f" (+{len(divs) - 1} more)" if len(divs) > 1 else ""
    return out(
        "diverged",
        "; ".join(line.strip() for line in first.describe().splitlines()) + more,
        signature=sig,
        replay_id=kept[0]["id"],
        parts={"boundary": first.boundary, "reason": first.reason, "fields": fields},
        kept=kept,
    )


def _type_name(exc: BaseException) -> str:
    t = type(exc)
    return f"{t.__module__}:{t.__qualname__}"


class _CheckReplayer(Replayer):
    """The check mode: the replay policy (same matching, recorded values served, agents run
    live, divergences collected) keeping its events in memory instead of writing them; a run
    worth keeping (diverged or failed) becomes a run and rows with :meth:`kept`."""

    def __init__(self, run: Run, source: Run, events: list[Event], *, live: Iterable[str]) -> None:
        super().__init__(
            _NOWHERE,
            run,
            source,
            events,
            live=live,
            allow_side_effects=False,
            strict=False,
            match="address",
        )
        self.buffer = self.writer = _Buffer()

    def kept(self, status: str) -> tuple[dict[str, Any], list[EventRow]]:
        """The replay as a run header and rows in write order, ready for ``put_run``."""
        run = self.run
        run.status = status  # a divergence raised through the agent would read as "error"
        chains: dict[str, tuple[int, str]] = {run.id: (0, genesis_hash(run))}
        rows = [pending_row(p, chains) for p in self.buffer.pending]
        count, head = chains[run.id]
        seal_run(run, head, count)
        return run.to_dict(), rows


class _Nowhere:
    """The store a check's replays are attached to: they are never written through it (a kept
    replay is written whole, with ``put_run``, by the caller)."""

    url = "nowhere:"

    def __repr__(self) -> str:
        return "_Nowhere()"


_NOWHERE: Any = _Nowhere()
