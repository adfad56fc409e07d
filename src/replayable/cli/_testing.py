"""``promote`` and ``fuzz``: from a recorded incident to a regression test, and past one sample."""

from __future__ import annotations

from pathlib import Path

import click

from replayable.cli._common import console, get_store, handle_errors, main, store_option
from replayable.trace import Event, Run, read_trace


def _load(run_ref: str, store_url: str | None) -> tuple[Run, list[Event]]:
    if run_ref.endswith(".jsonl") or Path(run_ref).is_file():
        return read_trace(run_ref)
    store = get_store(store_url)
    run = store.get_run(run_ref)
    return run, list(store.iter_events(run.id))


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
@click.option("--force", is_flag=True, help="Overwrite an existing test file.")
@handle_errors
def promote_cmd(
    run_id: str,
    store_url: str | None,
    trace: str | None,
    test: str | None,
    name: str | None,
    forbid: tuple[str, ...],
    force: bool,
) -> None:
    """Export RUN as a trace file and write a pytest test that replays it.

    The test calls the run's root agent with the recorded arguments under
    @pytest.mark.replay (outputs served, side effects not fired, no network) and asserts its
    structure: by default the recorded path; with --forbid NAME, that NAME is never called.
    """
    from replayable.testing._promote import promote

    run, events = _load(run_id, store_url)
    done = promote(run, events, trace=trace, test=test, name=name, forbid=forbid, overwrite=force)
    out = console()
    out.print(f"wrote {done.trace} ({done.calls} recorded calls)")
    out.print(f"wrote {done.test}")
    out.print(f"run it: pytest {done.test}")
