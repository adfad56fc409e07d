"""``export``, ``import``, ``verify``, ``copy`` and ``prune``: move runs around and check them."""

from __future__ import annotations

import sys
from pathlib import Path

import click
import orjson
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from replayable.cli._batch import parse_tags, valid_tags
from replayable.cli._common import (
    err_console,
    fail,
    get_store,
    handle_errors,
    main,
    parse_since,
    pii_choice,
    pii_option,
    safe,
    store_option,
    valid_period,
)
from replayable.errors import InvalidOtlp, TraceCorrupt
from replayable.store import open_store
from replayable.store.base import References, RunQuery, RunStatus, event_to_row, verify_stored
from replayable.trace import (
    Event,
    Run,
    Verification,
    check_run_id,
    check_trace,
    trace_lines,
    verify_trace,
    write_trace,
)

_ALL = 10**12


@main.command("export")
@click.argument("run_id", required=False)
@store_option
@click.option(
    "-o",
    "--output",
    type=click.Path(allow_dash=True),
    help="Trace file to write (default RUN_ID.jsonl; '-' for stdout); with --since/--name/"
    "--tag/--status, a directory that gets one RUN_ID.jsonl per run.",
)
@click.option(
    "--since",
    callback=valid_period,
    help="Export every run started within this period (7d) or after a date.",
)
@click.option("--name", help="Export every run with this name.")
@click.option(
    "--tag",
    "tags",
    multiple=True,
    callback=valid_tags,
    help="Export every run with this tag (key=value).",
)
@click.option(
    "--status", type=click.Choice(["ok", "error", "diverged"]), help="Only runs with this status."
)
@click.option("--limit", type=click.IntRange(min=1), help="At most this many runs, newest first.")
@handle_errors
def export_cmd(
    run_id: str | None,
    store_url: str | None,
    output: str | None,
    since: str | None,
    name: str | None,
    tags: tuple[str, ...],
    status: RunStatus | None,
    limit: int | None,
) -> None:
    """Write one run as a JSONL trace file (header line, then one event a line, keys sorted),
    or, with --since/--name/--tag/--status, every matching recorded run (replays left out) into
    the directory -o names: a corpus for `replayable check --store DIR`.

    RUN_ID may be a unique prefix. Files are written atomically and diff well in git.

    \b
    replayable export RUN -o tests/traces/incident.jsonl
    replayable export --since 7d -o corpus/
    """
    query = any((since is not None, name, tags, status))
    if run_id is None:
        if not query:
            fail("name a RUN_ID, or pick runs with --since/--name/--tag/--status and -o DIR")
        if not output or output == "-":
            fail("-o DIR: the directory the trace files go to (one RUN_ID.jsonl per run)")
            return
        _export_many(store_url, output, since, name, tags, status, limit)
        return
    if query or limit:
        fail("give either RUN_ID or --since/--name/--tag/--status/--limit, not both")
    store = get_store(store_url)
    run = store.get_run(run_id)
    check_run_id(run.id)  # it names the default file: never a path
    events = list(store.iter_events(run.id))
    if output == "-":
        sys.stdout.flush()
        sys.stdout.buffer.writelines(trace_lines(run, events))
        sys.stdout.buffer.flush()
        return
    if output is not None and Path(output).is_dir():
        fail(f"{output} is a directory: name the trace file (or pick runs with --since ...)")
    target = write_trace(run, events, output or f"{run.id}.jsonl")
    if run.status in ("running", "incomplete"):
        click.echo(f"note: run {run.id} is {run.status}", err=True)
    click.echo(f"exported run {run.id} ({len(events)} events) to {safe(str(target))}", err=True)


def _export_many(
    store_url: str | None,
    output: str,
    since: str | None,
    name: str | None,
    tags: tuple[str, ...],
    status: RunStatus | None,
    limit: int | None,
) -> None:
    """Every recorded run the query picks (not replays, not unfinished) as RUN_ID.jsonl."""
    target = Path(output)
    if target.exists() and not target.is_dir():
        fail(f"{output} is a file: -o names a directory when exporting several runs")
    store = get_store(store_url)
    query = RunQuery(
        name=name,
        tags=parse_tags(tags) or None,
        status=status,
        since=parse_since(since),
        limit=_ALL,
    )
    runs = [
        r
        for r in store.list_runs(query)
        if r.parent_run is None and r.status not in ("running", "incomplete")
    ][:limit]
    events = 0
    for run in runs:
        evs = list(store.iter_events(run.id))
        events += len(evs)
        write_trace(run, evs, target / f"{run.id}.jsonl")
    click.echo(f"exported {len(runs)} run(s) ({events} events) to {target}/")


@main.command("import")
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False))
@store_option
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["trace", "otlp"]),
    default="trace",
    show_default=True,
    help="trace: replayable's JSONL trace files. otlp: OpenTelemetry traces (the Collector "
    "file exporter's JSON lines, or one OTLP/JSON or protobuf export request; gzip or not), "
    "one run per trace.",
)
@pii_option
@handle_errors
def import_cmd(
    files: tuple[str, ...],
    store_url: str | None,
    fmt: str,
    pii_on: bool | None,
    pii_vault: str | None,
) -> None:
    """Import trace files into the store, all or nothing.

    Every file is read and checked before anything is written; a damaged file (with its line
    number) means nothing is imported. Runs already in the store are skipped.

    With --format otlp, each trace becomes a run (id otlp-TRACE_ID) whose steps are the spans,
    read by the GenAI, OpenInference, Langfuse or Logfire conventions; secrets are redacted
    before anything is written, and with --pii (or $REPLAYABLE_PII=1) personal data is
    pseudonymized as a recording does.

    \b
    replayable import tests/traces/incident.jsonl
    replayable import --format otlp otel-traces.jsonl
    REPLAYABLE_PII_KEY=... replayable import --format otlp --pii otel-traces.jsonl
    REPLAYABLE_PII_KEY=... replayable import --format otlp --pii-vault vault.db otel-traces.jsonl
    """
    if (pii_on or pii_vault) and fmt != "otlp":
        fail(
            "--pii goes with --format otlp (a trace file was recorded by replayable: "
            "`replayable scan --pii --fix` pseudonymizes it)"
        )
    pseudonymizer = None
    if fmt == "otlp":
        from replayable._pii import for_record

        # a missing key fails before anything is read
        pseudonymizer = for_record(pii_choice(pii_on, pii_vault), None)
    loaded: list[tuple[str, Run, list[Event]]] = []
    for file in files:
        if fmt == "otlp":
            from replayable._otlp import read_otlp_file, runs_of

            try:
                spans = read_otlp_file(file)
                loaded.extend((file, run, events) for run, events in runs_of(spans, pseudonymizer))
            except InvalidOtlp as exc:
                fail(f"InvalidOtlp: {safe(str(exc))}; nothing imported")
            continue
        try:
            run, events = check_trace(file)
        except TraceCorrupt as exc:
            fail(f"TraceCorrupt: {safe(str(exc))}; nothing imported")
        loaded.append((file, run, events))
    if not loaded:
        hint = (
            " (a trace file replayable wrote imports without --format otlp)"
            if fmt == "otlp"
            else ""
        )
        fail(f"no spans in the given files{hint}; nothing imported")
    store = get_store(store_url, create=True)
    for file, run, events in loaded:
        run.store = None
        if store.put_run(run, [event_to_row(e) for e in events]):
            click.echo(f"imported run {run.id} ({len(events)} events) from {safe(file)}")
        else:
            click.echo(f"run {run.id} from {safe(file)} is already in {store.url}; skipped")


def _report(v: Verification, source: str, as_json: bool) -> None:
    if as_json:
        click.echo(orjson.dumps({"source": source, **v.to_dict()}).decode())
        return
    if v.ok:
        sig = {
            "valid": ", signature valid",
            "unchecked": ", signed (set $REPLAYABLE_SIGNING_KEY to check the signature)",
        }.get(v.signature, "")
        legacy = (
            "; old format (hash version 1): the run header (status, name, tags, metadata) is "
            "not covered, only its events"
            if v.legacy
            else ", header covered"
        )
        if not v.sealed:
            click.echo(
                f"ok so far: run {safe(v.run_id)} is UNFINISHED (never sealed): "
                f"{v.event_count} events, chain intact as far as it goes, "
                f"head {v.head_hash[:16] or '-'}{sig}{legacy}; not a complete record: events "
                "after the last one may be missing"
            )
            return
        click.echo(
            f"ok: run {safe(v.run_id)}, {v.event_count} events, chain intact, "
            f"head {v.head_hash[:16] or '-'}{sig}{legacy}"
        )
        return
    where = f" (line {v.line})" if v.line is not None else ""
    click.echo(f"BAD{where}: {safe(v.problem or '')}")
    if v.bad_seq is not None:
        click.echo(f"first bad event: seq={v.bad_seq} at {safe(v.bad_address or '')}")


@main.command("verify")
@click.argument("target")
@store_option
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@handle_errors
def verify_cmd(target: str, store_url: str | None, as_json: bool) -> None:
    """Recompute a run's hash chain and header hash; name the first bad event; exit 1 if
    anything is off.

    TARGET is a run id (or unique prefix) in the store, or a trace file (streamed, never read
    whole). What is checked: every event's hash chained in write order from the run's header
    (a replay's served steps as the recorded events they stand for, and every run it serves
    them from, verified too), the head hash sealing the last event with the outcome (status,
    error, end time, metadata, event count), and, when $REPLAYABLE_SIGNING_KEY is set, the
    signature over that head (a run still recording: its last signed checkpoint). Runs
    recorded before hash version 2 are checked for their events only, and say so.
    """
    if Path(target).is_file():
        try:
            result = verify_trace(target)
        except TraceCorrupt as exc:
            if as_json:
                click.echo(
                    orjson.dumps(
                        {"source": target, "ok": False, "problem": str(exc), "line": exc.line}
                    ).decode()
                )
            else:
                click.echo(f"BAD: TraceCorrupt: {safe(str(exc))}")
            sys.exit(1)
    else:
        store = get_store(store_url)
        run = store.get_run(target)
        result = verify_stored(store, run)
    _report(result, target, as_json)
    if not result.ok:
        sys.exit(1)


@main.command("copy")
@click.argument("src_url")
@click.argument("dst_url")
@click.option(
    "--since",
    callback=valid_period,
    help="Only runs started within this period (1h, 30m, 2d) or after a date.",
)
@click.option("--name", help="Only runs with this name.")
@handle_errors
def copy_cmd(src_url: str, dst_url: str, since: str | None, name: str | None) -> None:
    """Copy runs from one store to another (e.g. production PostgreSQL to a laptop SQLite).

    Runs already in the destination and runs still recording are skipped; each run is copied
    in one transaction, with its hash chain intact.
    """
    src, dst = open_store(src_url, must_exist=True), open_store(dst_url)
    runs = src.list_runs(RunQuery(since=parse_since(since), name=name, limit=_ALL))
    copied = skipped = events = 0
    with Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=err_console(),
        transient=True,
    ) as progress:
        task = progress.add_task("copying runs", total=len(runs))
        for run in reversed(runs):
            if run.status == "running":
                skipped += 1
            else:
                rows = [event_to_row(e) for e in src.iter_events(run.id)]
                run.store = None
                if dst.put_run(run, rows):
                    copied += 1
                    events += len(rows)
                else:
                    skipped += 1
            progress.advance(task)
    click.echo(
        f"copied {copied} runs ({events} events) from {src.url} to {dst.url}; "
        f"{skipped} skipped (already there or still recording)"
    )


@main.command("prune")
@store_option
@click.option(
    "--older-than",
    required=True,
    callback=valid_period,
    help="Delete runs started longer ago than this (30d, 12h) or before this date.",
)
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@handle_errors
def prune_cmd(store_url: str | None, older_than: str, yes: bool) -> None:
    """Retention: delete runs (and their events) older than a period.

    A run that a newer run serves events from (the source of a replay kept in the store, which
    stores the steps it served as references to it) is kept, and named: deleting it would
    leave the replay unreadable. It goes with a later prune, once nothing newer refers to it.
    """
    before = parse_since(older_than, "--older-than")
    assert before is not None
    store = get_store(store_url)
    if not yes:
        click.confirm(f"delete runs in {store.url} started before {older_than}?", abort=True)
    kept = store.kept_before(before) if isinstance(store, References) else []
    n = store.delete_runs(before=before)
    click.echo(f"deleted {n} runs from {store.url}")
    if kept:
        shown = ", ".join(kept[:5]) + (", ..." if len(kept) > 5 else "")
        click.echo(
            f"kept {len(kept)} older runs that newer runs (replays) serve events from: {shown}; "
            "they go once nothing newer refers to them"
        )
