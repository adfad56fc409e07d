"""``check`` and ``checks``: replay many recorded runs against the code as it is now, and list
the checks kept."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable

import click
import orjson
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from replayable._check import CheckReport, check, list_checks, load_check
from replayable.cli._batch import (
    JUnitCase,
    Selection,
    output_options,
    selection_options,
    write_junit,
)
from replayable.cli._common import (
    console,
    err_console,
    fail,
    get_store,
    handle_errors,
    import_option,
    main,
    parse_since,
    store_option,
)
from replayable.cli._core import import_modules
from replayable.cli._render import check_view, fmt_time

__all__ = ["junit_cases", "render_report"]


def _progress() -> tuple[Callable[[int, int], None], Callable[[], None]]:
    """A progress callback: a rich bar on a terminal, a plain line every tenth in CI logs."""
    err = err_console()
    if err.is_terminal:
        bar = Progress(
            TextColumn("checking"),
            BarColumn(),
            MofNCompleteColumn(),
            TextColumn("runs"),
            TimeElapsedColumn(),
            console=err,
            transient=True,
        )
        task = bar.add_task("check", total=None)
        bar.start()

        def update(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return update, bar.stop
    state = {"next": 0.0, "t0": time.perf_counter()}

    def line(done: int, total: int) -> None:
        if total and (done >= state["next"] or done == total):
            rate = done / max(time.perf_counter() - state["t0"], 1e-9)
            click.echo(f"checked {done}/{total} runs ({rate:,.0f} runs/s)", err=True)
            state["next"] = done + max(1, total // 10)

    return line, lambda: None


def render_report(report: CheckReport, out: Console) -> None:
    """The check as a human reads it (see :func:`replayable.cli._render.check_view`)."""
    out.print(check_view(report))


def junit_cases(report: CheckReport) -> list[JUnitCase]:
    """One JUnit test case per run: diverged and failed runs fail (the message names the
    group or the error), runs that are not replayable are skipped."""
    cases = []
    for o in report.outcomes:
        status = {"diverged": "failed", "failed": "failed", "not_replayable": "skipped"}
        message = {
            "diverged": f"diverged: {o.signature}",
            "failed": f"failed: {o.detail}",
            "not_replayable": f"not replayable: {o.detail}",
        }
        replay = f"\nreplayable diff {o.run_id} {o.replay_id}" if o.replay_id else ""
        cases.append(
            JUnitCase(
                classname=f"replayable.check.{o.name or 'run'}",
                name=o.run_id,
                status=status.get(o.outcome, "passed"),
                message=message.get(o.outcome, ""),
                text=o.detail + replay,
                seconds=o.duration_s,
            )
        )
    return cases


@main.command("check")
@import_option
@click.option(
    "--store",
    "store_urls",
    multiple=True,
    envvar="REPLAYABLE_STORE",
    show_envvar=True,
    help="Store URL or path: sqlite:///x.db, postgresql://..., a .db file or a directory of "
    "trace files; its runs are checked. Repeatable with --follow: the further stores (other "
    "services') are where linked runs are found too. Default: .replayable/traces.db",
)
@selection_options(runs=False)
@click.option(
    "--live",
    multiple=True,
    help="Boundary to run live instead of serving it (name, module:qualname or name#N); "
    "repeatable. Side-effecting boundaries are refused.",
)
@click.option(
    "--jobs",
    default=1,
    show_default=True,
    type=click.IntRange(min=1),
    help="Worker processes (local executor).",
)
@click.option(
    "--executor",
    type=click.Choice(["local", "dask"]),
    default="local",
    show_default=True,
    help="local: processes on this machine; dask: tasks on an existing Dask cluster.",
)
@click.option("--address", help="The Dask scheduler, tcp://HOST:PORT (with --executor dask).")
@output_options
@click.option(
    "--save-to",
    help="Store that keeps the check and the replays of diverged runs. Default: the --store, "
    "or .replayable/traces.db when --store is a directory of trace files.",
)
@click.option("--no-save", is_flag=True, help="Do not keep the check.")
@click.option(
    "--follow",
    is_flag=True,
    help="Count a run another service recorded for a step of a checked run (found in any "
    "--store) as part of that run: checked with it, not listed on its own; its divergence or "
    "failure is its caller's.",
)
@handle_errors
def check_cmd(
    modules: tuple[str, ...],
    store_urls: tuple[str, ...],
    selection: Selection,
    live: tuple[str, ...],
    jobs: int,
    executor: str,
    address: str | None,
    as_json: bool,
    junit: str | None,
    save_to: str | None,
    no_save: bool,
    follow: bool,
) -> None:
    """Replay every selected recorded run against your code as it is now, and sort the runs:
    unchanged; diverged, grouped by the first divergence (boundary, reason, changed fields),
    largest group first; failed (the agent raised where the recording did not); not replayable.

    Each run's root agent call is re-run with its recorded arguments; model and tool outputs
    come from the recording. The check is kept (with the replays of diverged runs, for
    `replayable diff`) and shown by `replayable checks` and `replayable serve`.

    Exits 1 when any run diverged or failed, 2 on bad input.

    A run imported from a trace (import --format otlp, collect; select them with --tag
    source=otlp): the registered @boundary(kind='agent') named like the traced root agent is
    called with the traced input.

    \b
    replayable check --import my_agent --since 7d
    replayable check --import my_agent --store corpus/ --junit check.xml
    replayable check --import my_agent --jobs 4 --sample 500 --seed 1
    replayable check --import my_agent --store postgresql://... \\
        --executor dask --address tcp://10.0.0.5:8786
    replayable check --import my_agent --import billing --follow \\
        --store agent.db --store billing-traces.db
    """
    if executor == "dask" and not address:
        raise click.UsageError("--executor dask needs --address tcp://HOST:PORT")
    if address and executor != "dask":
        raise click.UsageError("--address is for --executor dask")
    if executor == "dask" and jobs != 1:
        raise click.UsageError("--jobs is for the local executor; size the Dask cluster instead")
    if len(store_urls) > 1 and not follow:
        raise click.UsageError(
            "check replays the runs of one --store; more stores are where --follow finds the "
            "runs other services linked to them: add --follow"
        )
    import_modules(modules)
    store = get_store(store_urls[0] if store_urls else None)
    linked = [get_store(u) for u in store_urls[1:]]
    update, stop = _progress()
    try:
        report = check(
            store,
            imports=modules,
            since=parse_since(selection.since),
            name=selection.name,
            tags=selection.tags or None,
            status=selection.status,
            limit=selection.limit,
            sample=selection.sample,
            seed=selection.seed,
            live=live,
            jobs=jobs,
            executor=executor,
            address=address,
            save=not no_save,
            save_to=get_store(save_to, create=True) if save_to else None,
            progress=update,
            follow=follow,
            linked=linked,
        )
    except ValueError as exc:
        stop()
        fail(str(exc))
        return
    finally:
        stop()
    if junit:
        write_junit(junit, f"replayable check {report.id}", junit_cases(report))
    if as_json:
        click.echo(orjson.dumps(report.to_dict()).decode())
    elif not report.outcomes:
        click.echo(f"no runs match these filters in {report.store}: nothing to check")
    else:
        render_report(report, console())
    if not report.ok or (report.outcomes and not report.checked):
        sys.exit(1)  # a gate that replayed none of its runs did not pass


@main.command("checks")
@click.argument("check_id", required=False)
@store_option
@click.option(
    "-n",
    "--limit",
    default=20,
    show_default=True,
    type=click.IntRange(min=1),
    help="At most this many checks.",
)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def checks_cmd(check_id: str | None, store_url: str | None, limit: int, as_json: bool) -> None:
    """List the checks kept in the store, newest first; with CHECK_ID (or a unique prefix),
    show one: its counts, groups with examples, failed and not replayable runs."""
    store = get_store(store_url)
    if check_id is not None:
        report = load_check(check_id, store)
        if as_json:
            click.echo(orjson.dumps(report.to_dict()).decode())
        else:
            render_report(report, console())
        return
    found = list_checks(store, limit)
    if as_json:
        click.echo(
            orjson.dumps(
                [{k: v for k, v in r.to_dict().items() if k != "runs"} for r in found]
            ).decode()
        )
        return
    if not found:
        click.echo(f"no checks in {store.url}; run one with `replayable check --import MODULE`")
        return
    table = Table(box=None, padding=(0, 2))
    table.add_column("check", no_wrap=True)
    table.add_column("started", no_wrap=True)
    for col in ("runs", "unchanged", "diverged", "failed", "not replayable"):
        table.add_column(col, justify="right")
    table.add_column("largest group", overflow="fold")
    for r in found:
        c = r.counts
        top = r.groups[0].signature if r.groups else ""
        table.add_row(
            r.id,
            fmt_time(r.started_at),
            str(sum(c.values())),
            str(c["unchanged"]),
            f"[bold yellow]{c['diverged']}[/bold yellow]" if c["diverged"] else "0",
            f"[bold red]{c['failed']}[/bold red]" if c["failed"] else "0",
            str(c["not_replayable"]),
            escape(top),
        )
    console().print(table)
