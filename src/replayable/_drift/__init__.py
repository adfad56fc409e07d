"""``rp.drift``: what does today's model do on last week's inputs?

Each recorded call of kind ``llm`` (or the kind asked for) is re-run live, alone: its boundary's
own function is called with the recorded input, so nothing else of the agent runs. Calls nested
inside it are served from the recording (clock and randomness run live: the model samples
again); a nested call the recording cannot serve stops that step, which is then reported as not
re-run. The live answer is compared with the recorded one field by field: model and
``system_fingerprint`` (from the step's metadata, as integrations record them), the tools the
model chose and their arguments, the JSON shape of a structured answer, and the similarity of
the text according to a judge (:mod:`replayable.testing`).

Drift is a policy of the call engine (:mod:`replayable._engine`): the step runs live, a call
nested in it is served from its recorded subtree or refused, and its ending is kept in memory
(nothing is written to a store). Steps run concurrently on one event loop (async boundaries are
awaited, sync ones run in a pool of worker threads), at most ``concurrency`` at a time.

Where things live: the report (:class:`DriftReport` and its parts) in ``_report``, re-running one
step alone in ``_rerun``, comparing a recorded answer with today's in ``_compare``; selecting the
runs and running the steps concurrently here.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

from replayable import canonical
from replayable._drift._compare import answer_of, compare_answers
from replayable._drift._report import DriftChange, DriftReport, StepDrift
from replayable._drift._rerun import (
    NotRerunnable,
    StepSession,
    recorded_arguments,
    run_async,
    run_sync,
)
from replayable.boundary import bare_name, registry
from replayable.redact import redact
from replayable.store import Store, open_store
from replayable.store.base import RunStatus
from replayable.trace import Event, Run

if TYPE_CHECKING:
    from replayable._pii import PII, Pseudonymizer
    from replayable.testing._judges import Judge

__all__ = ["DriftChange", "DriftReport", "StepDrift", "drift", "select_runs"]

T = TypeVar("T")


# -- selection ----------------------------------------------------------------------------------


def select_runs(
    refs: Iterable[str | Run] = (),
    *,
    store: Store | str | None = None,
    since: float | timedelta | None = None,
    name: str | None = None,
    tags: Mapping[str, str] | None = None,
    status: RunStatus | None = None,
    limit: int | None = None,
    sample: int | None = None,
    seed: int | None = None,
) -> list[tuple[Run, list[Event]]]:
    """The runs named by id (or prefix), trace file or :class:`Run`, plus those a query picks
    (the same selection as ``rp.check``: newest first, replays left out, ``sample`` of them).
    """
    from replayable._check import query_runs
    from replayable.store import load_run

    refs = list(refs)
    out = [load_run(ref, store) for ref in refs]
    if refs and not any(x is not None for x in (since, name, tags, status)):
        return out
    src = open_store(store)
    seen = {run.id for run, _ in out}
    picked = query_runs(
        src,
        since=since,
        until=None,
        name=name,
        tags=tags,
        status=status,
        limit=limit,
        sample=sample,
        seed=seed,
    )
    for run, _path in picked:
        if run.id not in seen:
            out.append((run, list(src.iter_events(run.id))))
            seen.add(run.id)
    return out


# -- the whole check --------------------------------------------------------------------------


def _steps(run: Run, events: list[Event], kind: str) -> list[tuple[Event, list[Event], str]]:
    """The outermost calls of ``kind``, each with its recorded subtree and its ``name#N``."""
    by_seq = {e.seq: e for e in events}
    children: dict[int | None, list[Event]] = defaultdict(list)
    counts: Counter[str] = Counter()
    nth: dict[int, int] = {}
    for ev in sorted(events, key=lambda e: e.seq):
        children[ev.parent_seq].append(ev)
        counts[ev.boundary] += 1
        nth[ev.seq] = counts[ev.boundary]

    def inside_same_kind(ev: Event) -> bool:
        p = ev.parent_seq
        while p is not None and p in by_seq:
            if by_seq[p].kind == kind:
                return True
            p = by_seq[p].parent_seq
        return False

    fulls: dict[str, set[str]] = defaultdict(set)  # bare name -> full names, to spot clashes
    for ev in events:
        fulls[bare_name(ev.boundary)].add(ev.boundary)
    out = []
    for ev in sorted(events, key=lambda e: e.seq):
        if ev.kind != kind or inside_same_kind(ev):
            continue
        subtree: list[Event] = []
        stack = list(children.get(ev.seq, ()))
        while stack:
            child = stack.pop()
            subtree.append(child)
            stack.extend(children.get(child.seq, ()))
        bare = bare_name(ev.boundary)
        name = ev.boundary if len(fulls[bare]) > 1 else bare
        out.append((ev, sorted(subtree, key=lambda e: e.seq), f"{name}#{nth[ev.seq]}"))
    return out


async def _in_pool(pool: ThreadPoolExecutor, fn: Callable[..., T], *args: Any) -> T:
    """``fn(*args)`` on ``pool``, in a copy of this context (what ``asyncio.to_thread`` does,
    with a pool as wide as the concurrency asked for)."""
    ctx = contextvars.copy_context()
    return await asyncio.get_running_loop().run_in_executor(pool, ctx.run, fn, *args)


async def _one(
    run: Run,
    ev: Event,
    nested: list[Event],
    step: str,
    judge: Judge | None,
    pool: ThreadPoolExecutor,
    pii: Pseudonymizer | None = None,
) -> StepDrift:
    result = StepDrift(run.id, ev.seq, ev.address, ev.boundary, step)
    b = registry().get(ev.boundary)
    if b is None:
        result.status = "not_rerun"
        result.reason = (
            f"{ev.boundary} is not registered here: no client configured or boundary not "
            "importable (--import the module that defines or instruments it)"
        )
        return result
    if b.side_effects:
        result.status = "not_rerun"
        result.reason = f"{ev.boundary} has side effects; drift never runs those"
        return result
    try:
        args, kwargs = recorded_arguments(b, ev)
    except NotRerunnable as exc:
        result.status, result.reason = "not_rerun", str(exc)
        return result
    session = StepSession(ev, nested, pii)
    if b.is_async or b.is_agen:
        await run_async(session, b, args, kwargs)
    else:
        await _in_pool(pool, run_sync, session, b, args, kwargs)
    live = session.live
    if session.blocked is not None or live is None:
        result.status = "not_rerun"
        result.reason = str(session.blocked or "the call did not finish")
        return result
    recorded = answer_of(ev.output, ev.meta or {}, ev.error)
    meta = redact(canonical.sanitize(live.meta)[0])
    now = answer_of(live.output, meta if pii is None else pii.value(meta), live.error)
    changes, result.similarity = await _in_pool(pool, compare_answers, recorded, now, judge)
    result.changes = changes
    result.status = "drifted" if changes else "same"
    return result


async def _all(
    work: list[tuple[Run, Event, list[Event], str]],
    judge: Judge | None,
    concurrency: int,
    pii: Mapping[str, Pseudonymizer | None],
) -> list[StepDrift]:
    gate = asyncio.Semaphore(concurrency)
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="replayable-drift") as pool:

        async def bounded(run: Run, ev: Event, nested: list[Event], step: str) -> StepDrift:
            async with gate:
                return await _one(run, ev, nested, step, judge, pool, pii.get(run.id))

        return list(await asyncio.gather(*(bounded(*w) for w in work)))


def _run_loop(coro: Coroutine[Any, Any, T]) -> T:
    """Run ``coro`` on an event loop of its own: here, or in a helper thread when this thread
    already runs one (drift called from async code, a notebook)."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return asyncio.run(coro)
    with ThreadPoolExecutor(max_workers=1, thread_name_prefix="replayable-drift-loop") as one:
        return one.submit(asyncio.run, coro).result()


def drift(
    runs: Iterable[str | Run] | str | Run = (),
    *,
    store: Store | str | None = None,
    since: float | timedelta | None = None,
    name: str | None = None,
    tags: Mapping[str, str] | None = None,
    status: RunStatus | None = None,
    limit: int | None = None,
    sample: int | None = None,
    seed: int | None = None,
    kind: str = "llm",
    judge: Judge | bool | None = True,
    concurrency: int = 8,
    pii: PII | None = None,
) -> DriftReport:
    """Re-run the recorded ``kind`` calls (default ``llm``) of some runs live, and report what
    changed: model, ``system_fingerprint``, tools chosen and their arguments, structured shape,
    text similarity.

    ``runs``: run ids (or prefixes), trace files or :class:`Run` objects; and/or a query
    (``since`` in epoch seconds or a ``timedelta`` back from now, ``name``, ``tags``,
    ``status``, ``limit``, a ``sample`` of N with ``seed``), the same selection as
    :func:`replayable.check`. Only the model calls run: their boundaries must be registered
    (import the module that defines them, or that instruments the SDK client pointing at
    today's model). ``judge``: the :class:`~replayable.testing.Judge` for text (``True``: the
    default judge; ``None``: texts must be equal). At most ``concurrency`` calls run at once.
    A run recorded with personal data pseudonymized is re-run the way its replay is: live
    inputs and answers are pseudonymized under its key (``pii=rp.PII(key=...)``, else the
    environment) before they are keyed, compared or reported.

    For example (a sketch, not run as a doctest)::

        report = drift(since=timedelta(days=7), name="support")
        print(report.report())
    """
    if concurrency < 1:
        raise ValueError("concurrency must be >= 1")
    refs = [runs] if isinstance(runs, str | Run) else list(runs)
    selected = select_runs(
        refs,
        store=store,
        since=since,
        name=name,
        tags=tags,
        status=status,
        limit=limit,
        sample=sample,
        seed=seed,
    )
    chosen: Judge | None
    if judge is True:
        from replayable.testing._judges import default_judge

        chosen = default_judge()
    else:
        chosen = judge or None
    from replayable._pii import for_replay

    # a missing or wrong key fails here, before any call runs
    pseudonymizers = {run.id: for_replay(run.id, run.metadata, pii) for run, _ in selected}
    work = [
        (run, ev, nested, step)
        for run, events in selected
        for ev, nested, step in _steps(run, events, kind)
    ]
    steps = _run_loop(_all(work, chosen, concurrency, pseudonymizers)) if work else []
    return DriftReport([run for run, _ in selected], steps)
