"""``promote`` and ``fuzz``: from a recorded incident to a regression test, and past one sample."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click

from replayable.cli._common import (
    console,
    handle_errors,
    import_option,
    load_run,
    main,
    store_option,
)
from replayable.cli._core import import_modules
from replayable.errors import ReplayableError


@main.command("promote")
@click.argument("run_id")
@store_option
@click.option(
    "-o", "--output", "trace", default=None, help="Trace file. Default: tests/traces/NAME.jsonl"
)
@click.option("--test", "test", default=None, help="Test file. Default: tests/test_NAME.py")
@click.option("--name", default=None, help="NAME used in the default paths and the test name.")
@click.option(
    "--forbid",
    multiple=True,
    help="A boundary the recorded run must not call (the incident): the test asserts the steps "
    "before it and that it is never called. Repeatable. Without it, the test asserts the "
    "recorded path.",
)
@click.option(
    "--live",
    "live",
    multiple=True,
    help="A side-effecting tool whose fix may be inside it: the test runs it live in a world "
    "of its own (see --world) and asserts it no longer does what it did in the incident "
    "(the recorded arguments and outcome). Repeatable.",
)
@click.option(
    "--world",
    default=None,
    metavar="MODULE:FUNC",
    help="With --live: a context manager factory taking the test's tmp_path that gives the "
    "live tools their world (a scratch database, a fake client). Without it the test holds a "
    "marked stub that fails until you fill it in.",
)
@click.option(
    "--import",
    "modules",
    multiple=True,
    help="Module defining the agent (importable from here); repeatable. Needed for a run "
    "imported from a trace: the test calls the registered @boundary(kind='agent') named like "
    "the traced root agent, as check does.",
)
@click.option("--force", is_flag=True, help="Overwrite an existing test file.")
@handle_errors
def promote_cmd(
    run_id: str,
    store_url: str | None,
    trace: str | None,
    test: str | None,
    name: str | None,
    forbid: tuple[str, ...],
    live: tuple[str, ...],
    world: str | None,
    modules: tuple[str, ...],
    force: bool,
) -> None:
    """Export RUN as a trace file and write a pytest test that replays it.

    The test calls the run's root agent with the recorded arguments under a replay (outputs
    served, side effects not fired, no network) and asserts its structure: by default the
    recorded path; with --forbid NAME, that NAME is never called; with --live TOOL, that TOOL,
    run live in a world of the test's own, no longer does what it did in the incident.
    Incident tests serve model calls a fix changed from a cassette (tests/cassettes/NAME.jsonl),
    recorded by one live call the first time; REPLAYABLE_MODE=replay makes a miss fail.

    A run imported from a trace (import --format otlp, collect): pass --import MODULE; the test
    calls the registered agent named like the traced root agent with the traced input.
    """
    from replayable.testing._promote import promote

    if world is not None and not live:
        raise ReplayableError("--world is for the tools that run live: add --live TOOL")
    both = sorted(set(forbid) & set(live))
    if both:
        raise ReplayableError(
            f"{', '.join(both)}: --forbid asserts it is never called, --live runs it; choose one"
        )
    if modules:
        import_modules(modules)
    run, events = load_run(run_id, store_url)
    done = promote(
        run,
        events,
        trace=trace,
        test=test,
        name=name,
        forbid=forbid,
        live=live,
        world=world,
        overwrite=force,
    )
    out = console()
    out.print(f"wrote {done.trace} ({done.calls} recorded calls)", markup=False)
    out.print(f"wrote {done.test}", markup=False)
    if live and world is None:
        out.print(f"fill in the world() stub in {done.test}: the test fails until it does")
    out.print(f"run it: pytest {done.test}", markup=False)


def _import_invariant(spec: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"{spec!r}: use MODULE:FUNC", param_hint="--invariant")
    if "." not in sys.path and "" not in sys.path:
        sys.path.insert(0, ".")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}", param_hint="--invariant")
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    if not callable(obj):
        raise click.BadParameter(f"{spec!r} is not a function", param_hint="--invariant")
    return obj


@main.command("fuzz")
@click.argument("run_id")
@store_option
@import_option
@click.option(
    "--invariant",
    required=True,
    help="MODULE:FUNC called with each outcome; fails by raising AssertionError or returning "
    "False.",
)
@click.option(
    "-n",
    "--examples",
    "n",
    default=200,
    show_default=True,
    type=click.IntRange(min=1),
    help="Examples to try.",
)
@click.option(
    "--boundary",
    "boundaries",
    multiple=True,
    help="Boundary whose recorded outputs to perturb; repeatable. Default: every boundary that "
    "is not an agent, a clock or side-effecting.",
)
@click.option(
    "--max-mutations",
    default=2,
    show_default=True,
    help="Perturbations combined in one example.",
)
@click.option("--seed", type=int, default=None, help="Random search with this seed.")
@click.option(
    "-o", "--output", "out", default=None, help="Trace file for the smallest failing example."
)
@handle_errors
def fuzz_cmd(
    run_id: str,
    store_url: str | None,
    modules: tuple[str, ...],
    invariant: str,
    n: int,
    boundaries: tuple[str, ...],
    max_mutations: int,
    seed: int | None,
    out: str | None,
) -> None:
    """Perturb RUN's recorded outputs and check an invariant on each re-run of the agent.

    Numbers are nudged or scaled, currencies and units swapped, list items dropped or
    reordered, strings truncated; the agent's own code re-runs with those outputs served (no
    network, no side effects). Exits 1 and writes the smallest failing perturbation as a trace
    file when the invariant breaks; 0 when every example holds.
    """
    from replayable.cli._core import import_modules
    from replayable.testing._fuzz import fuzz

    if modules:
        import_modules(modules)
    check = _import_invariant(invariant)
    report = fuzz(
        run_id,
        check,
        n=n,
        boundaries=boundaries or None,
        max_mutations=max_mutations,
        seed=seed,
        out=out,
        store=store_url,
    )
    run = report.run
    if report.baseline_failure is not None:
        click.echo(
            f"the invariant already fails on run {run.id} itself, with no perturbation:\n"
            f"  {report.baseline_failure}\n"
            "fuzz a run where the agent behaved, to test a fix against variations of it"
        )
        sys.exit(1)
    extra = (
        f"; {report.off_record} took a path the recording does not cover, "
        f"{report.raised} ended with an exception"
    )
    if report.passed:
        click.echo(f"fuzzed run {run.id}: {report.examples} examples, invariant held{extra}")
        return
    click.echo(f"invariant broken after {report.first_failure_at} example(s) (run {run.id}){extra}")
    click.echo(f"  {report.message}")
    click.echo("smallest failing perturbation:")
    for m in report.smallest or ():
        click.echo(f"  {report.describe_mutation(m)}")
    click.echo(
        f"wrote {report.trace}: replay it with "
        f"replayable replay {report.trace} --import {' --import '.join(modules)}"
    )
    sys.exit(1)
