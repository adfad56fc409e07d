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
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect
import threading
from collections import Counter, defaultdict
from collections.abc import Callable, Coroutine, Iterable, Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import timedelta
from typing import TYPE_CHECKING, Any, TypeVar

import orjson

from replayable import canonical
from replayable._diff import diff_values
from replayable._engine import Ending, Engine, Serve, activate, deactivate
from replayable._errors_codec import encode_error
from replayable.boundary import Boundary, registry
from replayable.context import FRAME, SESSION, Frame
from replayable.errors import ReplayableError
from replayable.redact import redact
from replayable.store import Store, open_store
from replayable.store.base import RunStatus
from replayable.trace import Event, Run

if TYPE_CHECKING:
    from replayable.testing._judges import Judge

__all__ = ["DriftChange", "DriftReport", "StepDrift", "drift", "select_runs"]

T = TypeVar("T")

FIELDS = ("model", "system_fingerprint", "tool", "arguments", "shape", "text", "error")
"""What a drift report compares, in the order it reports them."""


class _NotRerunnable(ReplayableError):
    """The step cannot be re-run alone (its boundary is missing, or it needs a live call)."""


@dataclass(frozen=True, slots=True)
class DriftChange:
    """One field that changed between the recorded answer and today's: ``field`` is one of
    :data:`FIELDS`; ``detail`` says how (e.g. ``customer_id: 13 -> 12``)."""

    field: str
    recorded: Any
    live: Any
    detail: str = ""

    def __str__(self) -> str:
        if self.detail:
            return f"{self.field}: {self.detail}"
        return f"{self.field}: {_short(self.recorded)} -> {_short(self.live)}"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form."""
        return {
            "field": self.field,
            "recorded": self.recorded,
            "live": self.live,
            "detail": self.detail,
        }


@dataclass(slots=True)
class StepDrift:
    """One re-run step: ``status`` is ``same``, ``drifted``, or ``not_rerun`` (``reason`` says
    why: no client configured, boundary not importable, a nested call it cannot serve)."""

    run_id: str
    seq: int
    address: str
    boundary: str
    step: str
    status: str = "same"
    changes: list[DriftChange] = field(default_factory=list)
    similarity: float | None = None
    reason: str = ""

    @property
    def drifted(self) -> bool:
        """True when at least one compared field changed."""
        return self.status == "drifted"

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form."""
        return {
            "run_id": self.run_id,
            "seq": self.seq,
            "address": self.address,
            "boundary": self.boundary,
            "step": self.step,
            "status": self.status,
            "changes": [c.to_dict() for c in self.changes],
            "similarity": self.similarity,
            "reason": self.reason,
        }


@dataclass(slots=True)
class DriftReport:
    """Every re-run step, and a summary per boundary (:meth:`summary`).

    For example (a sketch, not run as a doctest)::

        report = rp.drift(name="support-agent", since=timedelta(days=7))
        [(s.step, [str(c) for c in s.changes]) for s in report.drifted]
        print(report.report())
    """

    runs: list[Run]
    steps: list[StepDrift]

    @property
    def drifted(self) -> list[StepDrift]:
        """The steps whose answer changed."""
        return [s for s in self.steps if s.drifted]

    @property
    def not_rerun(self) -> list[StepDrift]:
        """The steps that could not be re-run, each with its reason."""
        return [s for s in self.steps if s.status == "not_rerun"]

    def summary(self) -> dict[str, dict[str, Any]]:
        """Per boundary: calls, how many drifted or were not re-run, and counts by field."""
        out: dict[str, dict[str, Any]] = {}
        for s in self.steps:
            entry = out.setdefault(
                s.boundary, {"calls": 0, "drifted": 0, "not_rerun": 0, "fields": Counter()}
            )
            entry["calls"] += 1
            if s.status == "drifted":
                entry["drifted"] += 1
                entry["fields"].update({c.field for c in s.changes})
            elif s.status == "not_rerun":
                entry["not_rerun"] += 1
        for entry in out.values():
            entry["fields"] = {f: entry["fields"][f] for f in FIELDS if entry["fields"][f]}
        return out

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form: runs, steps and the per-boundary summary."""
        return {
            "runs": [r.id for r in self.runs],
            "steps": [s.to_dict() for s in self.steps],
            "summary": self.summary(),
        }

    def report(self) -> str:
        """A human-readable report: one line per drifted or not re-run step, then the summary."""
        lines = [
            f"drift over {len(self.runs)} run(s): {len(self.steps)} step(s) re-run live, "
            f"{len(self.drifted)} drifted, {len(self.not_rerun)} not re-run"
        ]
        for s in self.steps:
            if s.status == "drifted":
                lines.append(f"~ {s.run_id} {s.step} ({s.address})")
                lines.extend(f"    {c}" for c in s.changes)
            elif s.status == "not_rerun":
                lines.append(f"? {s.run_id} {s.step}: not re-run: {s.reason}")
        for name, entry in self.summary().items():
            how = ", ".join(f"{f} {n}" for f, n in entry["fields"].items())
            lines.append(
                f"{name}: {entry['drifted']}/{entry['calls']} call(s) drifted"
                + (f" ({how})" if how else "")
                + (f", {entry['not_rerun']} not re-run" if entry["not_rerun"] else "")
            )
        return "\n".join(lines)


def _bare(name: str) -> str:
    return name.rsplit(":", 1)[-1].rsplit(".", 1)[-1]


def _short(value: Any, limit: int = 60) -> str:
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    return text if len(text) <= limit else text[: limit - 1] + "…"


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
    from replayable._check import _selection
    from replayable.store import load_run

    refs = list(refs)
    out = [load_run(ref, store) for ref in refs]
    if refs and not any(x is not None for x in (since, name, tags, status)):
        return out
    src = open_store(store)
    seen = {run.id for run, _ in out}
    picked = _selection(
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


# -- re-running one step ------------------------------------------------------------------------


class _StepSession(Engine):
    """The drift policy for one step: the step itself runs live, calls nested in it are served
    from its recorded subtree, clock and randomness run live (the model samples again), and any
    other call stops the step (it is reported as not re-run)."""

    serves_recordings = True  # a side effect called outside the context is refused, not fired

    def __init__(self, top: Event, nested: list[Event]) -> None:
        super().__init__()
        self.top = top
        self.pending = list(nested)
        self.lock = threading.Lock()
        self.blocked: _NotRerunnable | None = None
        """Set when a nested call could not be served, even if the model code caught it."""
        self.live: _Live | None = None

    def at_start(self, frame: Frame) -> Serve | None:
        b = frame.b
        assert b is not None
        if frame.parent is self.root or b.kind == "clock":
            return None
        data, value = canonical.clean_input(b, frame.data)
        key = canonical.input_key(b, data, value)
        with self.lock:
            for ev in self.pending:
                if ev.boundary == b.name and ev.key == key:
                    self.pending.remove(ev)
                    return Serve.recorded(ev.output, ev.error, ev.meta)
        self.blocked = _NotRerunnable(
            f"it calls {b.name} with an input the recording does not have; drift re-runs only "
            f"the {self.top.kind} call itself"
        )
        raise self.blocked

    def at_end(self, frame: Frame, outcome: Ending) -> None:
        if frame.parent is not self.root:
            return
        output = None if outcome.output is None else redact(orjson.loads(outcome.output))
        error = None if outcome.error is None else encode_error(outcome.error)
        self.live = _Live(output=output, error=error, meta=dict(frame.meta))


def _arguments(b: Boundary, ev: Event) -> tuple[list[Any], dict[str, Any]]:
    """The recorded input as call arguments (``*args`` and positional-only ones restored)."""
    kwargs = dict(ev.input) if isinstance(ev.input, dict) else {}
    args: list[Any] = []
    if b.signature is not None:
        params = list(b.signature.parameters.values())
        if params and params[0].name in ("self", "cls"):
            raise _NotRerunnable(
                f"{b.name} is a method; drift calls functions (instrument the client, or make "
                "the model call a function boundary)"
            )
        for p in params:
            if p.kind is inspect.Parameter.VAR_POSITIONAL:
                args = list(kwargs.pop(p.name, []))
            elif p.kind is inspect.Parameter.POSITIONAL_ONLY and p.name in kwargs:
                args.append(kwargs.pop(p.name))
    return args, kwargs


@dataclass(slots=True)
class _Live:
    output: Any = None
    error: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def _run_sync(session: _StepSession, b: Boundary, args: list[Any], kwargs: dict[str, Any]) -> None:
    tokens = (SESSION.set(session), FRAME.set(session.root))
    activate(session)
    try:
        result = b.wrapper(*args, **kwargs)
        if inspect.isgenerator(result):
            for _ in result:
                pass
    except Exception:
        pass  # the engine handed it to at_end: the live answer is an error
    finally:
        deactivate(session)
        FRAME.reset(tokens[1])
        SESSION.reset(tokens[0])


async def _run_async(
    session: _StepSession, b: Boundary, args: list[Any], kwargs: dict[str, Any]
) -> None:
    tokens = (SESSION.set(session), FRAME.set(session.root))
    activate(session)
    try:
        result = b.wrapper(*args, **kwargs)
        if inspect.isasyncgen(result):
            async for _ in result:
                pass
        else:
            await result
    except Exception:
        pass  # the engine handed it to at_end: the live answer is an error
    finally:
        deactivate(session)
        FRAME.reset(tokens[1])
        SESSION.reset(tokens[0])


# -- comparing answers ----------------------------------------------------------------------


@dataclass(slots=True)
class _Answer:
    model: Any = None
    fingerprint: Any = None
    tools: list[tuple[str, Any]] = field(default_factory=list)
    text: str = ""
    shape: Any = None
    error: str | None = None


def _json_or(text: Any) -> Any:
    if not isinstance(text, str):
        return text
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError:
        return text


def _shape(value: Any) -> Any:
    """The JSON type skeleton of a value: keys and types, not contents."""
    if isinstance(value, dict):
        return {k: _shape(v) for k, v in sorted(value.items())}
    if isinstance(value, list):
        shapes = []
        for item in value:
            s = _shape(item)
            if s not in shapes:
                shapes.append(s)
        return shapes
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "null"


def _stream_text(chunks: list[Any]) -> tuple[str, list[tuple[str, Any]]]:
    """Text and tool calls folded from streamed chat-completion or Anthropic chunks."""
    text: list[str] = []
    calls: dict[int, list[str]] = {}
    for chunk in chunks:
        if not isinstance(chunk, dict):
            continue
        for choice in chunk.get("choices") or ():
            delta = choice.get("delta") or {}
            if isinstance(delta.get("content"), str):
                text.append(delta["content"])
            for tc in delta.get("tool_calls") or ():
                fn = tc.get("function") or {}
                slot = calls.setdefault(int(tc.get("index", 0)), ["", ""])
                slot[0] += fn.get("name") or ""
                slot[1] += fn.get("arguments") or ""
        delta = chunk.get("delta")
        if isinstance(delta, dict) and isinstance(delta.get("text"), str):
            text.append(delta["text"])
        if chunk.get("type") == "response.output_text.delta" and isinstance(
            chunk.get("delta"), str
        ):
            text.append(chunk["delta"])
    return "".join(text), [(n, _json_or(a)) for n, a in calls.values()]


_TEXT_KEYS = ("text", "content", "answer", "reason", "message")


def _answer(output: Any, meta: Mapping[str, Any], error: Mapping[str, Any] | None) -> _Answer:
    """What is compared: model, fingerprint, tools chosen, text and structured shape."""
    out = output if isinstance(output, dict) else {}
    ans = _Answer(
        model=meta.get("response_model") or meta.get("model") or out.get("model"),
        fingerprint=meta.get("system_fingerprint") or out.get("system_fingerprint"),
    )
    if error is not None:
        ans.error = str(error.get("type", "error"))
        return ans
    texts: list[str] = []
    structured = True
    if isinstance(output, list):  # a stream
        text, ans.tools = _stream_text(output)
        texts.append(text)
    elif "choices" in out:  # OpenAI chat completion
        for choice in out.get("choices") or ():
            msg = choice.get("message") or {}
            if isinstance(msg.get("content"), str):
                texts.append(msg["content"])
            for tc in msg.get("tool_calls") or ():
                fn = tc.get("function") or {}
                ans.tools.append((str(fn.get("name")), _json_or(fn.get("arguments"))))
    elif isinstance(out.get("output"), list):  # OpenAI Responses
        for item in out["output"]:
            if item.get("type") == "function_call":
                ans.tools.append((str(item.get("name")), _json_or(item.get("arguments"))))
            for part in item.get("content") or ():
                if isinstance(part, dict) and isinstance(part.get("text"), str):
                    texts.append(part["text"])
    elif isinstance(out.get("content"), list):  # Anthropic message
        for part in out["content"]:
            if part.get("type") == "tool_use":
                ans.tools.append((str(part.get("name")), part.get("input")))
            elif isinstance(part.get("text"), str):
                texts.append(part["text"])
    elif isinstance(output, str):
        texts.append(output)
    elif out:  # a function's own answer: a tool choice and/or text fields
        structured = False
        if isinstance(out.get("tool"), str):
            ans.tools.append((out["tool"], out.get("arguments")))
        texts.extend(str(out[k]) for k in _TEXT_KEYS if isinstance(out.get(k), str))
        ans.shape = _shape(out)
    ans.text = "\n".join(t for t in texts if t)
    if structured:
        parsed = _json_or(ans.text.strip())
        if isinstance(parsed, dict | list):
            ans.shape = _shape(parsed)
    return ans


def _compare(
    recorded: _Answer, live: _Answer, judge: Judge | None
) -> tuple[list[DriftChange], float | None]:
    changes: list[DriftChange] = []
    if recorded.error != live.error:
        changes.append(DriftChange("error", recorded.error, live.error))
    if recorded.model != live.model:
        changes.append(DriftChange("model", recorded.model, live.model))
    if recorded.fingerprint != live.fingerprint:
        changes.append(DriftChange("system_fingerprint", recorded.fingerprint, live.fingerprint))
    names_r = [n for n, _ in recorded.tools]
    names_l = [n for n, _ in live.tools]
    if names_r != names_l:
        changes.append(DriftChange("tool", names_r, names_l))
    else:
        for (name, a), (_, b) in zip(recorded.tools, live.tools, strict=True):
            diff = diff_values(a, b)
            if diff:
                detail = f"{name}: " + "; ".join(str(c).lstrip("~+- ") for c in diff[:5])
                changes.append(DriftChange("arguments", a, b, detail))
    if recorded.shape != live.shape:
        changes.append(DriftChange("shape", recorded.shape, live.shape))
    similarity = None
    if recorded.text != live.text:
        if recorded.text and live.text and judge is not None:
            verdict = judge.judge(live.text, recorded.text)
            similarity = verdict.score
            if not verdict.passed:
                changes.append(
                    DriftChange(
                        "text",
                        recorded.text,
                        live.text,
                        f"similarity {verdict.score:.2f} ({verdict.reason})",
                    )
                )
        else:
            similarity = 0.0 if (recorded.text or live.text) else None
            changes.append(DriftChange("text", recorded.text, live.text))
    elif recorded.text:
        similarity = 1.0
    return changes, similarity


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
        fulls[_bare(ev.boundary)].add(ev.boundary)
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
        bare = _bare(ev.boundary)
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
        args, kwargs = _arguments(b, ev)
    except _NotRerunnable as exc:
        result.status, result.reason = "not_rerun", str(exc)
        return result
    session = _StepSession(ev, nested)
    if b.is_async or b.is_agen:
        await _run_async(session, b, args, kwargs)
    else:
        await _in_pool(pool, _run_sync, session, b, args, kwargs)
    live = session.live
    if session.blocked is not None or live is None:
        result.status = "not_rerun"
        result.reason = str(session.blocked or "the call did not finish")
        return result
    recorded = _answer(ev.output, ev.meta or {}, ev.error)
    now = _answer(live.output, redact(canonical.sanitize(live.meta)[0]), live.error)
    changes, result.similarity = await _in_pool(pool, _compare, recorded, now, judge)
    result.changes = changes
    result.status = "drifted" if changes else "same"
    return result


async def _all(
    work: list[tuple[Run, Event, list[Event], str]], judge: Judge | None, concurrency: int
) -> list[StepDrift]:
    gate = asyncio.Semaphore(concurrency)
    with ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="replayable-drift") as pool:

        async def bounded(run: Run, ev: Event, nested: list[Event], step: str) -> StepDrift:
            async with gate:
                return await _one(run, ev, nested, step, judge, pool)

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
    work = [
        (run, ev, nested, step)
        for run, events in selected
        for ev, nested, step in _steps(run, events, kind)
    ]
    steps = _run_loop(_all(work, chosen, concurrency)) if work else []
    return DriftReport([run for run, _ in selected], steps)
