"""``diff``, ``stats`` and ``serve``: compare two runs, sum up a period, open the web viewer."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import click
import orjson
from rich.progress import Progress
from rich.table import Table
from rich.text import Text

from replayable import _sampling as sampling
from replayable._linked import linked_tree, merged_events
from replayable._rundiff import diff_runs, run_usage
from replayable.cli._common import (
    console,
    fail,
    find_run,
    get_store,
    handle_errors,
    listen,
    main,
    parse_since,
    require_token,
    store_option,
    valid_period,
)
from replayable.cli._render import diff_view
from replayable.store.base import RunQuery
from replayable.trace import Event, Run


@main.command("diff")
@click.argument("run_a")
@click.argument("run_b")
@click.option(
    "--store",
    "store_urls",
    multiple=True,
    envvar="REPLAYABLE_STORE",
    show_envvar=True,
    help="Store URL or path (sqlite:///x.db, postgresql://..., a .db file or a directory of "
    "trace files); repeatable: each run is looked up in each in turn, and with --follow the "
    "runs other services recorded for their steps are found in all of them. Default: "
    ".replayable/traces.db",
)
@click.option("--json", "as_json", is_flag=True, help="Print the aligned steps as JSON.")
@click.option(
    "--follow",
    is_flag=True,
    help="Treat the runs other services recorded for each run's remote steps as part of it "
    "(their steps compared too, as 'STEP > service: ADDRESS'), from any --store.",
)
@click.option(
    "--linked-store",
    "linked_urls",
    multiple=True,
    help="With --follow: one more store to find linked runs in (as another --store); repeatable.",
)
@handle_errors
def diff_cmd(
    run_a: str,
    run_b: str,
    store_urls: tuple[str, ...],
    as_json: bool,
    follow: bool,
    linked_urls: tuple[str, ...],
) -> None:
    """Align two runs step by step and show where they part ways.

    Steps pair up by address, then by boundary and input key. Shows every step (= same,
    ~ changed, - only in A, + only in B), then the first divergence with the field-level
    changes of its input, output and error. Exits 1 when the runs differ, like diff(1).
    Either run may be a trace file (.jsonl). With --follow, a step that called another service
    brings the run that service recorded for it along, from any store named with --store
    (or --linked-store):

    \b
    replayable diff A B --follow --store agent.db --store billing-traces.db
    """
    if linked_urls and not follow:
        raise click.UsageError("--linked-store is where --follow finds linked runs: add --follow")
    urls = (*store_urls, *linked_urls) if store_urls else (None, *linked_urls)
    a, events_a, stores = find_run(run_a, urls)
    b, events_b, _ = find_run(run_b, urls)
    if follow:
        events_a = merged_events(events_a, linked_tree(a, stores))
        events_b = merged_events(events_b, linked_tree(b, stores))
    d = diff_runs(a, events_a, b, events_b)
    if as_json:
        click.echo(orjson.dumps(d.to_dict()).decode())
    else:
        out = console()
        out.print(diff_view(d, max_width=out.width))
    if not d.identical:
        raise SystemExit(1)


def _with_progress(runs: list[Run], label: str) -> Iterator[Run]:
    """Yield runs, drawing a progress bar on a terminal once it has taken over a second."""
    out = console()
    if not out.is_terminal:
        yield from runs
        return
    started = time.monotonic()
    progress: Progress | None = None
    task = None
    try:
        for i, run in enumerate(runs):
            if progress is None and time.monotonic() - started > 1.0:
                progress = Progress(console=out, transient=True)
                progress.start()
                task = progress.add_task(label, total=len(runs), completed=i)
            yield run
            if progress is not None and task is not None:
                progress.advance(task)
    finally:
        if progress is not None:
            progress.stop()


def compute_stats(store: Any, runs: list[Run]) -> dict[str, Any]:
    """Runs, steps, errors, statuses and tokens by model over some runs."""
    by_status: dict[str, int] = {}
    steps = errors = 0
    models: dict[str, dict[str, int]] = {}
    for run in _with_progress(runs, "reading runs"):
        by_status[run.status] = by_status.get(run.status, 0) + 1
        events: list[Event] = list(store.iter_events(run.id))
        steps += len(events)
        errors += sum(1 for e in events if e.error is not None)
        for model, row in run_usage(events).items():
            total = models.setdefault(model, {"calls": 0, "input": 0, "output": 0})
            for k, v in row.items():
                total[k] += v
    return {
        "runs": len(runs),
        "by_status": by_status,
        "steps": steps,
        "step_errors": errors,
        "models": models,
    }


@main.command("stats")
@store_option
@click.option(
    "--since",
    default="7d",
    show_default=True,
    callback=valid_period,
    help="Period: 1h, 30m, 2d or a date.",
)
@click.option("--name", help="Only runs with this name.")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@handle_errors
def stats_cmd(store_url: str | None, since: str, name: str | None, as_json: bool) -> None:
    """Runs, steps, errors and tokens by model over a period."""
    store = get_store(store_url)
    runs = store.list_runs(RunQuery(name=name, since=parse_since(since), limit=1_000_000))
    stats = compute_stats(store, runs)
    stats["since"] = since
    stats["sampling"] = sampling.summary(store)
    if as_json:
        click.echo(orjson.dumps(stats).decode())
        return
    out = console()
    statuses = ", ".join(f"{n} {s}" for s, n in sorted(stats["by_status"].items()))
    out.print(
        f"[bold]{stats['runs']} runs[/bold] since {since}" + (f" ({statuses})" if statuses else "")
    )
    out.print(f"{stats['steps']} steps, {stats['step_errors']} raised an error")
    if stats["sampling"]:
        out.print(sampling.describe(stats["sampling"]) + " (all time, this store)")
    if stats["models"]:
        table = Table(box=None, header_style="bold")
        for col in ("model", "calls", "input tokens", "output tokens"):
            table.add_column(col, justify="left" if col == "model" else "right")
        for model, row in sorted(stats["models"].items()):
            table.add_row(Text(model), str(row["calls"]), str(row["input"]), str(row["output"]))
        out.print(table)


@main.command("serve")
@store_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option(
    "--port",
    default=8765,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (0: any free port).",
)
@click.option(
    "--auth-token",
    envvar="REPLAYABLE_VIEWER_TOKEN",
    show_envvar=True,
    help="Token every request must carry (required when --host is not local).",
)
@click.option(
    "--linked-store",
    "linked_urls",
    multiple=True,
    help="Another service's store: the runs it recorded for a remote step are nested under "
    "that step (the viewer's own store is searched too); repeatable.",
)
@click.option(
    "--reveal",
    is_flag=True,
    help="Show the real values behind personal-data pseudonyms (from each run's vault, with "
    "the key in $REPLAYABLE_PII_KEY); needs --auth-token off this machine.",
)
@handle_errors
def serve_cmd(
    store_url: str | None,
    host: str,
    port: int,
    auth_token: str | None,
    linked_urls: tuple[str, ...],
    reveal: bool,
) -> None:
    """Open the web viewer: runs, step trees with a timeline, step details and run diffs.

    Binds to 127.0.0.1. Binding elsewhere (--host 0.0.0.0) needs a token: open
    http://HOST:PORT/?token=TOKEN once (a cookie keeps you signed in) or send
    `Authorization: Bearer TOKEN`.
    """
    local = require_token(host, auth_token, "your traces")
    try:
        import uvicorn

        from replayable.viewer import create_app
    except ImportError as exc:
        fail(f'the viewer needs {exc.name}: pip install "replayable[viewer]"')
        return
    if reveal:
        from replayable._pii import load_key

        load_key()  # no key: say so now, not on the first page
    store = get_store(store_url)
    linked = [get_store(u) for u in linked_urls]
    app = create_app(store, token=auth_token, local_only=local, linked=linked, reveal=reveal)
    sock = listen(host, port)
    port = sock.getsockname()[1]
    shown = f"[{host}]" if ":" in host else host
    url = f"http://{shown}:{port}/"
    out = console()
    out.print(f"replayable viewer for {store.url}")
    out.print(f"  {url}" + ("?token=…  (token required)" if auth_token else ""))
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
