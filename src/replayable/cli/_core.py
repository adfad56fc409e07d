"""``runs``, ``show`` and ``replay``: list runs, look at one, replay it against your code."""

from __future__ import annotations

import importlib
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import click
import orjson

from replayable._linked import Callee, linked_tree
from replayable._rootcall import call_recorded, root_call
from replayable.boundary import Boundary
from replayable.cli._batch import parse_tags, valid_tags
from replayable.cli._common import (
    console,
    fail,
    find_run,
    get_store,
    handle_errors,
    import_option,
    main,
    parse_since,
    store_option,
    valid_period,
)
from replayable.cli._render import find_event, run_table, step_detail, step_tree
from replayable.errors import Divergence, ReplayableError
from replayable.replay import Replay, replay
from replayable.store.base import RunQuery, RunStatus
from replayable.trace import Event


@main.command("runs")
@store_option
@click.option("--name", help="Only runs with this name.")
@click.option(
    "--tag",
    "tags",
    multiple=True,
    callback=valid_tags,
    help="Only runs with this tag (key=value); repeatable.",
)
@click.option(
    "--status",
    type=click.Choice(["ok", "error", "diverged", "running", "incomplete"]),
    help="Only runs with this status.",
)
@click.option(
    "--since",
    callback=valid_period,
    help="Only runs started within this period (1h, 30m, 2d) or after a date.",
)
@click.option("--boundary", help="Only runs that called this boundary (full or bare name).")
@click.option("--errors", "has_error", is_flag=True, default=None, help="Only runs with an error.")
@click.option(
    "-n",
    "--limit",
    default=50,
    show_default=True,
    type=click.IntRange(min=1),
    help="At most this many runs.",
)
@click.option("--json", "as_json", is_flag=True, help="Print a JSON array of runs.")
@handle_errors
def runs_cmd(
    store_url: str | None,
    name: str | None,
    tags: tuple[str, ...],
    status: RunStatus | None,
    since: str | None,
    boundary: str | None,
    has_error: bool | None,
    limit: int,
    as_json: bool,
) -> None:
    """List recorded runs, newest first: status, duration, step count and tags."""
    store = get_store(store_url)
    query = RunQuery(
        name=name,
        tags=parse_tags(tags) or None,
        status=status,
        since=parse_since(since),
        boundary=boundary,
        has_error=has_error,
        limit=limit,
    )
    found = store.list_runs(query)
    if as_json:
        click.echo(orjson.dumps([r.to_dict() for r in found]).decode())
        return
    if not found:
        filtered = any((name, tags, status, since is not None, boundary, has_error))
        click.echo(
            f"no runs match these filters in {store.url}" if filtered else f"no runs in {store.url}"
        )
        return
    console().print(run_table(found))


@main.command("show")
@click.argument("run_id")
@click.option(
    "--store",
    "store_urls",
    multiple=True,
    envvar="REPLAYABLE_STORE",
    show_envvar=True,
    help="Store URL or path (sqlite:///x.db, postgresql://..., a .db file or a directory of "
    "trace files); repeatable: the run is looked up in each in turn, and the runs other "
    "services recorded for its steps are nested from all of them. Default: "
    ".replayable/traces.db",
)
@click.option("--json", "as_json", is_flag=True, help="Print the run and its events as JSON.")
@click.option(
    "--step",
    "step_ref",
    help="Print one step in full: its address (module names optional, e.g. "
    "'support_agent/0 > delete_record/0'), a bare boundary name when unique, or its seq.",
)
@click.option("--width", default=70, show_default=True, help="Characters of input/output shown.")
@click.option(
    "--reveal",
    is_flag=True,
    help="Show the real values behind personal-data pseudonyms, from the run's vault, with the "
    "key in $REPLAYABLE_PII_KEY (or $REPLAYABLE_PII_KEY_FILE).",
)
@click.option(
    "--vault",
    type=click.Path(dir_okay=False),
    help="The vault file, when it moved since the run was recorded (with --reveal).",
)
@handle_errors
def show_cmd(
    run_id: str,
    store_urls: tuple[str, ...],
    as_json: bool,
    step_ref: str | None,
    width: int,
    reveal: bool,
    vault: str | None,
) -> None:
    """Show a run as a tree of steps: kind, name, duration, model, sampling and tokens, short
    input/output, errors in red. With --step, one step's full input and output.

    A step that called another service (a remote step) shows the run that service recorded for
    it nested under it, when that run is in one of the stores named with --store.

    RUN_ID may be a unique prefix of the id, or a trace file (.jsonl). A run recorded with
    personal data pseudonymized shows its pseudonyms; --reveal shows the real values instead,
    with the key.
    """
    if vault is not None and not reveal:
        raise click.UsageError("--vault names the vault --reveal reads: add --reveal")
    run, events, stores = find_run(run_id, store_urls)
    if reveal:
        from replayable._pii_vault import reveal_run

        run, events = reveal_run(run, events, vault)
    out = console()
    if step_ref is not None:
        ev = find_event(run, events, step_ref)
        if as_json:
            click.echo(orjson.dumps(ev.to_dict()).decode())
        else:
            out.print(step_detail(run, ev))
        return
    linked = linked_tree(run, stores)
    if as_json:
        payload = {
            "run": run.to_dict(),
            "events": [e.to_dict() for e in events],
            "linked": _linked_json(linked),
        }
        click.echo(orjson.dumps(payload).decode())
        return
    out.print(step_tree(run, events, width=width, max_width=out.width, linked=linked))


def _linked_json(linked: Mapping[str, list[Callee]]) -> dict[str, Any]:
    return {
        step: [
            {
                "run": c.run.to_dict(),
                "events": [e.to_dict() for e in c.events],
                "linked": _linked_json(c.callees),
            }
            for c in callees
        ]
        for step, callees in linked.items()
    }


def import_modules(modules: tuple[str, ...]) -> None:
    """Import the user's modules so their boundaries register."""
    sys.path.insert(0, ".")
    for name in modules:
        try:
            importlib.import_module(name)
        except ImportError as exc:
            fail(f"cannot import {name!r}: {exc}")


@main.command("replay")
@click.argument("run_id")
@store_option
@import_option
@click.option(
    "--live",
    multiple=True,
    help="Boundary to run live instead of serving it (name, module:qualname or name#N); "
    "repeatable.",
)
@click.option(
    "--allow-side-effects", is_flag=True, help="Allow side-effecting boundaries named in --live."
)
@click.option(
    "--match",
    type=click.Choice(["address", "key"]),
    default="address",
    show_default=True,
    help="Match calls by place in the tree (address) or by canonical input alone (key).",
)
@click.option(
    "--trust",
    is_flag=True,
    help="Replay a recording that does not verify against $REPLAYABLE_SIGNING_KEY "
    "(edited, cut short or unsigned) instead of refusing it.",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@handle_errors
def replay_cmd(
    run_id: str,
    store_url: str | None,
    modules: tuple[str, ...],
    live: tuple[str, ...],
    allow_side_effects: bool,
    match: str,
    trust: bool,
    as_json: bool,
) -> None:
    """Replay a run against your code: call its root agent with the recorded arguments.

    Model and tool outputs come from the recording; boundaries named with --live run. Prints the
    divergence report (with --json: the source, the replay's run id, every divergence, and what
    the agent raised); exits 1 if the code took a different path, 2 on bad input.

    A run imported from a trace (import --format otlp, collect): the registered
    @boundary(kind='agent') named like the traced root agent is called with the traced input.
    """
    import_modules(modules)
    # The replay is recorded: a trace-file source may replay into a store not created yet.
    store = get_store(store_url, create=Path(run_id).is_file())
    rp = replay(
        run_id,
        store=store,
        live=live,
        allow_side_effects=allow_side_effects,
        strict=False,
        match=match,
        trust=trust,
    )
    b, ev = root_call(rp.source, rp.recorded_events)
    run_divergence, raised = _run_replay(rp, b, ev)
    extra = [] if run_divergence is None or run_divergence in rp.divergences else [run_divergence]
    if as_json:
        payload = {
            "source": rp.source.id,
            "replay": rp.run.id,
            "ok": not (rp.divergences or extra),
            "divergences": [d.to_dict() for d in [*rp.divergences, *extra]],
            "raised": raised,
        }
        click.echo(orjson.dumps(payload).decode())
    else:
        out = console()
        if raised is not None:
            out.print(f"the agent raised {raised}", style="red", markup=False)
        out.print(rp.report(), markup=False)  # recorded text: `[/bold]` is data, not markup
        for div in extra:
            out.print(div.describe(), markup=False)
        out.print(f"replay recorded as run {rp.run.id}")
    if rp.divergences or extra:
        sys.exit(1)


def _run_replay(rp: Replay, b: Boundary, ev: Event) -> tuple[Divergence | None, str | None]:
    """Run the root call under the replay: a raised divergence is returned, not propagated,
    and so is an exception the recording did not raise (as ``Type: message``)."""
    try:
        with rp:
            call_recorded(b, ev)
    except Divergence as div:
        return div, None
    except ReplayableError:
        raise
    except Exception as exc:
        if ev.error is None:
            return None, f"{type(exc).__name__}: {exc}"
    return None, None
