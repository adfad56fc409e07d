"""What the six incident scenarios share: the code variant, the SQLite world, the scripted model.

Each scenario is an agent of Chronicle's published shape: a model turn that picks a tool call,
a side-effect tool acting on a real SQLite world, and a second model turn reporting back.

- The *variant* (``$BENCH_INCIDENT_VARIANT``) says which code is in place: ``buggy`` (the code
  that produced the incident), a fix in the tool, in the agent or in the prompt, or the tool fix
  with one of five harmless changes to the tool's output.
- The *world* is a SQLite file: ``$BENCH_INCIDENT_WORLDS/<scenario>.db`` (production), or the
  scratch copy a test opens with :func:`scratch_world` (a sandbox), which wins while it is open.
- The *model* (:func:`chat`) is scripted but samples: its wording is drawn at random on every
  call, so a replay that called it instead of serving the recording would show.
"""

from __future__ import annotations

import json
import os
import random
import sqlite3
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import replayable as rp

__all__ = [
    "FIX_VARIANTS",
    "HARMLESS",
    "VARIANTS",
    "Scenario",
    "chat",
    "connect",
    "guarded",
    "harmless",
    "register",
    "run_agent",
    "scratch_world",
    "variant",
    "world_path",
]

HARMLESS = tuple(f"harmless_{i}" for i in range(1, 6))
FIX_VARIANTS = ("tool_fix", "agent_fix", "prompt_fix")
VARIANTS = ("buggy", *FIX_VARIANTS, *HARMLESS)

_SCRATCH: dict[str, list[Path]] = {}


def variant() -> str:
    """The code in place: one of :data:`VARIANTS` (default ``buggy``)."""
    chosen = os.environ.get("BENCH_INCIDENT_VARIANT", "buggy")
    if chosen not in VARIANTS:
        raise ValueError(f"BENCH_INCIDENT_VARIANT must be one of {', '.join(VARIANTS)}")
    return chosen


def guarded() -> bool:
    """Whether the tool carries its fix (the tool fix, and every harmless change on top of it)."""
    return variant() == "tool_fix" or variant() in HARMLESS


@dataclass(frozen=True)
class Scenario:
    """One incident: its world, its prompt (and the fixed prompt), the model's choice."""

    name: str
    tool: str
    schema: str
    seed: Callable[[sqlite3.Connection], None]
    prompt: str
    prompt_fix: str
    plan: Callable[[str, str], dict[str, Any]]
    """(system prompt, user request) -> the tool call's arguments the model picks."""
    incident: Callable[[sqlite3.Connection], bool]
    """Whether the world shows the incident (what a hand-written cut-point test checks)."""
    counts: tuple[str, ...]
    """Tables whose row counts show whether the world was touched."""


_SCENARIOS: dict[str, Scenario] = {}


def register(s: Scenario) -> Scenario:
    """Make a scenario known to the scripted model."""
    _SCENARIOS[s.name] = s
    return s


def world_path(name: str) -> Path:
    """The world scenario ``name`` acts on: its open scratch world, else production."""
    if _SCRATCH.get(name):
        return _SCRATCH[name][-1]
    worlds = os.environ.get("BENCH_INCIDENT_WORLDS")
    if not worlds:
        raise RuntimeError("no world: set BENCH_INCIDENT_WORLDS or open scratch_world()")
    return Path(worlds) / f"{name}.db"


def connect(name: str) -> sqlite3.Connection:
    """A connection to the world in force for scenario ``name`` (autocommit)."""
    return sqlite3.connect(world_path(name), isolation_level=None)


def create_world(scenario: Scenario, path: Path) -> Path:
    """A fresh world for ``scenario`` at ``path``: schema and seed rows."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    with sqlite3.connect(path) as db:
        db.executescript(scenario.schema)
        scenario.seed(db)
    return path


def row_counts(scenario: Scenario, path: Path) -> dict[str, int]:
    """Row counts of the scenario's tables in the world at ``path``."""
    with sqlite3.connect(path) as db:
        return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in scenario.counts}


@contextmanager
def scratch_world(scenario: Scenario, directory: Path) -> Iterator[Path]:
    """A scratch copy of the scenario's world in ``directory``; tools act on it while open."""
    path = create_world(scenario, Path(directory) / f"{scenario.name}-scratch.db")
    _SCRATCH.setdefault(scenario.name, []).append(path)
    try:
        yield path
    finally:
        _SCRATCH[scenario.name].remove(path)


def harmless(result: dict[str, Any]) -> dict[str, Any]:
    """The fixed tool's output, changed harmlessly for the ``harmless_N`` variants."""
    v = variant()
    out = dict(result)
    if v == "harmless_1":
        out["message"] = "Not permitted: " + out["message"][0].lower() + out["message"][1:]
    elif v == "harmless_2":
        out["audit_id"] = "audit-000042"
    elif v == "harmless_3":
        out = dict(reversed(list(out.items())))
    elif v == "harmless_4":
        out["details"] = {"checked_by": "policy-v2", "rules": ["limits", "ownership"]}
    elif v == "harmless_5":
        out["message"] = out["message"].rstrip(".") + " (see the runbook)."
        out["severity"] = "high"
    return out


_REPORT_DONE = ("Done. {message}", "All set: {message}", "Finished. {message}")
_REPORT_BLOCKED = (
    "I couldn't do that. {message}",
    "That was not done. {message}",
    "Sorry, I stopped there. {message}",
)


@rp.boundary(kind="llm")
def chat(model: str, messages: list[dict[str, Any]]) -> dict[str, Any]:
    """The scripted model: turn one picks the tool call, turn two reports its result.

    Wording is sampled on every call (a replay that called it would show).
    """
    scenario = _SCENARIOS[model.removeprefix("scripted-")]
    counter = os.environ.get("BENCH_INCIDENT_CALLS")
    if counter:  # the benchmark counts live model calls
        with open(counter, "a", encoding="utf-8") as fh:
            fh.write(f"{scenario.name}\n")
    last = messages[-1]
    if last["role"] == "tool":
        result = json.loads(last["content"])
        blocked = result.get("status") == "blocked"
        template = random.choice(_REPORT_BLOCKED if blocked else _REPORT_DONE)
        return {"content": template.format(message=result.get("message", "")), "tool_call": None}
    system = next(m["content"] for m in messages if m["role"] == "system")
    arguments = scenario.plan(system, last["content"])
    thought = random.choice(("On it.", "Let me take care of that.", "Working on it."))
    return {"content": thought, "tool_call": {"name": scenario.tool, "arguments": arguments}}


def run_agent(
    scenario: Scenario,
    request: str,
    tool: Callable[..., dict[str, Any]],
    agent_guard: Callable[[dict[str, Any]], str | None],
) -> str:
    """The agent loop every scenario shares: model, tool (or the agent's own refusal), model."""
    system = scenario.prompt_fix if variant() == "prompt_fix" else scenario.prompt
    model = f"scripted-{scenario.name}"
    messages: list[dict[str, Any]] = [
        {"role": "system", "content": system},
        {"role": "user", "content": request},
    ]
    first = chat(model, messages)
    call = first["tool_call"]
    refusal = agent_guard(call["arguments"]) if variant() == "agent_fix" else None
    result = {"status": "blocked", "message": refusal} if refusal else tool(**call["arguments"])
    messages.append({"role": "assistant", "content": first["content"], "tool_call": call})
    messages.append({"role": "tool", "content": json.dumps(result)})
    return str(chat(model, messages)["content"])
