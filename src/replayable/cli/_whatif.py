"""``drift`` and ``fork``: what today's model does on last week's inputs, and what would have
happened if one step had returned something else."""

from __future__ import annotations

import importlib
import sys
from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:
    from replayable.replay import Replay


def _load_object(spec: str, option: str) -> Any:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise click.BadParameter(f"{spec!r}: use MODULE:NAME", param_hint=option)
    if "." not in sys.path and "" not in sys.path:
        sys.path.insert(0, ".")
    importlib.invalidate_caches()  # "." may be cached as another directory's listing
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

    \b
    replayable drift --since 7d --name support-agent --import my_agent
    replayable drift RUN_A RUN_B --import my_agent --judge exact --json
    replayable drift --since 1d --sample 200 --seed 1 --import my_agent --junit drift.xml
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
        sample=selection.sample,
        seed=selection.seed,
        kind=kind,
        judge=_judge(judge_spec),
        concurrency=concurrency,
    )
    if report.runs and not report.steps:
        fail(
            f"no recorded {kind!r} calls in the {len(report.runs)} run(s) picked: nothing was "
            "re-run (is --kind right? model calls are 'llm')"
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


def _exception(spec: str) -> BaseException:
    """``TYPE[:MESSAGE]``: a builtin exception name or ``module:Class``, and its message."""
    import builtins

    head, sep, message = spec.partition(":")
    cls: Any = getattr(builtins, head, None)
    if cls is None and sep:  # module:Class[:message]
        cls_name, _, message = message.partition(":")
        cls = _load_object(f"{head}:{cls_name}", "--set-error")
    if not (isinstance(cls, type) and issubclass(cls, BaseException)):
        raise click.BadParameter(
            f"{spec!r}: use TYPE[:MESSAGE] with a builtin exception (TimeoutError:model timed "
            "out) or module:Class[:MESSAGE]",
            param_hint="--set-error",
        )
    try:
        return cls(message) if message else cls()
    except TypeError as exc:
        raise click.BadParameter(f"cannot build {spec!r}: {exc}", param_hint="--set-error")


def _output(text: str | None, file: Any, error: str | None) -> tuple[bool, Any]:
    given = [x for x in (text, file, error) if x is not None]
    if len(given) > 1:
        raise click.UsageError("give one of --set-output, --set-output-file, --set-error")
    if error is not None:
        return True, _exception(error)
    raw = text if text is not None else (file.read() if file is not None else None)
    if raw is None:
        return False, None
    try:
        return True, orjson.loads(raw)
    except orjson.JSONDecodeError as exc:
        hint = "--set-output" if text is not None else "--set-output-file"
        raise click.BadParameter(f"not JSON: {exc}", param_hint=hint)


def _fakes(specs: tuple[str, ...]) -> dict[str, Any]:
    out = {}
    for spec in specs:
        name, sep, target = spec.partition("=")
        if not sep or not name or not target:
            raise click.BadParameter(f"{spec!r}: use NAME=module:function", param_hint="--fake")
        fn = _load_object(target, "--fake")
        if not callable(fn):
            raise click.BadParameter(f"{target!r} is not callable", param_hint="--fake")
        out[name] = fn
    return out


def _print_fork(rp: Replay, stopped: BaseException | None, step: str, as_json: bool) -> None:
    """The fork's changes and divergences, what stopped it, and how to compare it."""
    from replayable.errors import Divergence, SideEffectRefused

    if as_json:
        payload = {
            "source": rp.source.id,
            "fork": rp.run.id,
            "at": rp.run.metadata.get("fork"),
            "changes": [c.to_dict() for c in rp.changes],
            "divergences": [d.to_dict() for d in rp.divergences],
            "stopped": None if stopped is None else f"{type(stopped).__name__}: {stopped}",
        }
        click.echo(orjson.dumps(payload).decode())
    else:
        out = console()
        out.print(rp.report(), markup=False)
        if isinstance(stopped, SideEffectRefused):
            out.print(f"stopped: {stopped}", markup=False)
        elif stopped is not None and not isinstance(stopped, Divergence):
            out.print(f"the agent raised {type(stopped).__name__}: {stopped}", markup=False)
        out.print(
            f"fork recorded as run {rp.run.id} (source {rp.source.id} at {step}); compare: "
            f"replayable diff {rp.source.id} {rp.run.id}",
            markup=False,
        )


@main.command("fork")
@click.argument("run_id")
@store_option
@import_option
@click.option(
    "--at",
    "at",
    required=True,
    help="The step to fork at: name#N, the N-th recorded call of boundary 'name' (1-based, in "
    "start order; a bare name means #1). `replayable show RUN` lists the steps.",
)
@click.option("--set-output", help="JSON the step returns instead of its recorded output.")
@click.option(
    "--set-output-file",
    type=click.File("rb"),
    help="A file holding that JSON ('-' for stdin).",
)
@click.option(
    "--set-error",
    help="An exception the step raises instead: TYPE[:MESSAGE] (TimeoutError:model timed out) "
    "or module:Class[:MESSAGE].",
)
@click.option(
    "--live-from",
    is_flag=True,
    help="Serve every call before the step, then run it and every later call live (side "
    "effects excepted: served when they match the recording, else refused or faked).",
)
@click.option(
    "--live-kind",
    "live_kinds",
    multiple=True,
    help="Kind (llm, tool, ...) whose calls run live when the recording cannot serve them "
    "(changed or new); repeatable.",
)
@click.option(
    "--live", multiple=True, help="Boundary to run live throughout (name or name#N); repeatable."
)
@click.option(
    "--fake",
    "fakes",
    multiple=True,
    help="NAME=module:function: run this instead of boundary NAME when the recording cannot "
    "serve it (e.g. a side effect that changed); repeatable.",
)
@click.option(
    "--allow-side-effects",
    is_flag=True,
    help="Let changed side effects run for real (without it they are refused).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the outcome as JSON.")
@handle_errors
def fork_cmd(
    run_id: str,
    store_url: str | None,
    modules: tuple[str, ...],
    at: str,
    set_output: str | None,
    set_output_file: Any,
    set_error: str | None,
    live_from: bool,
    live_kinds: tuple[str, ...],
    live: tuple[str, ...],
    fakes: tuple[str, ...],
    allow_side_effects: bool,
    as_json: bool,
) -> None:
    """What if step --at had returned something else, or had run again live?

    Replays RUN with your code (its root agent called with the recorded arguments): every call
    before the step is served from the recording; the step returns --set-output (or raises
    --set-error), or with --live-from runs live with everything after it. Calls that still
    match are served; a side effect that no longer matches is refused unless faked (--fake) or
    allowed. Prints which steps changed; the fork is recorded as a run linked to RUN at the
    step. Exits 0 when the fork ran to the end, 1 when a refused side effect or a divergence
    stopped it, 2 on bad input.

    A run imported from a trace (import --format otlp, collect): the registered
    @boundary(kind='agent') named like the traced root agent is called with the traced input.

    \b
    replayable fork RUN --import my_agent --at plan#1 --set-output '{"tool": "search"}'
    replayable fork RUN --import my_agent --at plan#1 --set-error 'TimeoutError:model timed out'
    replayable fork RUN --import my_agent --at plan#1 --live-from \\
        --fake delete_record=my_agent.fakes:delete_record
    """
    from replayable._rootcall import call_recorded, root_call
    from replayable.cli._core import import_modules
    from replayable.errors import Divergence, ReplayableError, SideEffectRefused, UnknownBoundary
    from replayable.replay import replay

    step = at if "#" in at else f"{at}#1"
    has_output, value = _output(set_output, set_output_file, set_error)
    if not has_output and not live_from:
        fail(
            "say what changes at the step: --set-output JSON, --set-output-file F, "
            "--set-error TYPE[:MESSAGE] or --live-from"
        )
    import_modules(modules)
    faked = _fakes(fakes)
    try:
        rp = replay(
            run_id,
            store=get_store(store_url, create=run_id.endswith(".jsonl")),
            live=live,
            allow_side_effects=allow_side_effects,
            strict=False,
            override={step: value} if has_output else None,
            live_from=step if live_from else None,
            live_kinds=live_kinds,
            fakes=faked,
        )
    except UnknownBoundary as exc:  # say it with the option the name was given to
        if exc.option in ("override", "live_from"):
            fail(f"--at {at}: {exc.detail}")
        if exc.option == "fakes":
            spec = next(f for f in fakes if f.partition("=")[0] == exc.given)
            fail(f"--fake {spec}: {exc.detail}")
        raise
    b, ev = root_call(rp.source, rp.recorded_events)
    stopped: BaseException | None = None
    try:
        with rp:
            call_recorded(b, ev)
    except (Divergence, SideEffectRefused) as exc:
        stopped = exc
    except ReplayableError:
        raise
    except Exception as exc:
        if ev.error is None:
            stopped = exc
    _print_fork(rp, stopped, step, as_json)
    if stopped is not None:  # a divergence, a refused side effect, or the agent raised
        sys.exit(1)
