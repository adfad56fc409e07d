"""Shared CLI plumbing: the root group, the store option, error handling, time parsing."""

from __future__ import annotations

import functools
import os
import re
import socket
import sys
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, NoReturn, TypeVar

import click
from rich.console import Console, ConsoleOptions, RenderableType
from rich.markup import escape as rich_escape
from rich.segment import Segment

from replayable._inert import inert_segments, visible
from replayable._version import __version__
from replayable.errors import ReplayableError, RunNotFound
from replayable.store import Store, open_store
from replayable.store import load_run as _load_run
from replayable.store.base import parse_since as _parse_since
from replayable.trace import Event, Run

__all__ = [
    "console",
    "err_console",
    "fail",
    "find_run",
    "handle_errors",
    "import_option",
    "listen",
    "load_run",
    "main",
    "markup",
    "parse_since",
    "pii_choice",
    "pii_option",
    "safe",
    "store_option",
    "valid_period",
]

F = TypeVar("F", bound=Callable[..., Any])

LOCAL_HOSTS = ("127.0.0.1", "localhost", "::1")
"""Interfaces a server (``serve``, ``collect``) may bind without a token."""


def require_token(
    host: str, token: str | None, what: str, envvar: str = "REPLAYABLE_VIEWER_TOKEN"
) -> bool:
    """Fail unless a bind beyond this machine has a token; True when the bind is local.
    ``envvar`` is the variable the command also reads its ``--auth-token`` from."""
    if host in LOCAL_HOSTS:
        return True
    if not token:
        fail(
            f"binding to {host} exposes {what} to the network: pass --auth-token "
            f"(or set ${envvar}), or keep the default --host 127.0.0.1"
        )
    return False


def _no_color() -> bool:
    return bool(os.environ.get("NO_COLOR"))


class SafeConsole(Console):
    """A rich console that never lets recorded text drive the terminal: every control
    character in rendered text (ESC of a title or clipboard sequence, a clear screen, a bidi
    override) is printed as a visible escape. Rich's own styling is unaffected (it is applied
    from styles when writing, never carried in the text)."""

    def render(
        self, renderable: RenderableType, options: ConsoleOptions | None = None
    ) -> Iterable[Segment]:
        yield from inert_segments(super().render(renderable, options))


def console() -> Console:
    """A stdout console honouring NO_COLOR (re-read at every call, for tests).

    Piped output (not a terminal, no $COLUMNS) is laid out 160 columns wide rather than rich's
    80, so ids, addresses and diffs stay whole for grep and log files.
    """
    width = None if sys.stdout.isatty() or os.environ.get("COLUMNS") else 160
    return SafeConsole(no_color=_no_color(), highlight=False, soft_wrap=False, width=width)


def err_console() -> Console:
    """A stderr console honouring NO_COLOR."""
    return SafeConsole(stderr=True, no_color=_no_color(), highlight=False)


_SURROGATE = re.compile("[\udc80-\udcff]")  # bytes that were not UTF-8 on the command line


def safe(text: str, *, newlines: bool = False) -> str:
    """Recorded text made safe for a terminal: control characters shown as escapes
    (``\\x1b``, ``\\n``), so a recorded value can never drive the terminal. ``newlines=True``
    keeps line breaks (multi-line messages)."""

    return visible(text, newlines=newlines)


def markup(text: str, *, newlines: bool = False) -> str:
    """Recorded text for a rich ``print``: control characters visible and markup escaped
    (``[/bold]`` prints as itself)."""
    return rich_escape(safe(text, newlines=newlines))


def fail(message: str, code: int = 2) -> NoReturn:
    """Print one error line to stderr and exit with ``code`` (2: bad input or unknown thing)."""
    click.echo(f"error: {safe(message, newlines=True)}", err=True)
    sys.exit(code)


def handle_errors(fn: F) -> F:
    """Turn our errors into one clear line on stderr and exit code 2, never a traceback."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        for name, value in kwargs.items():
            for item in value if isinstance(value, tuple) else (value,):
                if isinstance(item, str) and _SURROGATE.search(item):
                    shown = item.encode("utf-8", "surrogateescape").decode(
                        "utf-8", "backslashreplace"
                    )
                    fail(f"{name.replace('_', ' ')} {safe(shown)!r} is not valid UTF-8")
        try:
            return fn(*args, **kwargs)
        except ReplayableError as exc:
            fail(str(exc))
        except OSError as exc:  # a path given on the command line that cannot be used
            where = f" ({exc.filename})" if exc.filename else ""
            fail(f"{exc.strerror or exc}{where}")

    return wrapper  # type: ignore[return-value]


def store_option(fn: F) -> F:
    """``--store URL``: where runs live (default ``$REPLAYABLE_STORE`` or .replayable/traces.db)."""
    return click.option(
        "--store",
        "store_url",
        default=None,
        envvar="REPLAYABLE_STORE",
        show_envvar=True,
        help="Store URL or path: sqlite:///x.db, postgresql://..., a .db file or a directory of "
        "trace files. Default: .replayable/traces.db",
    )(fn)


def import_option(fn: F) -> F:
    """``--import MODULE`` (repeatable, required): the modules that define the boundaries."""
    return click.option(
        "--import",
        "modules",
        multiple=True,
        required=True,
        help="Module defining the agent's boundaries (importable from here); repeatable.",
    )(fn)


def pii_option(fn: F) -> F:
    """``--pii``: personal data pseudonymized before anything is written (``record(pii=True)``);
    without it, ``$REPLAYABLE_PII`` decides, as for a recording. ``--pii-vault FILE``: the
    real values kept in that vault too (``PII(vault=...)``); it implies ``--pii``. The command
    takes ``pii_on`` and ``pii_vault``; :func:`pii_choice` makes them ``record``'s ``pii=``."""
    fn = click.option(
        "--pii-vault",
        "pii_vault",
        type=click.Path(dir_okay=False),
        default=None,
        help="Keep each pseudonym's real value in this vault file (sealed under the key; "
        "implies --pii), so `replayable show RUN --reveal` shows them. Keep it apart from the "
        "store.",
    )(fn)
    return click.option(
        "--pii",
        "pii_on",
        is_flag=True,
        default=None,
        help="Pseudonymize personal data (emails, phone numbers, cards, IBANs, IP addresses, "
        "SSNs) before anything is written, under $REPLAYABLE_PII_KEY, as record(pii=True) does. "
        "Default: on when $REPLAYABLE_PII=1.",
    )(fn)


def pii_choice(pii_on: bool | None, pii_vault: str | None) -> Any:
    """``record``'s ``pii=`` from ``--pii`` and ``--pii-vault`` (None: the environment's)."""
    if pii_vault is None:
        return pii_on
    from replayable._pii import PII

    return PII(vault=pii_vault)


def get_store(url: str | None, *, create: bool = False) -> Store:
    """Open the store named on the command line; only commands that write may create one."""
    return open_store(url, must_exist=not create)


def load_run(ref: str, store_url: str | None) -> tuple[Run, list[Event]]:
    """A run and its events from a trace file path, or a run id (or unique prefix) in the
    store named on the command line (which must exist)."""
    if ref.endswith(".jsonl") or Path(ref).is_file():
        return _load_run(ref)
    return _load_run(ref, get_store(store_url))


def parse_since(text: str | None, option: str = "--since") -> float | None:
    """``1h``, ``30m``, ``2d`` or an ISO date/time -> epoch seconds; None passes through; bad
    input is a usage error naming ``option``."""
    if text is None:
        return None
    try:
        return _parse_since(text)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint=option) from None


def valid_period(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Click callback checking a period option (``--since``) while the command line is parsed,
    so a bad one is a usage error before any store is opened; the text is kept as given."""
    parse_since(value, param.opts[0])
    return value


class _OneLineErrors(click.Group):
    """The root group: a usage error in a command's arguments (a bad ``--since``, a missing
    ``--import``) is one ``error:`` line naming the command's ``--help``, exit 2, like every
    other bad input, instead of click's usage block."""

    def invoke(self, ctx: click.Context) -> Any:
        try:
            return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            where = exc.ctx.command_path if exc.ctx is not None else ctx.command_path
            fail(f"{exc.format_message().rstrip('.')} (see `{where} --help`)")


@click.group(cls=_OneLineErrors, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="replayable")
def main() -> None:
    """Record LLM-agent runs at their boundaries, look at them, and replay them offline.

    Start with `replayable demo`. Runs live in .replayable/traces.db unless --store or
    $REPLAYABLE_STORE says otherwise.
    """


def find_run(ref: str, urls: Sequence[str | None]) -> tuple[Run, list[Event], list[Store]]:
    """The run ``ref`` names (a trace file, or an id in the first of the stores ``urls`` that
    holds it; ``None``: the default store), and the stores to look for linked runs in."""
    if ref.endswith(".jsonl") or Path(ref).is_file():
        run, events = _load_run(ref, None)
        return run, events, [get_store(u) for u in urls]
    stores = [get_store(u) for u in urls] if urls else [get_store(None)]
    missing: RunNotFound | None = None
    for store in stores:
        try:
            run, events = _load_run(ref, store.url)
        except RunNotFound as exc:
            missing = missing or exc
            continue
        return run, events, stores
    assert missing is not None
    raise missing


def listen(host: str, port: int) -> socket.socket:
    """A socket bound to ``host:port`` (0: any free port) and listening, or a clear error."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
        sock.listen(2048)
    except OSError as exc:
        sock.close()
        shown = f"[{host}]" if ":" in host else host
        fail(
            f"cannot listen on {shown}:{port}: {exc.strerror or exc}; pick another --port "
            "(0: any free port) or --host"
        )
    return sock
