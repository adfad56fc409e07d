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

import dataclasses
import importlib
import math
import os
import random as _random
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import timedelta
from pathlib import Path
from typing import Any

from replayable._check._report import CheckReport, Group, RunOutcome, group_outcomes
from replayable._check._worker import ENV, Done, Item, Task, run_batch
from replayable.boundary import bare_name, registry
from replayable.errors import ReplayableError, SideEffectRefused
from replayable.record import environment, new_run_id
from replayable.store import DEFAULT_STORE, Store, open_store
from replayable.store.base import EventRow, RunQuery, RunStatus
from replayable.store.files import TraceDirStore
from replayable.trace import Run

__all__ = ["CheckReport", "Group", "RunOutcome", "check", "list_checks", "load_check"]

ProgressFn = Callable[[int, int], None]


# -- selecting and distributing runs (in the caller) -----------------------------------------


def query_runs(
    src: Store,
    *,
    since: float | timedelta | None,
    until: float | None,
    name: str | None,
    tags: Mapping[str, str] | None,
    status: RunStatus | None,
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
        paths = {rid: p for rid, (_, p) in src.runs_with_paths().items()}
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
    known = {p for _, p in src.runs_with_paths().values()}
    return [str(p) for p in sorted(src.path.rglob("*.jsonl")) if p not in known]


def _refuse_side_effects(live: Iterable[str]) -> None:
    """A check never fires side effects: naming one live is refused before anything runs."""
    for entry in live:
        name = entry.partition("#")[0]
        for full, b in registry().items():
            if b.side_effects and name in (full, bare_name(full)):
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
    connection_url = getattr(store, "connection_url", None)  # PostgreSQL's, with credentials
    return str(connection_url()) if callable(connection_url) else store.url


def _batches(n: int, workers: int) -> int:
    return max(1, min(250, math.ceil(n / max(1, workers * 8))))


def _check_options(
    jobs: int, executor: str, address: str | None, limit: int | None, sample: int | None
) -> None:
    """Refuse options no check can run with, before anything is opened."""
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, not {jobs}")
    if executor not in ("local", "dask"):
        raise ValueError(f"executor must be 'local' or 'dask', not {executor!r}")
    if executor == "dask" and not address:
        raise ValueError("executor='dask' needs the scheduler's address (tcp://HOST:PORT)")
    for label, value in (("limit", limit), ("sample", sample)):
        if value is not None and value < 1:
            raise ValueError(f"{label} must be >= 1, not {value}")


def _selection_of(
    since: float | timedelta | None,
    until: float | None,
    name: str | None,
    tags: Mapping[str, str] | None,
    status: RunStatus | None,
    limit: int | None,
    sample: int | None,
    seed: int | None,
    live: Iterable[str],
    mods: tuple[str, ...],
    jobs: int,
    executor: str,
) -> dict[str, Any]:
    """What the check selected and how it ran, as kept with it (options left unset omitted)."""
    return {
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


def _tasks(
    sources: list[tuple[Store, list[tuple[Run | None, str | None]]]],
    mods: tuple[str, ...],
    live: tuple[str, ...],
    check_id: str,
    dask: bool,
    jobs: int,
    target: Store | None = None,
) -> list[Task]:
    """The chosen runs of each store in batches for the workers (each run's trace shipped
    with it when a Dask worker cannot open the store itself). The runs of ``target``, where
    kept replays are saved, read from it by the workers, are replayed keeping references to
    them; a replay kept elsewhere is kept in full (a reference never points across stores)."""
    workers = jobs if not dask else 8
    tasks: list[Task] = []
    index = 0
    for where, entries in sources:
        ship = dask and not _store_url(where).startswith(("postgresql://", "postgres://"))
        size = _batches(len(entries), workers)
        for start in range(0, len(entries), size):
            items = []
            for run, path in entries[start : start + size]:
                head = run.to_dict() if run is not None else None
                label = path or (run.id if run is not None else "")
                if ship:
                    data = _trace_bytes(where, run) if run is not None and not path else b""
                    if path:
                        data = Path(path).read_bytes()
                    items.append(Item(index, run=head, data=data, label=label))
                else:
                    items.append(Item(index, run=head, path=path, label=label))
                index += 1
            tasks.append(
                Task(
                    items=items,
                    store=None if ship or entries[start][1] else _store_url(where),
                    imports=mods,
                    live=live,
                    check_id=check_id,
                    sys_path=tuple(p for p in sys.path if p) if not dask else (),
                    kept_with_source=where is target and not ship,
                )
            )
    return tasks


def _run_tasks(
    tasks: list[Task], jobs: int, address: str | None, progress: ProgressFn | None, total: int
) -> list[Done]:
    """Every batch checked: in this process, in ``jobs`` processes, or on the Dask cluster at
    ``address``; ``progress`` told as batches finish."""
    done: list[Done] = []
    if progress is not None:
        progress(0, total)
    results: Iterable[list[Done]]
    if address is not None:
        results = _on_dask(tasks, address)
    elif jobs == 1 or len(tasks) == 1:
        results = (run_batch(t) for t in tasks)
    else:
        results = _on_processes(tasks, jobs)
    for batch in results:
        done.extend(batch)
        if progress is not None:
            progress(len(done), total)
    return done


def check(
    store: Store | str | os.PathLike[str] | None = None,
    *,
    imports: Iterable[str] | None = None,
    since: float | timedelta | None = None,
    until: float | None = None,
    name: str | None = None,
    tags: Mapping[str, str] | None = None,
    status: RunStatus | None = None,
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
    follow: bool = False,
    linked: Iterable[Store | str | os.PathLike[str]] = (),
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

    ``follow=True``: a run another service recorded for a step of a selected run (a linked
    run, :attr:`~replayable.Run.parent`) counts as part of its caller: it is not listed on its
    own, and when it diverged or failed, so did its caller (the detail names the service).
    Linked runs are found in ``store`` and in each of the ``linked`` stores (other services'
    stores): those found there for a selected run are checked with it.

    >>> import os
    >>> import replayable as rp
    >>> store = rp.open_store(os.path.join(tmp_dir, "traces.db"))
    >>> lookup = rp.boundary(kind="tool", name="demo:lookup")(lambda name: {"id": 7})
    >>> with rp.record(store=store):
    ...     lookup("Bob")["id"]
    7
    >>> report = check(store, since=timedelta(days=7))
    >>> report.ok, report.counts, [g.signature for g in report.groups]
    (True, {'unchanged': 1, 'diverged': 0, 'failed': 0, 'not_replayable': 0}, [])
    """
    _check_options(jobs, executor, address, limit, sample)
    src = open_store(store, must_exist=True)
    started = time.time()
    env = environment()
    if not ENV:  # forked workers inherit it, and need not ask git again
        ENV.update(env)
    check_id = new_run_id()
    mods = tuple(imports) if imports is not None else _default_imports()
    for mod in mods:
        importlib.import_module(mod)
    _refuse_side_effects(live)
    chosen: list[tuple[Run | None, str | None]] = []
    chosen += query_runs(
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
    selection = _selection_of(
        since, until, name, tags, status, limit, sample, seed, live, mods, jobs, executor
    )
    if linked and not follow:
        raise ValueError("linked= names where follow=True finds linked runs: pass follow=True")
    sources: list[tuple[Store, list[tuple[Run | None, str | None]]]] = [(src, chosen)]
    if follow:
        others = [src, *(open_store(x, must_exist=True) for x in linked)]
        sources += _linked_runs([r for r, _ in chosen if r is not None], others)
    dask = executor == "dask"
    target = _save_target(src, save_to) if save else None
    tasks = _tasks(sources, mods, tuple(live), check_id, dask, jobs, target)
    chosen = [entry for _, entries in sources for entry in entries]
    done = _run_tasks(tasks, jobs, address if dask else None, progress, len(chosen))
    done.sort(key=lambda d: d.index)
    outcomes = [d.outcome for d in done]
    if follow:
        callers = {
            r.id: (r.parent.run, str(r.metadata.get("service") or "service"))
            for r, _ in chosen
            if r is not None and r.parent is not None
        }
        outcomes = _fold_callees(outcomes, callers)
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
    if target is not None:
        _save(target, report, [d.kept for d in done if d.kept is not None])
        report.saved_to = target.url
    return report


_WORSE = {"unchanged": 0, "not_replayable": 0, "diverged": 1, "failed": 2}
"""How bad an outcome is for a caller whose linked run had it (a linked run no root call
replays is the caller's concern only)."""


def _linked_runs(
    runs: list[Run], stores: list[Store], depth: int = 8
) -> list[tuple[Store, list[tuple[Run | None, str | None]]]]:
    """The runs other services recorded for steps of ``runs`` (and, nested, of those), found in
    ``stores``, by store; a run is taken once, so a forged loop of links ends."""
    from replayable._linked import callees

    seen = {r.id for r in runs}
    found: dict[int, list[tuple[Run | None, str | None]]] = {}
    level = list(runs)
    for _ in range(depth):
        nxt: list[Run] = []
        for run in level:
            for i, store in enumerate(stores):
                for callee in callees(store, run.id):
                    if callee.id not in seen and callee.parent_run is None:
                        seen.add(callee.id)
                        found.setdefault(i, []).append((callee, None))
                        nxt.append(callee)
        if not nxt:
            break
        level = nxt
    return [(stores[i], entries) for i, entries in sorted(found.items())]


def _fold_callees(
    outcomes: list[RunOutcome], callers: Mapping[str, tuple[str, str]]
) -> list[RunOutcome]:
    """Outcomes with each linked run folded into its caller's (when the caller was checked
    too): the caller takes the worse of the two, the detail naming the service and run."""
    by_id = {o.run_id: o for o in outcomes}
    folded: set[str] = set()
    for o in outcomes:
        link = callers.get(o.run_id)
        if link is None or link[0] not in by_id:
            continue
        folded.add(o.run_id)
        caller = by_id[link[0]]
        if _WORSE.get(o.outcome, 0) > _WORSE.get(caller.outcome, 0):
            by_id[link[0]] = dataclasses.replace(
                caller,
                outcome=o.outcome,
                signature=o.signature,
                detail=f"in service {link[1]} (run {o.run_id}): {o.detail}",
            )
    return [by_id[o.run_id] for o in outcomes if o.run_id not in folded]


def _trace_bytes(store: Store, run: Run) -> bytes:
    from replayable.trace import trace_lines

    return b"".join(trace_lines(run, store.iter_events(run.id)))


def _on_processes(tasks: list[Task], jobs: int) -> Iterable[list[Done]]:
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


def _on_dask(tasks: list[Task], address: str) -> Iterable[list[Done]]:
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
