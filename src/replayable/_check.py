"""``rp.check``: replay many recorded runs against the code as it is now, and sort them.

Each selected run's root agent call is re-run with its recorded arguments under a replay that
keeps only the outcome (no copy of every replay is written; a diverged or failed run's replay is
kept, so its diff can be opened). Runs come out as:

- ``unchanged``: the code took the recorded path;
- ``diverged``: grouped by the signature of the first divergence (boundary, reason, changed
  field paths), largest group first;
- ``failed``: the agent raised where the recording did not;
- ``not_replayable``: unknown boundary, incompatible version, damaged or incomplete trace.

Batches of runs go to worker processes (``jobs``) or to an existing Dask cluster
(``executor="dask"``); each worker imports the agent's modules once and reads its runs' events
straight from the store (or from trace files shipped with the task).
"""

from __future__ import annotations

import importlib
import math
import os
import random as _random
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson

from replayable import _writer
from replayable._rootcall import call_recorded, root_call
from replayable._writer import Pending, pending_row
from replayable.boundary import registry
from replayable.errors import (
    Divergence,
    RecordedError,
    ReplayableError,
    SideEffectRefused,
    TraceCorrupt,
)
from replayable.record import environment, new_run_id
from replayable.replay import Replay, Replayer, _check_version
from replayable.store import DEFAULT_STORE, Store, open_store
from replayable.store.base import EventRow, RunQuery
from replayable.store.files import TraceDirStore
from replayable.trace import (
    Event,
    Run,
    check_recording,
    genesis_hash,
    parse_trace,
    read_trace,
    seal_run,
)

__all__ = ["CheckReport", "Group", "RunOutcome", "check", "list_checks", "load_check"]

OUTCOMES = ("unchanged", "diverged", "failed", "not_replayable")
EXAMPLES = 5
"""Example runs kept per group."""

ProgressFn = Callable[[int, int], None]


# -- the report ------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class RunOutcome:
    """What checking one recorded run gave.

    ``signature`` groups diverged runs (``reason boundary [fields]``) and failed ones (the
    exception type); ``detail`` is one line saying what happened; ``replay_id`` is the kept
    replay of a diverged or failed run (diff it against ``run_id``).
    """

    run_id: str
    name: str | None
    outcome: str
    signature: str | None = None
    detail: str = ""
    replay_id: str | None = None
    duration_s: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        """JSON types."""
        return {
            "run_id": self.run_id,
            "name": self.name,
            "outcome": self.outcome,
            "signature": self.signature,
            "detail": self.detail,
            "replay_id": self.replay_id,
            "duration_s": self.duration_s,
        }


@dataclass(frozen=True, slots=True)
class Group:
    """Runs that diverged the same way: the first divergence's boundary, reason and changed
    field paths; how many; and a few examples as (run id, replay id) pairs."""

    signature: str
    boundary: str
    reason: str
    fields: tuple[str, ...]
    count: int
    examples: tuple[tuple[str, str | None], ...]

    def to_dict(self) -> dict[str, Any]:
        """JSON types."""
        return {
            "signature": self.signature,
            "boundary": self.boundary,
            "reason": self.reason,
            "fields": list(self.fields),
            "count": self.count,
            "examples": [{"run_id": r, "replay_id": p} for r, p in self.examples],
        }

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> Group:
        """Inverse of :meth:`to_dict`."""
        return cls(
            signature=d["signature"],
            boundary=d["boundary"],
            reason=d["reason"],
            fields=tuple(d.get("fields") or ()),
            count=int(d["count"]),
            examples=tuple((e["run_id"], e.get("replay_id")) for e in d.get("examples") or ()),
        )


@dataclass(slots=True)
class CheckReport:
    """The result of :func:`check`: every run's outcome, and the diverged runs grouped.

    >>> report = rp.check(store="traces.db", since=timedelta(days=7))
    >>> report.counts
    {'unchanged': 981, 'diverged': 17, 'failed': 2, 'not_replayable': 0}
    >>> report.groups[0].signature
    'changed my_agent:issue_refund [amount]'
    """

    id: str
    started_at: float
    ended_at: float
    store: str
    selection: dict[str, Any]
    environment: dict[str, Any]
    outcomes: list[RunOutcome]
    groups: list[Group]
    saved_to: str | None = None
    stored_counts: dict[str, int] | None = None
    """Counts read with a kept check's header when its runs were not loaded."""

    @property
    def counts(self) -> dict[str, int]:
        """Runs per outcome (every outcome present, zeros included)."""
        counts = dict.fromkeys(OUTCOMES, 0)
        if not self.outcomes and self.stored_counts:
            return {**counts, **self.stored_counts}
        for o in self.outcomes:
            counts[o.outcome] += 1
        return counts

    @property
    def ok(self) -> bool:
        """True when no run diverged or failed (not replayable runs do not fail a check)."""
        c = self.counts
        return not c["diverged"] and not c["failed"]

    def runs(self, outcome: str) -> list[RunOutcome]:
        """The runs with this outcome, in the order they were selected."""
        if outcome not in OUTCOMES:
            raise ValueError(f"outcome must be one of {', '.join(OUTCOMES)}, not {outcome!r}")
        return [o for o in self.outcomes if o.outcome == outcome]

    def to_dict(self) -> dict[str, Any]:
        """JSON types: the header, counts, groups and every run's outcome."""
        return {
            "id": self.id,
            "started_at": self.started_at,
            "ended_at": self.ended_at,
            "store": self.store,
            "saved_to": self.saved_to,
            "selection": self.selection,
            "environment": self.environment,
            "ok": self.ok,
            "counts": self.counts,
            "groups": [g.to_dict() for g in self.groups],
            "runs": [o.to_dict() for o in self.outcomes],
        }

    # -- storage -------------------------------------------------------------------------------

    def to_rows(self) -> tuple[tuple[Any, ...], list[tuple[Any, ...]]]:
        """The ``checks`` row and the ``check_runs`` rows."""
        summary = {"counts": self.counts, "groups": [g.to_dict() for g in self.groups]}
        head = (
            self.id,
            self.started_at,
            self.ended_at,
            self.store,
            _text(self.selection),
            _text(self.environment),
            _text(summary),
            int(self.ok),
        )
        runs = [
            (
                self.id,
                i,
                o.run_id,
                o.name,
                o.outcome,
                o.signature,
                o.detail,
                o.replay_id,
                o.duration_s,
            )
            for i, o in enumerate(self.outcomes)
        ]
        return head, runs

    @classmethod
    def from_rows(
        cls, head: Sequence[Any], runs: Sequence[Sequence[Any]] = (), saved_to: str | None = None
    ) -> CheckReport:
        """Inverse of :meth:`to_rows` (without run rows: a header with its groups only)."""
        summary = _load(head[6]) or {}
        return cls(
            id=head[0],
            started_at=float(head[1]),
            ended_at=float(head[2] or head[1]),
            store=head[3] or "",
            selection=_load(head[4]) or {},
            environment=_load(head[5]) or {},
            outcomes=[
                RunOutcome(
                    run_id=r[2],
                    name=r[3],
                    outcome=r[4],
                    signature=r[5],
                    detail=r[6] or "",
                    replay_id=r[7],
                    duration_s=float(r[8] or 0.0),
                )
                for r in runs
            ],
            groups=[Group.from_dict(g) for g in summary.get("groups") or ()],
            saved_to=saved_to,
            stored_counts=summary.get("counts"),
        )


def _text(value: Any) -> str:
    return orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()


def _load(value: Any) -> Any:
    if value is None or not isinstance(value, str | bytes):
        return value
    return orjson.loads(value)


def group_outcomes(outcomes: Iterable[RunOutcome], signatures: Mapping[str, Any]) -> list[Group]:
    """Diverged runs grouped by signature, largest group first (ties by signature)."""
    members: dict[str, list[RunOutcome]] = {}
    for o in outcomes:
        if o.outcome == "diverged" and o.signature is not None:
            members.setdefault(o.signature, []).append(o)
    groups = []
    for sig, runs in members.items():
        parts = signatures.get(sig) or {}
        groups.append(
            Group(
                signature=sig,
                boundary=str(parts.get("boundary", "")),
                reason=str(parts.get("reason", "")),
                fields=tuple(parts.get("fields") or ()),
                count=len(runs),
                examples=tuple((o.run_id, o.replay_id) for o in runs[:EXAMPLES]),
            )
        )
    groups.sort(key=lambda g: (-g.count, g.signature))
    return groups


# -- checking one run (in a worker) ----------------------------------------------------------


class _Buffer:
    """Stands in for the background writer of a check's replay: events stay in memory, and
    only a replay that is kept (diverged or failed) becomes rows."""

    failing = False
    error: BaseException | None = None

    def __init__(self) -> None:
        self.pending: list[Pending] = []

    def submit(self, item: Pending) -> None:
        self.pending.append(item)

    def run_op(self, op: Callable[[], None]) -> None:
        """Run-level store operations are skipped: a kept replay is written whole, later."""

    def flush(self, timeout: float = 30.0) -> None:
        """Nothing is queued."""

    def begin_run(self, run: Run) -> None:
        """The run is not created: a kept replay is written whole, later."""

    def seal(self, run: Run) -> None:
        """Sealed when kept (see ``_CheckReplayer.kept``)."""


@dataclass(slots=True)
class _Item:
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
class _Task:
    """A batch of runs for one worker."""

    items: list[_Item]
    store: str | None
    imports: tuple[str, ...]
    live: tuple[str, ...]
    check_id: str
    sys_path: tuple[str, ...] = ()


@dataclass(slots=True)
class _Done:
    """One checked run: its outcome, the signature's parts, and a kept replay."""

    index: int
    outcome: RunOutcome
    parts: dict[str, Any] | None = None
    kept: tuple[dict[str, Any], list[EventRow]] | None = None


_IMPORTED: set[str] = set()
_ENV: dict[str, Any] = {}


def _prepare(task: _Task) -> None:
    """Import the agent's modules, once per worker process."""
    for p in task.sys_path:
        if p not in sys.path:
            sys.path.append(p)
    for name in task.imports:
        if name not in _IMPORTED:
            importlib.invalidate_caches()  # a module written since this worker started
            importlib.import_module(name)
            _IMPORTED.add(name)


def run_batch(task: _Task) -> list[_Done]:
    """Check a batch of runs (what a worker process or a Dask task runs)."""
    _prepare(task)
    if not _ENV:
        _ENV.update(environment())
    if _NOWHERE not in _writer._WRITERS:
        # A check's replays are never written through a store's background writer: give
        # their stand-in store a buffer, so no writer thread starts (after a fork, again).
        _writer._WRITERS[_NOWHERE] = _Buffer()  # type: ignore[assignment]
    store = open_store(task.store) if task.store is not None else None
    return [_check_item(item, store, task) for item in task.items]


def _load_item(item: _Item, store: Store | None) -> tuple[Run, list[Event]]:
    if item.data is not None:
        return parse_trace(item.data, item.label or "shipped trace")
    if item.path is not None:
        return read_trace(item.path)
    assert item.run is not None
    assert store is not None
    run = Run.from_dict(item.run)
    return run, list(store.iter_events(run.id))


def _check_item(item: _Item, store: Store | None, task: _Task) -> _Done:
    t0 = time.perf_counter()
    run_id = str((item.run or {}).get("id") or item.label)
    name = (item.run or {}).get("name")

    def out(outcome: str, detail: str, **kw: Any) -> _Done:
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
        return _Done(item.index, o, parts, kept)

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
            environment=dict(_ENV),
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
        self.buffer = _Buffer()
        self.writer = self.buffer  # type: ignore[assignment]

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


# -- selecting and distributing runs (in the caller) -----------------------------------------


def _selection(
    src: Store,
    *,
    since: float | timedelta | None,
    until: float | None,
    name: str | None,
    tags: Mapping[str, str] | None,
    status: str | None,
    limit: int | None,
    sample: int | None,
    seed: int | None,
) -> list[tuple[Run, str | None]]:
    """The runs to check, newest first: (run, trace file path for a trace directory)."""
    if isinstance(since, timedelta):
        since = time.time() - since.total_seconds()
    query = RunQuery(
        name=name,
        tags=dict(tags) if tags else None,
        status=status,
        since=since,
        until=until,
        limit=10**9,
    )
    paths: dict[str, Path] = {}
    if isinstance(src, TraceDirStore):
        paths = {rid: p for rid, (_, p) in src._runs().items()}
    runs = [r for r in src.list_runs(query) if r.parent_run is None]
    if limit is not None:
        runs = runs[:limit]
    if sample is not None and sample < len(runs):
        picked = set(_random.Random(seed).sample(range(len(runs)), sample))
        runs = [r for i, r in enumerate(runs) if i in picked]
    return [(r, str(paths[r.id]) if r.id in paths else None) for r in runs]


def _unreadable(src: Store) -> list[str]:
    """Files of a trace directory whose header does not read: no run to the store, but
    damaged traces in the corpus, to report rather than leave out unnoticed."""
    if not isinstance(src, TraceDirStore):
        return []
    known = {p for _, p in src._runs().values()}
    return [str(p) for p in sorted(src.path.rglob("*.jsonl")) if p not in known]


def _refuse_side_effects(live: Iterable[str]) -> None:
    """A check never fires side effects: naming one live is refused before anything runs."""
    for entry in live:
        name = entry.partition("#")[0]
        for full, b in registry().items():
            bare = full.rsplit(":", 1)[-1].rsplit(".", 1)[-1]
            if b.side_effects and name in (full, bare):
                raise SideEffectRefused(
                    f"{full} has side effects: a check never runs them live (they would fire "
                    "once per checked run); leave it served from the recordings"
                )


def _default_imports() -> tuple[str, ...]:
    """Modules defining the registered boundaries (what a worker must import)."""
    mods = {name.split(":", 1)[0] for name in registry()}
    return tuple(sorted(m for m in mods if m != "__main__" and m in sys.modules))


def _store_url(store: Store) -> str:
    # A worker opens the store itself: it needs the URL with its credentials.
    return str(getattr(store, "_conninfo", None) or store.url)


def _batches(n: int, workers: int) -> int:
    return max(1, min(250, math.ceil(n / max(1, workers * 8))))


def check(
    store: Store | str | os.PathLike[str] | None = None,
    *,
    imports: Iterable[str] | None = None,
    since: float | timedelta | None = None,
    until: float | None = None,
    name: str | None = None,
    tags: Mapping[str, str] | None = None,
    status: str | None = None,
    limit: int | None = None,
    sample: int | None = None,
    seed: int | None = None,
    live: Iterable[str] = (),
    jobs: int = 1,
    executor: str = "local",
    address: str | None = None,
    save: bool = True,
    save_to: Store | str | os.PathLike[str] | None = None,
    progress: ProgressFn | None = None,
) -> CheckReport:
    """Replay every selected recorded run against the code as it is now, and sort the runs.

    Runs are selected from ``store`` (SQLite, PostgreSQL or a directory of trace files) by
    ``since`` (epoch seconds or a ``timedelta`` back from now), ``until``, ``name``, ``tags``
    and ``status``, newest first, cut to ``limit``, then ``sample`` of them drawn with ``seed``.
    Replays of runs are never selected. Each run's root agent call is re-run with its recorded
    arguments; boundaries named in ``live`` run live (side-effecting ones are refused).

    ``jobs`` > 1 checks batches in that many worker processes; ``executor="dask"`` sends them
    to the Dask cluster at ``address`` (``pip install "replayable[dask]"``). Workers import
    ``imports`` (default: the modules of every boundary registered here) once each.

    With ``save`` (the default) the check, its groups and every run's outcome are kept in
    ``save_to`` (default: ``store``, or the default SQLite store when ``store`` is a trace
    directory), with the replays of the runs that diverged or failed.

    >>> report = check("traces.db", since=timedelta(days=7), jobs=2)
    >>> report.ok, report.counts, [g.signature for g in report.groups]
    """
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, not {jobs}")
    if executor not in ("local", "dask"):
        raise ValueError(f"executor must be 'local' or 'dask', not {executor!r}")
    if executor == "dask" and not address:
        raise ValueError("executor='dask' needs the scheduler's address (tcp://HOST:PORT)")
    for label, value in (("limit", limit), ("sample", sample)):
        if value is not None and value < 1:
            raise ValueError(f"{label} must be >= 1, not {value}")
    src = open_store(store, must_exist=True)
    started = time.time()
    env = environment()
    if not _ENV:  # forked workers inherit it, and need not ask git again
        _ENV.update(env)
    check_id = new_run_id()
    mods = tuple(imports) if imports is not None else _default_imports()
    for mod in mods:
        importlib.import_module(mod)
    _refuse_side_effects(live)
    chosen: list[tuple[Run | None, str | None]] = []
    chosen += _selection(
        src,
        since=since,
        until=until,
        name=name,
        tags=tags,
        status=status,
        limit=limit,
        sample=sample,
        seed=seed,
    )
    chosen += [(None, path) for path in _unreadable(src)]
    selection = {
        k: v
        for k, v in {
            "since": since.total_seconds() if isinstance(since, timedelta) else since,
            "until": until,
            "name": name,
            "tags": dict(tags) if tags else None,
            "status": status,
            "limit": limit,
            "sample": sample,
            "seed": seed,
            "live": list(live) or None,
            "imports": list(mods) or None,
            "jobs": jobs,
            "executor": executor,
        }.items()
        if v is not None
    }
    dask = executor == "dask"
    ship = dask and not _store_url(src).startswith(("postgresql://", "postgres://"))
    workers = jobs if not dask else 8
    size = _batches(len(chosen), workers)
    tasks: list[_Task] = []
    for start in range(0, len(chosen), size):
        items = []
        for i, (run, path) in enumerate(chosen[start : start + size], start=start):
            head = run.to_dict() if run is not None else None
            label = path or (run.id if run is not None else "")
            if ship:
                data = _trace_bytes(src, run) if run is not None and not path else b""
                if path:
                    data = Path(path).read_bytes()
                items.append(_Item(i, run=head, data=data, label=label))
            else:
                items.append(_Item(i, run=head, path=path, label=label))
        tasks.append(
            _Task(
                items=items,
                store=None if ship or chosen[start][1] else _store_url(src),
                imports=mods,
                live=tuple(live),
                check_id=check_id,
                sys_path=tuple(p for p in sys.path if p) if not dask else (),
            )
        )
    done: list[_Done] = []
    total = len(chosen)
    if progress is not None:
        progress(0, total)
    results: Iterable[list[_Done]]
    if dask:
        results = _on_dask(tasks, str(address))
    elif jobs == 1 or len(tasks) == 1:
        results = (run_batch(t) for t in tasks)
    else:
        results = _on_processes(tasks, jobs)
    for batch in results:
        done.extend(batch)
        if progress is not None:
            progress(len(done), total)
    done.sort(key=lambda d: d.index)
    outcomes = [d.outcome for d in done]
    report = CheckReport(
        id=check_id,
        started_at=started,
        ended_at=time.time(),
        store=src.url,
        selection=selection,
        environment=env,
        outcomes=outcomes,
        groups=group_outcomes(
            outcomes, {str(d.outcome.signature): d.parts for d in done if d.parts}
        ),
    )
    if save:
        target = _save_target(src, save_to)
        _save(target, report, [d.kept for d in done if d.kept is not None])
        report.saved_to = target.url
    return report


def _trace_bytes(store: Store, run: Run) -> bytes:
    from replayable.trace import trace_lines

    return b"".join(trace_lines(run, store.iter_events(run.id)))


def _on_processes(tasks: list[_Task], jobs: int) -> Iterable[list[_Done]]:
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # fork starts a worker in milliseconds and gives it the modules as imported here, like
    # jobs=1; but forking a process that runs other threads (a store's writer or connection
    # pool) can copy a held lock, so such a process spawns fresh workers instead.
    method = "fork" if sys.platform == "linux" and threading.active_count() == 1 else "spawn"
    ctx = multiprocessing.get_context(method)
    with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as pool:
        futures = [pool.submit(run_batch, t) for t in tasks]
        for fut in as_completed(futures):
            yield fut.result()


def _on_dask(tasks: list[_Task], address: str) -> Iterable[list[_Done]]:
    try:
        distributed: Any = importlib.import_module("distributed")
    except ImportError:
        raise ReplayableError(
            'the Dask executor needs distributed: pip install "replayable[dask]"'
        ) from None
    try:
        client = distributed.Client(address, timeout="10s")
    except OSError as exc:
        raise ReplayableError(f"cannot reach the Dask scheduler at {address}: {exc}") from None
    try:
        futures = [client.submit(run_batch, t, pure=False) for t in tasks]
        for fut in distributed.as_completed(futures):
            yield fut.result()
    finally:
        client.close()


def _save_target(src: Store, save_to: Store | str | os.PathLike[str] | None) -> Store:
    if save_to is not None:
        return open_store(save_to)
    if not isinstance(src, TraceDirStore):
        return src
    default = open_store(None)
    return default if not isinstance(default, TraceDirStore) else open_store(DEFAULT_STORE)


def _save(
    target: Store, report: CheckReport, kept: list[tuple[dict[str, Any], list[EventRow]]]
) -> None:
    for run, rows in kept:
        target.put_run(Run.from_dict(run), rows)
    head, runs = report.to_rows()
    target.save_check(head, runs)


# -- reading kept checks ---------------------------------------------------------------------


def list_checks(
    store: Store | str | os.PathLike[str] | None = None, limit: int = 50
) -> list[CheckReport]:
    """Kept checks, newest first: headers with counts and groups (no per-run outcomes)."""
    st = open_store(store)
    return [CheckReport.from_rows(row, saved_to=st.url) for row in st.list_checks(limit)]


def load_check(check_id: str, store: Store | str | os.PathLike[str] | None = None) -> CheckReport:
    """A kept check, by id or unique prefix, with every run's outcome."""
    st = open_store(store)
    head, runs = st.get_check(check_id)
    return CheckReport.from_rows(head, runs, saved_to=st.url)
