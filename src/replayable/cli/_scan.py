"""``scan``: find secrets already in a store, trace files or cassettes, and (``--fix``) redact
them."""

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
from replayable.cassette import read_cassette, write_cassette
from replayable.cli._common import console, fail, get_store, handle_errors, main, store_option
from replayable.errors import ReplayableError
from replayable.redact import Finding, find, redact, redact_run
from replayable.store.base import RunQuery, event_to_row
from replayable.trace import (
    TRACE_FORMAT,
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


def _rekeyed(boundary: str, key: str, old: Any, new_input: Any) -> tuple[Any, str]:
    """The redacted input and its key: a replay (or a cassette) keys the live call's input
    redacted by today's rules, so a step keyed over a secret is re-keyed, or it would no longer
    match. A step keyed by its boundary's own rules (``key=``, ``ignore=``, ``transient=``) is
    re-keyed through the boundary when this process has it registered; otherwise its key is
    kept."""
    if new_input == old:
        return new_input, key
    if key == canonical.key_of_json(old):
        return new_input, canonical.key_of_json(new_input)
    try:
        b = get_boundary(boundary)
    except ReplayableError:
        return new_input, key
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
        ev.input, ev.key = _rekeyed(ev.boundary, ev.key, ev.input, redact(ev.input))
        ev.output = redact(ev.output)
        ev.error = None if ev.error is None else redact(ev.error)
        ev.meta = redact(ev.meta)
    rechain(run, events)


def _is_cassette(path: str) -> bool:
    """A cassette's first line is a recorded call; a trace file's is its header."""
    with open(path, "rb") as fh:
        first = fh.readline()
    if not first.strip():
        return True
    try:
        head = orjson.loads(first)
    except orjson.JSONDecodeError:
        return False  # read_trace names what is wrong with it
    return isinstance(head, dict) and head.get("format") != TRACE_FORMAT and "boundary" in head


def _scan_cassette(path: str, fix: bool) -> list[_Hit]:
    """The secrets in a cassette's recorded calls; with ``fix``, the file rewritten without them
    (an input that changes is re-keyed, so the call is still found)."""
    calls = read_cassette(path)
    hits: list[_Hit] = []
    for lineno, call in calls.items():
        where = f"line {lineno} ({call['boundary']})"
        for name in _EVENT_FIELDS:
            hits += [_Hit(path, where, f.path, f.rule) for f in find(call.get(name), name)]
    if fix and hits:
        for call in calls.values():
            call["input"], call["key"] = _rekeyed(
                call["boundary"], call["key"], call["input"], redact(call["input"])
            )
            for name in ("output", "error", "meta"):
                if call.get(name) is not None:
                    call[name] = redact(call[name])
        write_cassette(path, calls.values())
    return hits


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
    """Report secrets already recorded: in every run of a store, or in FILES (trace files
    and cassettes, told apart by their first line).

    One line per finding: run (or the file), step address ('(run)' for the run's header; for a
    cassette, its line and boundary), field path and the rule that fired; never the secret
    itself. Exit 1 when secrets are found (without --fix), 0 when none are (or all were fixed),
    2 on bad input.

    \b
      replayable scan                              the default store
      replayable scan --store postgresql://...     a shared store
      replayable scan traces/*.jsonl --fix         redact promoted trace files in place
      replayable scan tests/cassettes/*.jsonl      cassettes (--fix re-keys what it redacts)
    """
    if files and ctx.get_parameter_source("store_url") == ParameterSource.COMMANDLINE:
        fail("give either --store or trace files, not both")
    missing = [p for p in files if not Path(p).is_file()]
    if missing:
        fail(f"no such trace file or cassette: {missing[0]}")
    hits: list[_Hit] = []
    fixed_runs = 0
    if files:
        for path in files:
            if _is_cassette(path):
                found = _scan_cassette(path, fix)
                hits.extend(found)
                fixed_runs += bool(found and fix)
                continue
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
    where = "run(s) or cassette(s)" if files else "run(s)"
    if not hits:
        click.echo("no secrets found")
    elif fix:
        click.echo(f"redacted {len(hits)} secret(s) in {fixed_runs} {where}, re-chained, re-signed")
    else:
        click.echo(f"{len(hits)} secret(s) in {runs} {where}; `replayable scan --fix` redacts them")
        ctx.exit(1)
