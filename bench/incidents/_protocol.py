"""Chronicle's incident protocol over our six scenarios, for three kinds of test.

For each scenario: record the incident (the buggy code acting on its production world), then
judge each kind of test on every variant of the code. Detection: the test fails on the buggy
code. Specificity: it passes once the fix is in, wherever the fix lives (the tool, the agent, the
prompt). Harmless changes: it passes on the tool fix with each of five harmless changes to the
tool's output. The production worlds' row counts must not move while the tests run.

The three kinds of test:

- *hand-written*: a cut-point test as Chronicle's paper writes them: the tool runs live in a
  scratch world, model calls the fix changed come from a fallback cassette, and the test checks
  the world shows no incident;
- *promote --forbid TOOL* and *promote --live TOOL --world MODULE:scratch_world*: the tests
  ``replayable promote`` writes, run by pytest in a subprocess (twice: the first run records the
  changed model calls into the cassettes, the second runs with ``REPLAYABLE_MODE=replay`` as CI
  would and must give the same verdicts with no model call).
"""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import ModuleType
from typing import Any

import replayable as rp
from bench.incidents import MODULES
from bench.incidents._common import FIX_VARIANTS, HARMLESS, VARIANTS, create_world, row_counts
from replayable.testing import EmbeddingJudge
from replayable.testing._promote import promote

__all__ = ["KINDS", "evaluate"]

KINDS = ("hand-written", "promote --forbid", "promote --live")
ROOT = Path(__file__).resolve().parents[2]


@contextmanager
def _env(**values: str | None) -> Iterator[None]:
    saved = {k: os.environ.get(k) for k in values}
    for k, v in values.items():
        if v is None:
            os.environ.pop(k, None)
        else:
            os.environ[k] = v
    try:
        yield
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _agent(module: ModuleType) -> Any:
    return getattr(module, f"{module.SCENARIO.name}_agent")


def _record(module: ModuleType, store: rp.Store) -> rp.Run:
    with _env(BENCH_INCIDENT_VARIANT="buggy"), rp.record(store, name=module.SCENARIO.name) as run:
        _agent(module)(module.REQUEST)
    return run


def handwritten(module: ModuleType, trace: Path, work: Path) -> tuple[bool, str]:
    """The hand-written cut-point test: (passed, the agent's final reply)."""
    from bench.incidents._common import world_path

    scenario = module.SCENARIO
    work.mkdir(parents=True, exist_ok=True)
    with rp.replay(
        trace,
        store=work / "replays.db",
        live=[scenario.tool],
        sandbox=module.scratch_world(work),
        fallback=rp.cassette(work / "cassette.jsonl"),
        strict=False,
    ):
        reply = _agent(module)(module.REQUEST)
        with sqlite3.connect(world_path(scenario.name)) as db:
            happened = scenario.incident(db)
    return not happened, reply


_CONFTEST = '''"""Runs every test here with the code variant {variant!r}."""

import pytest


@pytest.fixture(autouse=True)
def _variant(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BENCH_INCIDENT_VARIANT", {variant!r})
'''


def _pytest(suite: Path, env: dict[str, str], junit: Path) -> dict[tuple[str, str], bool]:
    """Run the suite in a subprocess; (variant, test file stem) -> passed."""
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pytest",
            str(suite),
            "-q",
            "-p",
            "no:cacheprovider",
            "-p",
            "no:randomly",
            "--import-mode=importlib",
            f"--junitxml={junit}",
            f"--rootdir={suite}",
        ],
        env=env,
        cwd=suite,
        capture_output=True,
        check=False,
        timeout=900,
    )
    verdicts: dict[tuple[str, str], bool] = {}
    for case in ET.parse(junit).iter("testcase"):
        classname = case.get("classname", "")
        parts = classname.split(".")
        variant = next((p for p in parts if p in VARIANTS), "")
        stem = parts[-1]
        failed = any(child.tag in ("failure", "error") for child in case)
        verdicts[(variant, stem)] = not failed
    return verdicts


def evaluate(work: Path, names: Iterable[str] | None = None) -> dict[str, Any]:
    """Run the protocol in ``work`` (on the scenarios ``names``, default all six); every
    figure the benchmark prints, and the details."""
    modules = {n: m for n, m in MODULES.items() if names is None or n in set(names)}
    worlds = work / "worlds"
    store = rp.open_store(work / "incidents.db")
    generated = work / "generated"
    per: dict[str, dict[str, Any]] = {}
    judge = EmbeddingJudge()
    with _env(BENCH_INCIDENT_WORLDS=str(worlds), BENCH_INCIDENT_CALLS=None):
        for name, module in modules.items():
            create_world(module.SCENARIO, worlds / f"{name}.db")
            run = _record(module, store)
            events = list(store.iter_events(run.id))
            trace = generated / "traces" / f"{name}.jsonl"
            promote(
                run,
                events,
                trace=trace,
                test=generated / f"test_{name}_forbid.py",
                name=f"{name}_forbid",
                forbid=[module.SCENARIO.tool],
            )
            promote(
                run,
                events,
                trace=trace,
                test=generated / f"test_{name}_live.py",
                name=f"{name}_live",
                live=[module.SCENARIO.tool],
                world=f"bench.incidents.{name}:scratch_world",
            )
            recorded_reply = next(
                e.output for e in events if e.kind == "agent" and e.parent_seq is None
            )
            per[name] = {
                "incident_reply": recorded_reply,
                "counts": row_counts(module.SCENARIO, worlds / f"{name}.db"),
                "verdicts": {kind: {} for kind in KINDS},
                "replies": {},
            }
        # The hand-written test, in this process.
        for name, module in modules.items():
            for v in VARIANTS:
                with _env(BENCH_INCIDENT_VARIANT=v):
                    ok, reply = handwritten(
                        module, generated / "traces" / f"{name}.jsonl", work / "hand" / name / v
                    )
                per[name]["verdicts"]["hand-written"][v] = ok
                per[name]["replies"][v] = reply
        # The promoted tests: one copy of the suite per variant, one pytest run for all.
        suite = work / "suite"
        for v in VARIANTS:
            shutil.copytree(generated, suite / v, dirs_exist_ok=True)
            (suite / v / "conftest.py").write_text(_CONFTEST.format(variant=v), encoding="utf-8")
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(
            [str(ROOT), str(ROOT / "src"), env.get("PYTHONPATH", "")]
        )
        env["REPLAYABLE_STORE"] = str(work / "replays-pytest.db")
        env.pop("REPLAYABLE_MODE", None)
        calls = work / "model-calls.txt"
        env["BENCH_INCIDENT_CALLS"] = str(calls)
        first = _pytest(suite, env, work / "first.xml")
        first_calls = _count(calls)
        calls.unlink(missing_ok=True)
        env["REPLAYABLE_MODE"] = "replay"
        second = _pytest(suite, env, work / "second.xml")
        second_calls = _count(calls)
    for name in modules:
        for kind, suffix in (("promote --forbid", "forbid"), ("promote --live", "live")):
            for v in VARIANTS:
                per[name]["verdicts"][kind][v] = first.get((v, f"test_{name}_{suffix}"), False)
        per[name]["world_untouched"] = (
            row_counts(MODULES[name].SCENARIO, worlds / f"{name}.db") == per[name]["counts"]
        )
        approved, incident = MODULES[name].APPROVED, per[name]["incident_reply"]
        per[name]["judge"] = {
            "plain_rejects_incident": not judge.judge(incident, approved).passed,
            "contrastive_rejects_incident": not judge.judge(
                incident, approved, incident=incident
            ).passed,
            "contrastive_passes_fixes": {
                v: judge.judge(per[name]["replies"][v], approved, incident=incident).passed
                for v in ("tool_fix", "agent_fix", *HARMLESS)
            },
        }
    return {
        "scenarios": per,
        "summary": _summary(per),
        "ci_same_verdicts": first == second,
        "model_calls_first_run": first_calls,
        "model_calls_ci_run": second_calls,
    }


def _count(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0


def _summary(per: dict[str, dict[str, Any]]) -> dict[str, dict[str, int]]:
    out: dict[str, dict[str, int]] = {}
    for kind in KINDS:
        verdicts = [p["verdicts"][kind] for p in per.values()]
        out[kind] = {
            "detection": sum(not v["buggy"] for v in verdicts),
            **{fix: sum(v[fix] for v in verdicts) for fix in FIX_VARIANTS},
            "harmless": sum(v[h] for v in verdicts for h in HARMLESS),
        }
    return out
