"""``collect``: receive OTLP traces over HTTP and keep each trace as a run."""

from __future__ import annotations

import click

from replayable.cli._common import (
    console,
    fail,
    get_store,
    handle_errors,
    listen,
    main,
    pii_choice,
    pii_option,
    require_token,
    safe,
    store_option,
)
from replayable.store.base import Counters


@main.command("collect")
@store_option
@click.option("--host", default="127.0.0.1", show_default=True, help="Interface to bind.")
@click.option(
    "--port",
    default=4318,
    show_default=True,
    type=click.IntRange(0, 65535),
    help="Port to listen on (4318: OTLP/HTTP's; 0: any free port).",
)
@click.option(
    "--auth-token",
    envvar="REPLAYABLE_VIEWER_TOKEN",
    show_envvar=True,
    help="Token every request must carry as 'Authorization: Bearer TOKEN', or as the password "
    "of HTTP Basic (Langfuse's SDK: LANGFUSE_SECRET_KEY=TOKEN); required when --host is not "
    "local.",
)
@click.option(
    "--idle",
    default=30.0,
    show_default=True,
    type=click.FloatRange(min=0.1),
    help="Seconds without a span after which a trace whose root span never arrived is kept.",
)
@click.option(
    "--settle",
    default=0.5,
    show_default=True,
    type=click.FloatRange(min=0.0),
    help="Seconds to wait after a trace's root span for spans other services export late.",
)
@pii_option
@handle_errors
def collect_cmd(
    store_url: str | None,
    host: str,
    port: int,
    auth_token: str | None,
    idle: float,
    settle: float,
    pii_on: bool | None,
    pii_vault: str | None,
) -> None:
    """Receive OpenTelemetry traces (OTLP/HTTP) and keep each trace as a replayable run.

    Point the traced app's exporter here; nothing else changes in it:

    \b
    OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4318   (POST /v1/traces)
    LANGFUSE_BASE_URL=http://127.0.0.1:4318             (POST /api/public/otel/v1/traces)

    Protobuf and JSON bodies, gzip or not. A trace ends when its root span arrives (then
    --settle seconds), or after --idle seconds without a span; it is then mapped (GenAI,
    OpenInference, Langfuse, Logfire), redacted, with --pii (or $REPLAYABLE_PII=1) its personal
    data pseudonymized, and written as one run, and a line is printed.
    Several collectors can write one PostgreSQL store (a trace already kept is skipped).
    Binding elsewhere than 127.0.0.1 needs --auth-token.
    """
    local = require_token(host, auth_token, "your trace intake")
    try:
        import uvicorn

        from replayable._otlp._collect import Collector, Kept, create_collector_app
    except ImportError as exc:
        fail(f'collect needs {exc.name}: pip install "replayable[otel,viewer]"')
        return
    from replayable._pii import for_record

    # a missing key fails here, before the bind
    pseudonymizer = for_record(pii_choice(pii_on, pii_vault), None)
    store = get_store(store_url, create=True)
    # Open the store and make sure it takes writes before anything is accepted: an exporter
    # answered 200 for spans that cannot be kept would lose them.
    if isinstance(store, Counters):  # the SQL stores and the read-only trace-file directory
        store.counts()
        store.add_counts({})
    sock = listen(host, port)
    port = sock.getsockname()[1]
    out = console()

    def kept(k: Kept) -> None:
        if k.run is None:
            out.print(f"trace {k.trace_id} not kept: {safe(k.problem or '')}")
        elif k.written:
            name = safe(k.run.name or "")
            steps = f"{k.steps} step{'' if k.steps == 1 else 's'}"
            out.print(f"kept run {k.run.id} ({steps}, {name}; {k.ended})")
        else:
            out.print(f"run {k.run.id} is already in the store; skipped")

    collector = Collector(store, idle=idle, settle=settle, on_kept=kept, pii=pseudonymizer)
    app = create_collector_app(collector, token=auth_token, local_only=local)
    shown = f"[{host}]" if ":" in host else host
    out.print(f"replayable collect: OTLP/HTTP on http://{shown}:{port}/v1/traces into {store.url}")
    uvicorn.Server(uvicorn.Config(app, log_level="warning")).run(sockets=[sock])
