"""Rich renderings shared by commands: the run table and the step tree."""

from __future__ import annotations

import datetime as _dt
import re
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import orjson
from rich.console import Group
from rich.markup import escape
from rich.syntax import Syntax
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from replayable import _cut
from replayable._inert import visible
from replayable._linked import Callee
from replayable._otlp import source_line
from replayable._rundiff import RunDiff, tokens_of
from replayable._tree import Step, build_tree
from replayable.errors import ReplayableError
from replayable.trace import Event, Run

if TYPE_CHECKING:
    from replayable._check import CheckReport
    from replayable._drift._report import DriftReport
    from replayable.replay import Replay

__all__ = [
    "CHECK_LABELS",
    "KIND_STYLES",
    "check_view",
    "diff_view",
    "drift_view",
    "find_event",
    "fmt_duration",
    "fmt_time",
    "replay_view",
    "run_table",
    "run_view",
    "sampling",
    "short",
    "step_detail",
    "step_tree",
    "usage_text",
]

KIND_STYLES = {
    "agent": "bold magenta",
    "llm": "cyan",
    "tool": "green",
    "retrieval": "blue",
    "clock": "dim",
    "node": "yellow",
}
STATUS_STYLES = {
    "ok": "green",
    "error": "bold red",
    "diverged": "bold yellow",
    "running": "yellow",
    "incomplete": "red",
}


def fmt_duration(seconds: float | None) -> str:
    """``812ms``, ``3.2s``, ``4m05s``; ``-`` when unknown."""
    if seconds is None:
        return "-"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms" if seconds >= 0.001 else f"{seconds * 1e6:.0f}µs"
    if seconds < 60:
        return f"{seconds:.1f}s"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def fmt_time(epoch: float | None) -> str:
    """Local ``YYYY-MM-DD HH:MM:SS``."""
    if epoch is None:
        return "-"
    return _dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def short(value: Any, limit: int = 60) -> str:
    """A one-line JSON preview of a value, cut to ``limit`` characters."""
    text = value if isinstance(value, str) else orjson.dumps(value).decode()
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 1] + "…"


def run_table(runs: Iterable[Run]) -> Table:
    """Runs as a table: id, name, status, start, duration, steps, tags."""
    table = Table(box=None, header_style="bold")
    for col in ("run", "name", "status", "started", "duration", "steps", "tags"):
        table.add_column(
            col,
            justify="right" if col == "steps" else "left",
            no_wrap=True,
            overflow="ellipsis",
            min_width={"run": 20, "name": 12, "status": 6, "started": 14, "steps": 5}.get(col),
        )
    for run in runs:
        tags = " ".join(f"{k}={v}" if v else k for k, v in run.tags.items())
        table.add_row(  # recorded text as Text: never parsed as markup
            Text(run.id),
            Text(visible(run.name or "")),
            Text(run.status, style=STATUS_STYLES.get(run.status, "")),
            fmt_time(run.started_at)[5:],  # MM-DD HH:MM:SS: the year rarely helps here
            fmt_duration(run.duration_s),
            str(run.event_count),
            Text(visible(tags)),
        )
    return table


SAMPLING_KEYS = (
    "temperature",
    "top_p",
    "top_k",
    "max_tokens",
    "max_output_tokens",
    "seed",
    "system_fingerprint",
)
"""Metadata (or LLM input) keys shown on an LLM step's line: how the answer was sampled."""


def sampling(ev: Event) -> dict[str, Any]:
    """Sampling parameters of an LLM step, from its metadata, else from its input."""
    out: dict[str, Any] = {}
    sources = [ev.meta]
    if ev.kind == "llm" and isinstance(ev.input, dict):
        sources.append(ev.input)
    for src in sources:
        for k in SAMPLING_KEYS:
            if k in src and k not in out and not isinstance(src[k], dict | list):
                out[k] = src[k]
    return out


def error_type(error: dict[str, Any]) -> str:
    """A recorded error's type, without the ``builtins:`` prefix of built-in exceptions."""
    return str(error.get("type", "")).removeprefix("builtins:")


def usage_text(usage: Any) -> str:
    """``in=120 out=18`` from a usage dict, or an empty string."""
    i, o = tokens_of(usage)
    return f"in={i} out={o}" if i or o else ""


def _label(step: Step, width: int, max_width: int | None = None) -> Text:
    ev = step.event
    text = Text(no_wrap=max_width is not None, overflow="ellipsis")
    if ev is None:
        text.append(f"{visible(step.boundary)} ", style="bold")
        text.append("incomplete (the call never returned)", style="red")
        return text
    if max_width is not None:
        # Rich draws 4 columns of guides per level; keep each line inside the terminal.
        width = max(20, min(width, max_width - 4 * (step.depth + 1) - 8))
    text.append(f"[{ev.kind}] ", style=KIND_STYLES.get(ev.kind, ""))
    name = ev.boundary if ev.kind == "remote" else ev.boundary.rsplit(":", 1)[-1]
    text.append(visible(name), style="bold red" if ev.error else "bold")
    text.append(f"  {fmt_duration(ev.duration_ns / 1e9)}", style="dim")
    if ev.meta.get("served"):
        text.append("  served", style="dim italic")
    model = ev.meta.get("model") or ev.meta.get("response_model")
    params = sampling(ev)
    tokens = usage_text(ev.meta.get("usage"))
    if model or params or tokens:
        text.append("\n  model: ", style="")
        text.append(visible(str(model or "?")), style="cyan")
        if tokens:
            text.append(f"  tokens {tokens}", style="cyan")
        if params:
            text.append("  " + " ".join(f"{k}={v}" for k, v in params.items()), style="dim cyan")
    cut_in = _cut.label(ev.meta, "input", ev.input)
    text.append(f"\n  in:  {short(f'<{cut_in}>' if cut_in else ev.input, width)}", style="")
    if ev.error is not None:
        text.append(
            "\n" + short(f"  error: {error_type(ev.error)}: {ev.error.get('message', '')}", width),
            style="bold red",
        )
    else:
        cut_out = _cut.label(ev.meta, "output", ev.output)
        text.append(f"\n  out: {short(f'<{cut_out}>' if cut_out else ev.output, width)}", style="")
    return text


def _run_head(run: Run) -> Text:
    head = Text()
    service = run.metadata.get("service")
    if run.parent is not None:
        head.append(f"{visible(str(service or 'service'))}: ", style="bold magenta")
    head.append(f"run {run.id}", style="bold")
    if run.name:
        head.append(f"  {visible(run.name)}")
    head.append(f"  {run.status}", style=STATUS_STYLES.get(run.status, ""))
    head.append(f"  {fmt_duration(run.duration_s)}", style="dim")
    source = source_line(run)
    if source:
        head.append(f"\n{source}", style="dim")
    return head


def step_tree(
    run: Run,
    events: Iterable[Event],
    width: int = 70,
    max_width: int | None = None,
    linked: Mapping[str, list[Callee]] | None = None,
) -> Tree:
    """The run as a tree of steps with kind, name, duration, short input/output and errors.

    ``width`` caps the input/output previews; with ``max_width`` (the terminal's width) every
    line is also cut to fit, so nothing wraps however deep the tree. ``linked`` (from
    :func:`~replayable._linked.linked_tree`) nests the runs other services recorded for a
    step under that step.
    """
    tree = Tree(_run_head(run))

    def add(parent: Tree, steps: list[Step], callees: Mapping[str, list[Callee]]) -> None:
        for step in steps:
            node = parent.add(_label(step, width, max_width))
            add(node, step.children, callees)
            for callee in callees.get(step.address, ()):
                sub = node.add(_run_head(callee.run))
                add(sub, build_tree(callee.events), callee.callees)

    add(tree, build_tree(events), linked or {})
    return tree


_MODULE = re.compile(r"[\w.]+:")


def find_event(run: Run, events: list[Event], ref: str) -> Event:
    """The step named by ``ref``: its seq, its address (module names optional), the tail of
    its address, or a bare boundary name called once.

    Raises :class:`ReplayableError` listing the candidates when ``ref`` is unknown or ambiguous.
    """
    ref = ref.strip()
    if ref.isdigit():
        found = [e for e in events if e.seq == int(ref)]
    else:
        found = [e for e in events if e.address == ref]
    if not found:
        bare = _MODULE.sub("", ref)
        found = [
            e
            for e in events
            if (a := _MODULE.sub("", e.address)) == bare
            or a.endswith(" > " + bare)
            or e.boundary == ref
            or e.boundary.rsplit(":", 1)[-1] == bare
        ]
    if len(found) == 1:
        return found[0]
    if not found:
        raise ReplayableError(
            f"no step {ref!r} in run {run.id}; see the addresses with `replayable show {run.id} "
            "--json` or pass a seq"
        )
    listed = "; ".join(f"{e.seq}: {_MODULE.sub('', e.address)}" for e in found[:10])
    raise ReplayableError(f"step {ref!r} is ambiguous in run {run.id}; pass a seq: {listed}")


def _json_block(title: str, value: Any, style: str = "bold") -> Group:
    text = orjson.dumps(value, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS).decode()
    return Group(
        Text(title, style=style),
        Syntax(text, "json", theme="ansi_dark", word_wrap=True, background_color="default"),
    )


def step_detail(run: Run, ev: Event) -> Group:
    """One step in full: where it sits, its timing, and input, output, error and metadata as
    syntax-highlighted JSON."""
    head = Text()
    head.append(f"[{ev.kind}] ", style=KIND_STYLES.get(ev.kind, ""))
    head.append(visible(ev.boundary), style="bold")
    head.append(f"  seq {ev.seq}  {fmt_duration(ev.duration_ns / 1e9)}", style="dim")
    head.append(f"\nrun {run.id}  address {visible(ev.address)}", style="dim")
    cut_in = _cut.label(ev.meta, "input", ev.input)
    parts: list[Any] = [head, _json_block(f"input ({cut_in})" if cut_in else "input", ev.input)]
    if ev.error is not None:
        parts.append(_json_block("error", ev.error, style="bold red"))
    else:
        cut_out = _cut.label(ev.meta, "output", ev.output)
        parts.append(_json_block(f"output ({cut_out})" if cut_out else "output", ev.output))
    if ev.meta:
        parts.append(_json_block("meta", ev.meta, style="bold dim"))
    return Group(*parts)


DIFF_MARKS = {
    "same": ("=", "dim"),
    "changed": ("~", "yellow"),
    "only_a": ("-", "red"),
    "only_b": ("+", "green"),
    "inside_served": ("·", "dim"),
}


def _side(ev: Event | None) -> str:
    return "-" if ev is None else f"{fmt_duration(ev.duration_ns / 1e9)}"


def diff_view(d: RunDiff, max_width: int | None = None) -> Group:
    """Two runs side by side: every aligned step with a mark (= same, ~ changed, - only in A,
    + only in B), then the first divergence with its field-level changes."""
    counts = d.counts()
    head = Text()
    head.append(f"A {d.a.id}", style="bold")
    head.append(f"  {visible(d.a.name or '')}  {d.a.status}\n")
    head.append(f"B {d.b.id}", style="bold")
    head.append(f"  {visible(d.b.name or '')}  {d.b.status}\n")
    head.append(
        f"{len(d.pairs)} steps: {counts['same']} same, {counts['changed']} changed, "
        f"{counts['only_a']} only in A, {counts['only_b']} only in B"
        + (f", {counts['inside_served']} inside served calls" if counts["inside_served"] else "")
    )
    total = max_width or 100
    step_w = min(44, max(20, total // 2 - 8))
    fields_w = max(10, total - step_w - 24)
    table = Table(box=None, header_style="bold", pad_edge=False)
    table.add_column("", no_wrap=True, width=1)
    table.add_column("step", no_wrap=True)
    table.add_column("A", justify="right", no_wrap=True)
    table.add_column("B", justify="right", no_wrap=True)
    table.add_column("fields", no_wrap=True)
    first = d.first_divergence
    for pair in d.pairs:
        mark, style = DIFF_MARKS[pair.status]
        ev = pair.event
        label = "  " * ev.address.count(" > ") + f"[{ev.kind}] " + ev.boundary.rsplit(":", 1)[-1]
        name = Text(short(visible(label), step_w), style="bold" if pair is first else "")
        fields = ", ".join(f"{k}.{c.path}" for k, cs in pair.changes.items() for c in cs)
        table.add_row(
            Text(mark, style=style),
            name,
            _side(pair.a),
            _side(pair.b),
            Text(short(fields, fields_w), style=style),
        )
    parts: list[Any] = [head, table]
    if first is None:
        parts.append(Text("identical: every step has the same input, output and error", "green"))
        return Group(*parts)
    title = Text("\nfirst divergence: ", style="bold red")
    title.append(_MODULE.sub("", first.address), style="bold")
    parts.append(title)
    if first.status == "only_a":
        parts.append(Text("  this call is in A only: B never made it", style="red"))
    elif first.status == "only_b":
        parts.append(Text("  this call is in B only: A never made it", style="green"))
    limit = max(20, (max_width or 100) - 20)
    for field_name, changes in first.changes.items():
        parts.append(Text(f"  {field_name}:", style="bold"))
        for c in changes:
            parts.append(Text("    " + short(str(c), limit), style=DIFF_MARKS["changed"][1]))
    return Group(*parts)


CHECK_LABELS = {
    "unchanged": ("unchanged", "green"),
    "diverged": ("diverged", "bold yellow"),
    "failed": ("failed", "bold red"),
    "not_replayable": ("not replayable", "magenta"),
}


def check_view(report: CheckReport) -> Group:
    """The check as a human reads it: counts, then groups largest first with examples, then the
    failed and not replayable runs (recorded text escaped)."""
    parts: list[Any] = []
    c = report.counts
    total = len(report.outcomes)
    secs = max(report.ended_at - report.started_at, 1e-9)
    jobs = report.selection.get("jobs", 1)
    where = report.selection.get("executor", "local")
    parts.append(
        f"checked {total} run(s) of {escape(report.store)} in {fmt_duration(secs)} "
        f"({total / secs:,.0f} runs/s, {where}, {jobs} job(s))"
    )
    table = Table(show_header=False, box=None, padding=(0, 2))
    for key, (label, style) in CHECK_LABELS.items():
        extra = f"in {len(report.groups)} group(s)" if key == "diverged" and c[key] else ""
        table.add_row(f"[{style}]{label}[/{style}]", str(c[key]), extra)
    parts.append(table)
    if report.groups:
        parts.append("\n[bold]diverged[/bold], by first divergence (largest group first):")
        for g in report.groups:
            parts.append(f"  [bold yellow]{g.count:>5}[/bold yellow]  {escape(g.signature)}")
            for run_id, replay_id in g.examples:
                diff = f"replayable diff {run_id} {replay_id}" if replay_id else ""
                parts.append(f"         e.g. {run_id}  {diff}")
    for key in ("failed", "not_replayable"):
        runs = report.runs(key)
        if runs:
            label, style = CHECK_LABELS[key]
            parts.append(f"\n[{style}]{label}[/{style}]:")
            for o in runs[:20]:
                parts.append(f"  {o.run_id}  {escape(o.detail)}")
            if len(runs) > 20:
                parts.append(f"  ... and {len(runs) - 20} more (--json lists every run)")
    if report.saved_to:
        parts.append(
            f"\ncheck {report.id} kept in {escape(report.saved_to)}: "
            f"`replayable checks {report.id}`, or open it in `replayable serve`"
        )
    if report.ok and not report.checked:
        parts.append(
            "[bold red]nothing checked[/bold red]: none of the selected runs could be replayed "
            "(see why above)"
        )
    else:
        verdict = "[green]passed[/green]" if report.ok else "[bold red]FAILED[/bold red]"
        parts.append(f"check {verdict}")
    # Text, not str: a console's highlighter never restyles the recorded text inside.
    return Group(*(Text.from_markup(p) if isinstance(p, str) else p for p in parts))


def run_view(run: Run) -> Any:
    """A run for a terminal (``Run.__rich__``): its step tree, read from its store, or its
    header line when it is not attached to one."""
    events = list(run.store.iter_events(run.id)) if run.store is not None else []
    return step_tree(run, events)


def replay_view(replay: Replay) -> Text:
    """A replay for a terminal (``Replay.__rich__``): its report, and the run it recorded."""
    return Text(f"{replay.report()}\nreplay recorded as run {replay.run.id}")


def drift_view(report: DriftReport) -> Text:
    """A drift report for a terminal (``DriftReport.__rich__``)."""
    return Text(report.report())
