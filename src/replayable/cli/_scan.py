"""``scan``: find secrets already in a store or in trace files, and (``--fix``) redact them."""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import click
import orjson
from click.core import ParameterSource

from replayable import canonical
from replayable.boundary import get_boundary
from replayable.cli._common import console, fail, get_store, handle_errors, main, store_option
from replayable.errors import ReplayableError
from replayable.redact import Finding, find, redact, redact_run
from replayable.store.base import RunQuery, event_to_row
from replayable.trace import (
    Event,
    Run,
    read_trace,
    rechain,
    signing_key,
    write_trace,
)

_ALL = 10**12
_EVENT_FIELDS = ("input", "output", "error", "meta")


@dataclass(frozen=True, slots=True)
class _Hit:
    run: str
    address: str
    field: str
    rule: str


def _run_hits(run: Run, events: Iterable[Event]) -> Iterator[_Hit]:
    header = {
        "name": run.name,
        "tags": run.tags,
        "metadata": run.metadata,
        "environment": run.environment,
        "error": run.error,
    }
    for f in find(header):
        yield _Hit(run.id, "(run)", f.path, f.rule)
    for ev in events:
        for name in _EVENT_FIELDS:
            found: list[Finding] = find(getattr(ev, name), name)
            for f in found:
                yield _Hit(run.id, ev.address, f.path, f.rule)


def _rekeyed(ev: Event, new_input: Any) -> tuple[Any, str]:
    """The redacted input and its key: a replay keys the live call's input redacted by today's
    rules, so a step keyed over a secret is re-keyed, or it would no longer match. A step keyed
    by its boundary's own rules (``key=``, ``ignore=``, ``transient=``) is re-keyed through the
    boundary when this process has it registered; otherwise its key is kept."""
    if new_input == ev.input:
        return new_input, ev.key
    if ev.key == canonical.key_of_json(ev.input):
        return new_input, canonical.key_of_json(new_input)
    try:
        b = get_boundary(ev.boundary)
    except ReplayableError:
        return new_input, ev.key
    return new_input, canonical.input_key(b, orjson.dumps(new_input))


def _fix(run: Run, events: list[Event]) -> None:
    """Redact the run in place, recompute its chain in write order and re-sign its head."""
    if run.signature is not None and signing_key() is None:
        fail(
            f"run {run.id} is signed: set $REPLAYABLE_SIGNING_KEY so --fix can re-sign it "
            "(otherwise `verify` would fail afterwards)"
        )
    redact_run(run)
    for ev in events:
        ev.input, ev.key = _rekeyed(ev, redact(ev.input))
        ev.output = redact(ev.output)
        ev.error = None if ev.error is None else redact(ev.error)
        ev.meta = redact(ev.meta)
    rechain(run, events)


def _report(hits: list[_Hit]) -> None:
    out = console()
    for h in hits:
        out.print(f"{h.run}  {h.address}  {h.field}  {h.rule}", markup=False)


@main.command("scan")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False))
@store_option
@click.option(
    "--fix",
    is_flag=True,
    help="Redact what is found, re-chain each changed run and re-sign it (with "
    "$REPLAYABLE_SIGNING_KEY), so `replayable verify` passes afterwards.",
)
@click.pass_context
@handle_errors
def scan_cmd(ctx: click.Context, files: tuple[str, ...], store_url: str | None, fix: bool) -> None:
    """Report secrets already recorded: in every run of a store, or in trace FILES.

    One line per finding: run, step address ('(run)' for the run's header), field path and
    the rule that fired; never the secret itself. Exit 1 when secrets are found (without
    --fix), 0 when none are (or all were fixed), 2 on bad input.

    \b
      replayable scan                              the default store
      replayable scan --store postgresql://...     a shared store
      replayable scan traces/*.jsonl --fix         redact promoted trace files in place
    """
    if files and ctx.get_parameter_source("store_url") == ParameterSource.COMMANDLINE:
        fail("give either --store or trace files, not both")
    hits: list[_Hit] = []
    fixed_runs = 0
    if files:
        for path in files:
            if not Path(path).is_file():
                fail(f"no such trace file: {path}")
            run, events = read_trace(path)
            found = list(_run_hits(run, events))
            hits.extend(found)
            if fix and found:
                _fix(run, events)
                write_trace(run, events, path)
                fixed_runs += 1
    else:
        store = get_store(store_url)
        for run in store.list_runs(RunQuery(limit=_ALL)):
            events = list(store.iter_events(run.id))
            found = list(_run_hits(run, events))
            hits.extend(found)
            if fix and found:
                _fix(run, events)
                store.replace_run(run, [event_to_row(e) for e in events])
                fixed_runs += 1
    _report(hits)
    runs = len({h.run for h in hits})
    if not hits:
        click.echo("no secrets found")
    elif fix:
        click.echo(f"redacted {len(hits)} secret(s) in {fixed_runs} run(s), re-chained, re-signed")
    else:
        click.echo(f"{len(hits)} secret(s) in {runs} run(s); `replayable scan --fix` redacts them")
        ctx.exit(1)
