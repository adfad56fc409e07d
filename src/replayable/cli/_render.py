"""Rich renderings shared by commands: the run table and the step tree."""

from __future__ import annotations

import datetime as _dt
from collections.abc import Iterable
from typing import Any

import orjson
from rich.table import Table
from rich.text import Text
from rich.tree import Tree

from replayable.trace import Event, Run
from replayable.tree import Step, build_tree

__all__ = ["KIND_STYLES", "fmt_duration", "fmt_time", "run_table", "short", "step_tree"]

KIND_STYLES = {
    "agent": "bold magenta",
    "llm": "cyan",
    "tool": "green",
    "retrieval": "blue",
    "clock": "dim",
    "node": "yellow",
}
STATUS_STYLES = {"ok": "green", "error": "bold red", "running": "yellow", "incomplete": "red"}


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
        table.add_column(col, justify="right" if col == "steps" else "left")
    for run in runs:
        tags = " ".join(f"{k}={v}" if v else k for k, v in run.tags.items())
        table.add_row(
            run.id,
            run.name or "",
            Text(run.status, style=STATUS_STYLES.get(run.status, "")),
            fmt_time(run.started_at),
            fmt_duration(run.duration_s),
            str(run.event_count),
            tags,
        )
    return table


def _label(step: Step, width: int) -> Text:
    ev = step.event
    text = Text()
    if ev is None:
        text.append(f"{step.boundary} ", style="bold")
        text.append("incomplete (the call never returned)", style="red")
        return text
    text.append(f"[{ev.kind}] ", style=KIND_STYLES.get(ev.kind, ""))
    text.append(ev.boundary.rsplit(":", 1)[-1], style="bold")
    text.append(f"  {fmt_duration(ev.duration_ns / 1e9)}", style="dim")
    if ev.meta.get("served"):
        text.append("  served", style="dim italic")
    model = ev.meta.get("model") or ev.meta.get("response_model")
    if model:
        text.append(f"  model={model}", style="cyan")
    usage = ev.meta.get("usage")
    if isinstance(usage, dict):
        tokens = usage.get("total_tokens") or sum(
            v for k, v in usage.items() if isinstance(v, int) and k.endswith("tokens")
        )
        text.append(f"  tokens={tokens}", style="cyan")
    text.append(f"\n  in:  {short(ev.input, width)}", style="")
    if ev.error is not None:
        text.append(
            f"\n  error: {ev.error.get('type', '')}: {ev.error.get('message', '')}",
            style="bold red",
        )
    else:
        text.append(f"\n  out: {short(ev.output, width)}", style="")
    return text


def step_tree(run: Run, events: Iterable[Event], width: int = 70) -> Tree:
    """The run as a tree of steps with kind, name, duration, short input/output and errors."""
    head = Text()
    head.append(f"run {run.id}", style="bold")
    if run.name:
        head.append(f"  {run.name}")
    head.append(f"  {run.status}", style=STATUS_STYLES.get(run.status, ""))
    head.append(f"  {fmt_duration(run.duration_s)}", style="dim")
    tree = Tree(head)

    def add(parent: Tree, steps: list[Step]) -> None:
        for step in steps:
            add(parent.add(_label(step, width)), step.children)

    add(tree, build_tree(events))
    return tree
