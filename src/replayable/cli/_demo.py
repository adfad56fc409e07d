"""``replayable demo``: a recorded incident, replayed offline, then replayed against the fix."""

from __future__ import annotations

import os
import secrets
import sys
from dataclasses import replace
from pathlib import Path

import click
from rich.console import Console
from rich.rule import Rule

import replayable as rp
from replayable._pii import PII
from replayable.cli._common import console, get_store, handle_errors, main, store_option
from replayable.cli._render import step_tree
from replayable.replay import Replay
from replayable.store import Store
from replayable.trace import Run

MAX_ATTEMPTS = 60


def _demo_key(where: Path) -> Path | None:
    """The demo's personal-data key: the one in the environment, else a key file made for the
    demo beside its database (owner-only). A production recording has no such fallback: with
    pii on and no key it stops with an error (see docs/personal-data.md)."""
    if os.environ.get("REPLAYABLE_PII_KEY") or os.environ.get("REPLAYABLE_PII_KEY_FILE"):
        return None
    path = where / "pii.key"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_CREAT | os.O_WRONLY | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(secrets.token_hex(32) + "\n")
    return path


@main.command("demo")
@store_option
@click.option(
    "--db",
    "db",
    default=None,
    help="Where the demo's customer database goes. Default: .replayable/demo/customers.db",
)
@handle_errors
def demo_cmd(store_url: str | None, db: str | None) -> None:
    """Record a support agent until it deletes the wrong customer, then replay the incident.

    No network, no API key: the agent's model is scripted but samples, so its answer varies from
    run to run. The replay serves every recorded output (the database is not touched); replaying
    against the guarded agent shows the divergence where the fix blocks the deletion.
    """
    if db:
        os.environ["REPLAYABLE_DEMO_DB"] = db
    from replayable.demo import agent

    out = console()
    store = get_store(store_url, create=True)
    key_file = _demo_key(agent.db_path().parent)
    pii = agent.pii() if key_file is None else replace(agent.pii(), key_file=key_file)
    out.print(Rule("1. Production: the support agent runs, recorded (personal data pseudonymized)"))
    out.print(f"request: [italic]{agent.REQUEST}[/italic]")
    incident = _record_incident(out, store, pii)
    after_incident = agent.customers()

    out.print(Rule("2. The incident, as recorded"))
    events = list(store.iter_events(incident.id))
    out.print(step_tree(incident, events))
    shown = pii.pseudonymizer()
    out.print(
        f"  stored as pseudonyms: {agent.CUSTOMERS[2][1]} is "
        f"[bold]{shown.text(agent.CUSTOMERS[2][1])}[/bold], {agent.OWNER_EMAIL} is "
        f"[bold]{shown.text(agent.OWNER_EMAIL)}[/bold] (keyed HMAC, shape kept; the key is "
        f"{key_file or '$REPLAYABLE_PII_KEY'}, apart from the store)"
    )
    # Replays run the agent on its recorded (pseudonymized) request, as `replayable replay`
    # does: what it reads and what it is served then agree.
    request = next(e for e in events if e.parent_seq is None).input["request"]

    after = _replay_offline(out, store, incident, request)
    fixed = _replay_fixed(out, store, incident, request)
    _next_steps(out, incident, fixed, store.url if store_url else None)
    out.print(
        f"  the incident left {len(after_incident)} of {len(agent.CUSTOMERS)} customers; "
        f"the demo database ({agent.db_path()}) is reset to all {len(after)}"
    )


def _record_incident(out: Console, store: Store, pii: PII) -> Run:
    """Record the unguarded agent until it deletes the wrong customer (exit 1 if it never
    does in MAX_ATTEMPTS runs)."""
    from replayable.demo import agent

    agent.GUARD = False
    incident = None
    for _attempt in range(1, MAX_ATTEMPTS + 1):
        agent.reset_db()
        with rp.record(store, name="support-agent", tags={"demo": "incident"}, pii=pii) as run:
            result = agent.support_agent(agent.REQUEST)
        customer = result["customer"]
        wrong = customer["email"] != agent.OWNER_EMAIL
        verdict = "[bold red]WRONG RECORD[/bold red]" if wrong else "[green]correct[/green]"
        out.print(f"  run {run.id}: deleted #{customer['id']} {customer['name']:<15} {verdict}")
        if wrong:
            incident = run
            break
    if incident is None:
        out.print(f"[red]no incident in {MAX_ATTEMPTS} runs (unlucky sampling); run it again[/red]")
        sys.exit(1)
    return incident


def _replay_offline(
    out: Console, store: Store, incident: Run, request: str
) -> list[tuple[int, str, str]]:
    """Replay the incident: outputs served, the database untouched (exit 1 otherwise); the
    customers after it."""
    from replayable.demo import agent

    out.print(Rule("3. Replay it offline: outputs served, side effects not re-fired"))
    agent.reset_db()
    before = agent.customers()
    with rp.replay(incident.id, store=store) as replayed:
        again = agent.support_agent(request)
    after = agent.customers()
    out.print(replayed.report())
    out.print(
        f"  the replayed agent decided again to delete #{again['customer']['id']} "
        f"{again['customer']['name']}: the same path, from the recording"
    )
    untouched = before == after
    out.print(
        f"  database: {len(before)} rows before the replay, {len(after)} after: "
        + (
            "[green]untouched[/green] (delete_record was served, never called)"
            if untouched
            else "[bold red]CHANGED[/bold red]"
        )
    )
    if not untouched or not replayed.ok:
        sys.exit(1)

    return after


def _replay_fixed(out: Console, store: Store, incident: Run, request: str) -> Replay:
    """Replay the incident against the guarded agent: the deletion is skipped (exit 1 if the
    path did not change)."""
    from replayable.demo import agent

    out.print(Rule("4. Apply the fix (check the email before deleting) and replay again"))
    agent.GUARD = True
    try:
        with rp.replay(incident.id, store=store, strict=False) as fixed:
            outcome = agent.support_agent(request)
    finally:
        agent.GUARD = False
    out.print(f"  guarded agent: {outcome['status']}: {outcome.get('reason', '')}")
    out.print(fixed.report())
    blocked = any(
        d.reason == "skipped" and d.boundary.endswith(":delete_record") for d in fixed.divergences
    )
    if not blocked:
        out.print("[bold red]the fix did not change the path[/bold red]")
        sys.exit(1)
    return fixed


def _next_steps(out: Console, incident: Run, fixed: Replay, store_url: str | None) -> None:
    """The commands to try next on the incident (naming the store when one was given)."""
    at = f" --store {store_url}" if store_url else ""
    out.print(Rule("Next"))
    demo = "--import replayable.demo.agent"
    steps = [
        (f"replayable show {incident.id}{at}", "the incident, step by step"),
        (f"replayable replay {incident.id} {demo}{at}", "your code against the recording"),
        (f"replayable diff {incident.id} {fixed.run.id}{at}", "incident vs fixed replay"),
        (
            f"replayable fork {incident.id} {demo} --at choose_record#1 --live-from{at}",
            "what if the model chose again",
        ),
        (
            f"replayable promote {incident.id} --name incident --forbid delete_record{at}",
            "a regression test",
        ),
        (f"replayable check {demo}{at}", "every recorded run against your code"),
        (f"replayable serve{at}", "the web viewer"),
    ]
    width = max((len(cmd) for cmd, _ in steps if len(cmd) <= 72), default=0)
    for cmd, why in steps:  # soft_wrap: a long command stays one line to copy
        out.print(f"  {cmd:<{width}}  # {why}", markup=False, soft_wrap=True)
