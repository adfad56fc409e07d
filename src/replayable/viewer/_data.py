"""What the viewer shows, as plain data: run rows, tree rows with timeline bars, step details.

No HTML here (templates do that, with autoescaping); the JSON API returns these same dicts.
"""

from __future__ import annotations

import re
import shlex
import threading
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import orjson

from replayable import _cut
from replayable._linked import Callee, linked_tree
from replayable._otlp import source_line
from replayable._otlp._replay import is_imported_step
from replayable._rootcall import root_event
from replayable._rundiff import run_usage, tokens_of
from replayable._tree import Step, build_tree
from replayable.boundary import bare_name
from replayable.errors import ReplayableError, RunNotFound
from replayable.store.base import Store
from replayable.trace import Event, Run

__all__ = [
    "MAX_INLINE_BYTES",
    "LoadedRun",
    "RunCache",
    "fork_changes",
    "fork_command",
    "loaded_run",
    "pretty",
    "preview",
    "retrieval_cards",
    "root_module",
    "run_summary",
    "step_data",
    "tree_rows",
]

MAX_INLINE_BYTES = 1_000_000
"""Values bigger than this (as JSON) are cut in pages and API lists, with a link to the full one."""

SAMPLING_KEYS = ("temperature", "top_p", "top_k", "max_tokens", "max_output_tokens", "seed")


def _json(value: Any, indent: bool = False) -> str:
    opts = orjson.OPT_SORT_KEYS | (orjson.OPT_INDENT_2 if indent else 0)
    try:
        return orjson.dumps(value, option=opts).decode()
    except TypeError:
        return repr(value)


def preview(value: Any, limit: int = 140) -> str:
    """One line of JSON (strings as they are), cut to ``limit`` characters."""
    text = value if isinstance(value, str) else _json(value)
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def pretty(value: Any, limit: int = MAX_INLINE_BYTES) -> tuple[str, bool, int]:
    """(indented JSON cut to ``limit`` bytes, whether it was cut, full size in bytes)."""
    text = value if isinstance(value, str) else _json(value, indent=True)
    size = len(text.encode())
    if size <= limit:
        return text, False, size
    return text.encode()[:limit].decode(errors="ignore") + "\n…", True, size


@dataclass(slots=True)
class Placed:
    """A line of the tree: a step of ``owner`` (the run shown, or a run another service
    recorded for one of its steps), ``shift`` levels deeper than its own address says; a step
    of ``None`` is the head line of a linked run."""

    owner: Run
    step: Step | None
    shift: int = 0
    children: int = 0


@dataclass(slots=True)
class LoadedRun:
    """A run with its events, the step tree in display order (runs other services recorded
    for its steps nested in it), and the timeline's frame."""

    run: Run
    events: list[Event]
    by_seq: dict[int, Event]
    rows: list[Placed]
    t0: float
    span: float


def _placed(
    run: Run, events: list[Event], linked: dict[str, list[Callee]], shift: int
) -> list[Placed]:
    rows: list[Placed] = []

    def add(steps: list[Step]) -> None:
        for step in steps:
            callees = linked.get(step.address, ())
            rows.append(Placed(run, step, shift, len(step.children) + len(callees)))
            add(step.children)
            for callee in callees:
                depth = shift + step.depth + 1
                roots = build_tree(callee.events)
                rows.append(Placed(callee.run, None, depth, len(roots)))
                rows.extend(_placed(callee.run, callee.events, callee.callees, depth + 1))

    add(build_tree(events))
    return rows


def _load(store: Store, run: Run, stores: Sequence[Store] = (), reveal: bool = False) -> LoadedRun:
    events: list[Event] = list(store.iter_events(run.id))
    if reveal and "pii" in run.metadata:  # real values, from the run's vault, with the key
        from replayable._pii_vault import reveal_run

        run, events = reveal_run(run, events)
    return loaded_run(run, events, linked_tree(run, stores or [store]))


def loaded_run(
    run: Run, events: list[Event], linked: dict[str, list[Callee]] | None = None
) -> LoadedRun:
    """A run and its events (in start order) ready for the views: the tree (with the runs
    other services recorded for its steps, ``linked``) and the timeline's frame."""
    rows = _placed(run, events, linked or {}, 0)
    starts = [e.started_at for e in events if e.started_at]
    ends = [e.started_at + e.duration_ns / 1e9 for e in events if e.started_at]
    t0 = min([run.started_at, *starts]) if run.started_at else min(starts, default=0.0)
    end = max([*ends, run.ended_at or 0.0, t0])
    return LoadedRun(run, events, {e.seq: e for e in events}, rows, t0, max(end - t0, 1e-9))


class RunCache:
    """Finished runs never change, so their parsed events and trees are kept (a few, LRU)."""

    def __init__(
        self, store: Store, size: int = 8, linked: Sequence[Store] = (), *, reveal: bool = False
    ) -> None:
        self.store = store
        self.linked = list(linked)
        """Further stores to find the runs other services recorded for a run's steps in."""
        self.size = size
        self.reveal = reveal
        """Show the real values behind personal-data pseudonyms (``serve --reveal``)."""
        self._items: OrderedDict[str, LoadedRun] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, run_id: str) -> LoadedRun:
        """The run (id or unique prefix) loaded with its events; raises ``RunNotFound``. A run
        of another service's store (a linked run shown nested) is found there too."""
        store = self.store
        try:
            run = store.get_run(run_id)
        except RunNotFound:
            for other in self.linked:
                try:
                    run = other.get_run(run_id)
                except RunNotFound:
                    continue
                store = other
                break
            else:
                raise
        with self._lock:
            hit = self._items.get(run.id)
            if hit is not None and hit.run.status == run.status:
                self._items.move_to_end(run.id)
                return hit
        loaded = _load(store, run, [self.store, *self.linked], self.reveal)
        if run.status in ("ok", "error"):
            with self._lock:
                self._items[run.id] = loaded
                while len(self._items) > self.size:
                    self._items.popitem(last=False)
        return loaded


def _bounds(step: Step) -> tuple[float, float] | None:
    if step.event is not None:
        ev = step.event
        return ev.started_at, ev.started_at + ev.duration_ns / 1e9
    spans = [b for c in step.children if (b := _bounds(c)) is not None]
    if not spans:
        return None
    return min(s for s, _ in spans), max(e for _, e in spans)


def _tokens(ev: Event) -> dict[str, int] | None:
    i, o = tokens_of(ev.meta.get("usage"))
    return {"input": i, "output": o} if i or o else None


def _error_line(error: dict[str, Any]) -> str:
    kind = str(error.get("type", "")).removeprefix("builtins:")
    return f"{kind}: {error.get('message', '')}"


def _head_row(loaded: LoadedRun, placed: Placed, index: int) -> dict[str, Any]:
    run = placed.owner
    left = (run.started_at - loaded.t0) / loaded.span * 100
    width = ((run.ended_at or run.started_at) - run.started_at) / loaded.span * 100
    service = run.metadata.get("service") or "service"
    return {
        "index": index,
        "seq": -1,
        "run_id": run.id,
        "depth": placed.shift,
        "address": "",
        "boundary": "",
        "name": f"{service}: run {run.id}",
        "children": placed.children,
        "incomplete": False,
        "bar": {"left": round(max(left, 0.0), 3), "width": round(max(width, 0.15), 3)},
        "kind": "run",
        "linked_run": True,
        "duration_ns": None if run.ended_at is None else int((run.ended_at - run.started_at) * 1e9),
        "started_at": run.started_at,
        "served": False,
        "model": None,
        "tokens": None,
        "error": None if run.error is None else _error_line(run.error),
        "preview": f"{run.name or ''}  {run.status}",
    }


def tree_row(loaded: LoadedRun, placed: Placed, index: int, chars: int = 90) -> dict[str, Any]:
    """One line of the step tree: what it is, a short preview (input and output each cut to
    ``chars`` characters) and its timeline bar (percent)."""
    step = placed.step
    if step is None:
        return _head_row(loaded, placed, index)
    ev = step.event
    bounds = _bounds(step)
    left = width = 0.0
    if bounds is not None:
        left = (bounds[0] - loaded.t0) / loaded.span * 100
        width = (bounds[1] - bounds[0]) / loaded.span * 100
    row: dict[str, Any] = {
        "index": index,
        "seq": step.seq,
        "run_id": placed.owner.id,
        "linked_run": False,
        "depth": step.depth + placed.shift,
        "address": step.address,
        "boundary": step.boundary,
        "name": step.boundary
        if ev is not None and ev.kind == "remote"
        else step.boundary.rsplit(":", 1)[-1],
        "children": placed.children,
        "incomplete": ev is None,
        "bar": {"left": round(max(left, 0.0), 3), "width": round(max(width, 0.15), 3)},
    }
    if ev is None:
        row.update(
            kind="incomplete",
            error=None,
            duration_ns=None,
            started_at=None,
            served=False,
            model=None,
            tokens=None,
            preview="",
        )
        return row
    row.update(
        kind=ev.kind,
        duration_ns=ev.duration_ns,
        started_at=ev.started_at,
        served=bool(ev.meta.get("served")),
        model=ev.meta.get("model") or ev.meta.get("response_model"),
        tokens=_tokens(ev),
        error=None if ev.error is None else _error_line(ev.error),
        preview=preview(ev.input, chars) + "  →  " + preview(ev.output, chars)
        if ev.error is None
        else preview(ev.input, chars),
    )
    return row


def tree_rows(
    loaded: LoadedRun, offset: int = 0, limit: int = 500, chars: int = 90
) -> list[dict[str, Any]]:
    """A page of the step tree, depth first in start order."""
    page = loaded.rows[offset : offset + limit]
    return [tree_row(loaded, step, offset + i, chars) for i, step in enumerate(page)]


def run_summary(run: Run) -> dict[str, Any]:
    """A run as the run list and the API show it (no environment dump). A fork carries
    ``fork``: the step it forked at (``seq``, ``address``, ``step``) in its source."""
    d = run.to_dict()
    d["duration_s"] = run.duration_s
    d["replay_of"] = run.parent_run or run.metadata.get("replay_of")
    fork = run.metadata.get("fork")
    d["fork"] = fork if isinstance(fork, dict) and fork.get("step") else None
    return d


def fork_changes(loaded: LoadedRun) -> list[dict[str, Any]]:
    """A fork's changes (what its what-if changed, in order), each with the ``seq`` of its step
    in the fork's own run when it has one (a step not reached has none)."""
    fork = loaded.run.metadata.get("fork")
    if not isinstance(fork, dict):
        return []
    seqs = {e.address: e.seq for e in loaded.events}
    return [
        {**c, "seq": None if c.get("how") == "not reached" else seqs.get(str(c.get("address")))}
        for c in fork.get("changes") or ()
        if isinstance(c, dict)
    ]


def root_module(loaded: LoadedRun) -> str:
    """The module of the run's root agent: what ``--import`` needs to replay or fork it."""
    try:
        root = root_event(loaded.run, loaded.events)
    except ReplayableError:  # nothing but clock reads at the top
        return "your_module"
    if root.kind == "remote":  # named http:..., not after a module
        return "your_module"
    if is_imported_step(root):  # named kind:span name (agent:support), not after a module
        return "your_module"
    return root.boundary.split(":", 1)[0]


def _shell_word(text: str) -> str:
    """``text`` as one shell word: bare when it is plain (``#`` inside a word is no comment)."""
    return text if re.fullmatch(r"[\w@%+=:,./#-]+", text) else shlex.quote(text)


def fork_command(loaded: LoadedRun, seq: int, store_url: str) -> str | None:
    """``replayable fork RUN --at name#N --live-from ...`` for a step, ready to copy; None for
    agent and clock steps (a fork changes what a step returns, not the agent around it)."""
    ev = loaded.by_seq.get(seq)
    if ev is None or ev.kind in ("agent", "clock"):
        return None
    nth = sum(1 for e in loaded.events if e.boundary == ev.boundary and e.seq <= ev.seq)
    bare = bare_name(ev.boundary)
    others = {e.boundary for e in loaded.events if bare_name(e.boundary) == bare}
    name = bare if len(others) == 1 else ev.boundary
    return " ".join(
        [
            "replayable fork",
            loaded.run.id,
            "--import",
            shlex.quote(root_module(loaded)),
            "--at",
            _shell_word(f"{name}#{nth}"),
            "--live-from",
            "--store",
            shlex.quote(store_url),
        ]
    )


def run_overview(loaded: LoadedRun) -> dict[str, Any]:
    """Totals for the run page: steps by kind, errors, tokens by model."""
    kinds: dict[str, int] = {}
    for ev in loaded.events:
        kinds[ev.kind] = kinds.get(ev.kind, 0) + 1
    return {
        "steps": sum(1 for p in loaded.rows if p.owner is loaded.run and p.step is not None),
        "kinds": kinds,
        "errors": sum(1 for e in loaded.events if e.error is not None),
        "models": run_usage(loaded.events),
        "source": source_line(loaded.run),
    }


def retrieval_cards(ev: Event) -> list[dict[str, Any]] | None:
    """A retrieval step's output as cards (text, source, score) when it is a list of chunks."""
    out = ev.output
    if ev.kind != "retrieval" or not isinstance(out, list) or not out:
        return None
    cards = []
    for item in out:
        if not isinstance(item, dict):
            return None
        text = item.get("text", item.get("content", item.get("page_content")))
        if text is None:
            return None
        raw_meta = item.get("metadata")
        meta: dict[str, Any] = raw_meta if isinstance(raw_meta, dict) else {}
        source = item.get("source", meta.get("source"))
        score = item.get("score", meta.get("score"))
        cards.append({"text": preview(text, 2000), "source": source, "score": score})
    return cards


def _value(value: Any, limit: int, cut: str | None = None) -> dict[str, Any]:
    text, truncated, size = pretty(value, limit)
    return {"text": text, "truncated": truncated, "size": size, "cut": cut}


def step_data(loaded: LoadedRun, seq: int, limit: int = MAX_INLINE_BYTES) -> dict[str, Any] | None:
    """Everything about one step for its detail view; None when the run has no such seq."""
    ev = loaded.by_seq.get(seq)
    if ev is None:
        return None
    stream = bool(ev.meta.get("stream")) and isinstance(ev.output, list)
    chunks = None
    if stream:
        chunks = [preview(c, 4000) for c in ev.output[:2000]]
    joined = None
    if stream and all(isinstance(c, str) for c in ev.output):
        joined = "".join(ev.output)
    params = {k: ev.meta[k] for k in SAMPLING_KEYS if k in ev.meta}
    if ev.kind == "llm" and isinstance(ev.input, dict):
        for k in SAMPLING_KEYS:
            if k in ev.input and k not in params and not isinstance(ev.input[k], dict | list):
                params[k] = ev.input[k]
    return {
        "seq": ev.seq,
        "address": ev.address,
        "boundary": ev.boundary,
        "name": ev.boundary.rsplit(":", 1)[-1],
        "kind": ev.kind,
        "parent_seq": ev.parent_seq,
        "started_at": ev.started_at,
        "duration_ns": ev.duration_ns,
        "key": ev.key,
        "served": bool(ev.meta.get("served")),
        "model": ev.meta.get("model") or ev.meta.get("response_model"),
        "system_fingerprint": ev.meta.get("system_fingerprint"),
        "sampling": params,
        "tokens": _tokens(ev),
        "input": _value(ev.input, limit, _cut.label(ev.meta, "input", ev.input)),
        "output": _value(ev.output, limit, _cut.label(ev.meta, "output", ev.output)),
        "error": None if ev.error is None else _value(ev.error, limit),
        "error_line": None if ev.error is None else _error_line(ev.error),
        "meta": _value(ev.meta, limit),
        "cards": retrieval_cards(ev),
        "stream": stream,
        "chunks": chunks,
        "joined": joined,
    }
