"""``drift`` and ``fork``: what today's model does on last week's inputs, and what would have
happened if one step had returned something else."""

from __future__ import annotations

import importlib
import sys
from typing import Any

import click
import orjson

from replayable.cli._batch import (
    JUnitCase,
    Selection,
    output_options,
    selection_options,
    write_junit,
)
from replayable.cli._common import (
    console,
    fail,
    get_store,
    handle_errors,
    import_option,
    main,
    parse_since,
    store_option,
)


def _load_object(spec: str, option: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"{spec!r}: use MODULE:NAME", param_hint=option)
    if "." not in sys.path and "" not in sys.path:
        sys.path.insert(0, ".")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        raise click.BadParameter(f"cannot import {module_name!r}: {exc}", param_hint=option)
    for part in attr.split("."):
        obj = getattr(obj, part, None)
    if obj is None:
        raise click.BadParameter(f"{spec!r}: no such object", param_hint=option)
    return obj


def _judge(spec: str) -> Any:
    if spec == "default":
        return True
    if spec == "exact":
        return None
    obj = _load_object(spec, "--judge")
    return obj() if isinstance(obj, type) else obj


@main.command("drift")
@selection_options
@store_option
@import_option
@click.option(
    "--kind",
    default="llm",
    show_default=True,
    help="Kind of boundary to re-run live (the model calls).",
)
@click.option(
    "--concurrency",
    default=8,
    show_default=True,
    type=click.IntRange(min=1),
    help="Model calls in flight at once.",
)
@click.option(
    "--judge",
    "judge_spec",
    default="default",
    show_default=True,
    help="How texts are compared: 'default' (the configured judge, offline embeddings unless "
    "set), 'exact', or MODULE:JUDGE (an object or class with .judge()).",
)
@output_options
@handle_errors
def drift_cmd(
    selection: Selection,
    store_url: str | None,
    modules: tuple[str, ...],
    kind: str,
    concurrency: int,
    judge_spec: str,
    as_json: bool,
    junit: str | None,
) -> None:
    """Re-run the recorded model calls of RUN... (or of the runs --since/--name/--tag/--status
    pick) live, with their recorded inputs, and report what changed per step: model and
    system_fingerprint, the tool chosen and its arguments, the JSON shape of a structured
    answer, text similarity. Nothing else runs: tools are never called.

    --import the module that defines the model boundaries or instruments the SDK client
    pointing at today's model. Exits 1 if any step drifted, 2 on bad input.
    """
    from replayable._drift import drift
    from replayable.cli._core import import_modules

    if selection.empty:
        fail("name runs (RUN...) or pick them with --since/--name/--tag/--status")
    import_modules(modules)
    report = drift(
        selection.refs,
        store=get_store(store_url),
        since=parse_since(selection.since),
        name=selection.name,
        tags=selection.tags or None,
        status=selection.status,
        limit=selection.limit,
        kind=kind,
        judge=_judge(judge_spec),
        concurrency=concurrency,
    )
    if junit:
        write_junit(
            junit,
            "replayable drift",
            (
                JUnitCase(
                    classname=s.boundary,
                    name=f"{s.run_id} {s.step}",
                    status={"drifted": "failed", "not_rerun": "skipped"}.get(s.status, "passed"),
                    message=s.reason or "; ".join(str(c) for c in s.changes),
                    text="\n".join(str(c) for c in s.changes),
                )
                for s in report.steps
            ),
        )
    if as_json:
        click.echo(orjson.dumps(report.to_dict()).decode())
    else:
        if not report.runs:
            click.echo("no runs match these filters")
        console().print(report.report(), markup=False)
    if report.drifted:
        sys.exit(1)
