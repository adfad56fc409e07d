"""Checking one batch of runs, in a worker process, a Dask task or the caller itself."""

from __future__ import annotations

import importlib
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from replayable._check._report import RunOutcome
from replayable._pii import for_replay
from replayable._replayer import Replay, build_replay, check_version
from replayable._rootcall import call_recorded, root_call
from replayable._writer import Buffer
from replayable.errors import Divergence, RecordedError, ReplayableError, TraceCorrupt
from replayable.record import environment
from replayable.store import Store, open_store
from replayable.store.base import EventRow, Outcome
from replayable.trace import Event, Run, RunStatus, check_recording, parse_trace, read_trace

__all__ = ["ENV", "Done", "Item", "Task", "run_batch"]


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
    kept_with_source: bool = False
    """The task's store is the one its kept replays are saved to: a replay of a run read from
    it keeps its served steps as references to that run (range rows), as ``rp.replay`` does."""


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


def _refusal(run: Run, events: list[Event]) -> str | None:
    """Why a recording cannot be replayed (unfinished, another version, does not verify), or
    None."""
    if run.status in ("running", "incomplete"):
        return f"the recording is {run.status}: it never finished"
    try:
        check_version(run)
    except TraceCorrupt as exc:
        return f"incompatible version: {exc}"
    try:  # the chain and its head (edits, a cut tail); with a signing key, the signature
        verified = check_recording(run, events)
    except TraceCorrupt as exc:
        return f"does not verify: {exc}"
    if not verified.ok:
        return f"damaged trace: {verified.problem}"
    return None


def _verdict(
    out: Callable[..., Done],
    keep: Callable[[RunStatus], tuple[dict[str, Any], list[EventRow]]],
    replay: Replay,
    run: Run,
    ev: Event,
    raised: BaseException | None,
) -> Done:
    """Sort a finished replay: failed (it raised what the recording did not), diverged (its
    first divergence as the signature), or unchanged; ``keep`` the replay worth keeping."""
    divs = replay.divergences
    first = next((d for d in divs if d.reason != "skipped"), None)
    recorded_error = (ev.error or {}).get("type") if ev.error is not None else None
    raised_type = None if raised is None else _type_name(raised)
    if (
        first is None
        and raised is not None
        and (recorded_error is None or not recorded_error.endswith(raised_type or ""))
    ):
        kept = keep("error")
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
    kept = keep("diverged")
    more = f" (+{len(divs) - 1} more)" if len(divs) > 1 else ""
    return out(
        "diverged",
        "; ".join(line.strip() for line in first.describe().splitlines()) + more,
        signature=sig,
        replay_id=kept[0]["id"],
        parts={"boundary": first.boundary, "reason": first.reason, "fields": fields},
        kept=kept,
    )


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
    refused = _refusal(run, events)
    if refused is not None:
        return out("not_replayable", refused)
    # The check's replay is the plain replay, its steps kept in memory: only a replay worth
    # keeping (diverged or failed) becomes a run and rows (``kept``).
    buffer = Buffer()
    try:
        b, ev = root_call(run, events)
        replay = build_replay(
            run,
            events,
            target=None,
            live=task.live,
            strict=False,
            sink=buffer,
            metadata={"check": task.check_id},
            env=ENV,
            pii=for_replay(run.id, run.metadata, None),  # a run recorded pseudonymized
            # read from the store its replay is kept in (not a trace file): refer to it
            kept_with_source=task.kept_with_source and store is not None and item.path is None,
        )
    except ReplayableError as exc:
        return out("not_replayable", str(exc).splitlines()[0])

    def keep(status: RunStatus) -> tuple[dict[str, Any], list[EventRow]]:
        replay_run = replay.run
        replay_run.status = status  # a divergence raised through the agent reads as "error"
        rows = buffer.rows(replay_run)
        return replay_run.to_dict(), rows

    raised: BaseException | None = None
    try:
        with replay:
            call_recorded(b, ev)
    except Divergence:
        pass  # kept in replay.divergences
    except RecordedError as exc:
        raised = exc  # a recorded exception served back: the agent's own business
    except ReplayableError as exc:
        return out("not_replayable", str(exc).splitlines()[0])
    except Exception as exc:
        raised = exc
    return _verdict(out, keep, replay, run, ev, raised)


def _type_name(exc: BaseException) -> str:
    t = type(exc)
    return f"{t.__module__}:{t.__qualname__}"
