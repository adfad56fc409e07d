"""The viewer's Jinja2 environment: its templates, filters and autoescaping, in one place for
the pages (``_app``) and the notebook fragments (``_notebook``). Needs jinja2 only.

Every value from a trace is escaped (autoescape, never ``|safe``)."""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

import jinja2

__all__ = ["TEMPLATES", "duration", "template_env", "when"]

TEMPLATES = Path(__file__).parent / "templates"


def duration(ns_or_s: float | None, unit: str = "ns") -> str:
    """``812µs``, ``34ms``, ``3.20s``, ``4m05s``; ``-`` when unknown."""
    if ns_or_s is None:
        return "-"
    seconds = ns_or_s / 1e9 if unit == "ns" else ns_or_s
    if seconds < 0.001:
        return f"{seconds * 1e6:.0f}µs"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    if seconds < 60:
        return f"{seconds:.2f}s"
    return f"{int(seconds // 60)}m{int(seconds % 60):02d}s"


def when(epoch: float | None) -> str:
    """Local ``YYYY-MM-DD HH:MM:SS``; ``-`` when unknown."""
    if not epoch:
        return "-"
    return _dt.datetime.fromtimestamp(epoch).strftime("%Y-%m-%d %H:%M:%S")


def template_env() -> jinja2.Environment:
    """The environment every viewer template renders in."""
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,  # every value from a trace is escaped; nothing is marked safe
        undefined=jinja2.StrictUndefined,
    )
    env.filters["duration"] = duration
    env.filters["time"] = when
    env.filters["short_name"] = lambda name: str(name).rsplit(":", 1)[-1]
    return env
