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
from replayable._pii import PII, Pseudonymizer
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


def _pii_hits(p: Pseudonymizer, run: Run, events: Iterable[Event]) -> Iterator[_Hit]:
    """Personal data in a run: where, and of what kind (never the value)."""
    header = {
        "name": run.name,
        "tags": run.tags,
        "metadata": {k: v for k, v in run.metadata.items() if k != "pii"},
        "environment": run.environment,
        "error": run.error,
    }
    for path, kind in p.find(header):
        yield _Hit(run.id, "(run)", path, kind)
    for ev in events:
        for name in _EVENT_FIELDS:
            for path, kind in p.find(getattr(ev, name), name):
                yield _Hit(run.id, ev.address, path, kind)


def _fix(run: Run, events: list[Event], pii: Pseudonymizer | None = None) -> None:
    """Redact the run in place (or, with ``pii``, pseudonymize its personal data, noting the
    settings a replay needs), recompute its chain in write order and re-sign its head."""
    if run.signature is not None and signing_key() is None:
        fail(
            f"run {run.id} is signed: set $REPLAYABLE_SIGNING_KEY so --fix can re-sign it "
            "(otherwise `verify` would fail afterwards)"
        )
    clean: Any = redact if pii is None else pii.value
    if pii is None:
        redact_run(run)
    else:
        pii.run(run)
    for ev in events:
        ev.input, ev.key = _rekeyed(ev.boundary, ev.key, ev.input, clean(ev.input))
        streamed = pii is not None and ev.meta.get("stream") and isinstance(ev.output, list)
        ev.output = pii.chunks(ev.output) if streamed and pii is not None else clean(ev.output)
        ev.error = None if ev.error is None else clean(ev.error)
        ev.meta = clean(ev.meta)
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
@click.option(
    "--pii",
    "pii_on",
    is_flag=True,
    help="Look for personal data instead of secrets (emails, phone numbers, cards, IBANs, IP "
    "addresses, SSNs); --fix pseudonymizes it under $REPLAYABLE_PII_KEY and re-keys each step, "
    "so the run still replays (with the same key).",
)
@click.option(
    "--pii-field",
    "pii_fields",
    multiple=True,
    help="With --pii: a field whose whole value is personal ('customer.name', '*.address').",
)
@click.option(
    "--pii-names",
    "pii_names",
    type=click.Path(dir_okay=False, exists=True),
    help="With --pii: a file of names (one a line) to find in any text.",
)
@click.option(
    "--pii-ner",
    "pii_ner",
    is_flag=True,
    help='With --pii: names in free text too, after a cue such as "I\'m" or "Dear" (the '
    'NER extra: pip install "replayable[ner]").',
)
@click.pass_context
@handle_errors
def scan_cmd(
    ctx: click.Context,
    files: tuple[str, ...],
    store_url: str | None,
    fix: bool,
    pii_on: bool,
    pii_fields: tuple[str, ...],
    pii_names: str | None,
    pii_ner: bool,
) -> None:
    """Report secrets already recorded: in every run of a store, or in FILES (trace files
    and cassettes, told apart by their first line). With --pii, personal data instead.

    One line per finding: run (or the file), step address ('(run)' for the run's header; for a
    cassette, its line and boundary), field path and the rule that fired; never the secret
    itself. Exit 1 when secrets are found (without --fix), 0 when none are (or all were fixed),
    2 on bad input.

    \b
      replayable scan                              the default store
      replayable scan --store postgresql://...     a shared store
      replayable scan traces/*.jsonl --fix         redact promoted trace files in place
      replayable scan tests/cassettes/*.jsonl      cassettes (--fix re-keys what it redacts)
      replayable scan --pii --fix                  pseudonymize personal data recorded before
    """
    if files and ctx.get_parameter_source("store_url") == ParameterSource.COMMANDLINE:
        fail("give either --store or trace files, not both")
    if (pii_fields or pii_names or pii_ner) and not pii_on:
        fail("--pii-field, --pii-names and --pii-ner go with --pii")
    if pii_on:
        names = Path(pii_names).read_text(encoding="utf-8").splitlines() if pii_names else []
        pseudonymizer = PII(fields=pii_fields, names=[n for n in names if n.strip()], ner=pii_ner)
        _scan_pii(ctx, files, store_url, fix, pseudonymizer.pseudonymizer())
        return
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


def _scan_pii(
    ctx: click.Context, files: tuple[str, ...], store_url: str | None, fix: bool, p: Pseudonymizer
) -> None:
    """``scan --pii``: report (and with ``fix``, pseudonymize) personal data in runs."""
    if any(_is_cassette(path) for path in files):
        fail("--pii scans runs and trace files; record cassettes with rp.cassette(..., pii=...)")
    hits: list[_Hit] = []
    fixed_runs = 0
    if files:
        for path in files:
            run, events = read_trace(path)
            found = list(_pii_hits(p, run, events))
            hits.extend(found)
            if fix and found:
                _fix(run, events, p)
                write_trace(run, events, path)
                fixed_runs += 1
    else:
        store = get_store(store_url)
        for run in store.list_runs(RunQuery(limit=_ALL)):
            events = list(store.iter_events(run.id))
            found = list(_pii_hits(p, run, events))
            hits.extend(found)
            if fix and found:
                _fix(run, events, p)
                store.replace_run(run, [event_to_row(e) for e in events])
                fixed_runs += 1
    _report(hits)
    runs = len({h.run for h in hits})
    if not hits:
        click.echo("no personal data found")
    elif fix:
        click.echo(
            f"pseudonymized {len(hits)} personal value(s) in {fixed_runs} run(s), re-keyed, "
            "re-chained, re-signed; replaying them needs $REPLAYABLE_PII_KEY"
        )
    else:
        click.echo(
            f"{len(hits)} personal value(s) in {runs} run(s); `replayable scan --pii --fix` "
            "pseudonymizes them"
        )
        ctx.exit(1)
