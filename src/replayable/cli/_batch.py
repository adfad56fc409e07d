"""What the commands over many runs share: which runs (``RUN...``,
``--since/--name/--tag/--status/--limit/--sample/--seed``, the options and meanings of
``replayable check``) and how results leave (``--json``, ``--junit F``)."""

from __future__ import annotations

import functools
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, overload

import click

from replayable.cli._common import valid_period
from replayable.store.base import RunStatus

__all__ = [
    "JUnitCase",
    "Selection",
    "output_options",
    "parse_tags",
    "selection_options",
    "valid_tags",
    "write_junit",
]

F = TypeVar("F", bound=Callable[..., Any])


@dataclass(frozen=True, slots=True)
class Selection:
    """The runs a command was asked about: ids/files, and a query over the store."""

    refs: tuple[str, ...]
    since: str | None
    name: str | None
    tags: dict[str, str]
    status: RunStatus | None
    limit: int | None
    sample: int | None
    seed: int | None

    @property
    def empty(self) -> bool:
        """True when nothing at all was asked for."""
        return not self.refs and not any((self.since, self.name, self.tags, self.status))


def parse_tags(values: Iterable[str]) -> dict[str, str]:
    """``--tag key=value`` options as a dict; anything without ``=`` is a usage error."""
    out = {}
    for tag in values:
        if "=" not in tag:
            raise click.BadParameter(f"{tag!r}: use key=value", param_hint="--tag")
        k, v = tag.split("=", 1)
        out[k] = v
    return out


def valid_tags(
    ctx: click.Context, param: click.Parameter, value: tuple[str, ...]
) -> tuple[str, ...]:
    """Click callback checking ``--tag key=value`` options while the command line is parsed."""
    parse_tags(value)
    return value


@overload
def selection_options(fn: F, /) -> F: ...


@overload
def selection_options(*, runs: bool = True) -> Callable[[F], F]: ...


def selection_options(fn: F | None = None, /, *, runs: bool = True) -> F | Callable[[F], F]:
    """``RUN...`` plus ``--since/--name/--tag/--status/--limit/--sample/--seed``, passed on as
    ``selection``; ``runs=False`` leaves out ``RUN...`` (a command that only queries)."""

    with_runs = runs

    def decorate(fn: F) -> F:
        @functools.wraps(fn)
        def wrapped(
            *args: Any,
            since: str | None,
            name: str | None,
            tags: tuple[str, ...],
            status: RunStatus | None,
            limit: int | None,
            sample: int | None,
            seed: int | None,
            runs: tuple[str, ...] = (),
            **kwargs: Any,
        ) -> Any:
            if seed is not None and sample is None:
                raise click.UsageError("--seed goes with --sample N")
            selection = Selection(runs, since, name, parse_tags(tags), status, limit, sample, seed)
            return fn(*args, selection=selection, **kwargs)

        decorators = [
            click.option(
                "--since",
                callback=valid_period,
                help="Only runs started within this period (1h, 30m, 7d) or after a date.",
            ),
            click.option("--name", help="Only runs with this name."),
            click.option(
                "--tag",
                "tags",
                multiple=True,
                callback=valid_tags,
                help="Only runs with this tag (key=value); repeatable.",
            ),
            click.option(
                "--status",
                type=click.Choice(["ok", "error", "diverged"]),
                help="Only runs that ended with this status.",
            ),
            click.option(
                "--limit", type=click.IntRange(min=1), help="At most this many runs, newest first."
            ),
            click.option("--sample", type=click.IntRange(min=1), help="A random sample of N runs."),
            click.option("--seed", type=int, help="Seed of --sample, for the same sample again."),
        ]
        if with_runs:
            decorators.insert(0, click.argument("runs", nargs=-1))
        out: Any = wrapped
        for deco in reversed(decorators):
            out = deco(out)
        return out  # type: ignore[no-any-return]

    return decorate if fn is None else decorate(fn)


def output_options(fn: F) -> F:
    """``--json`` (print a JSON report) and ``--junit FILE`` (write JUnit XML for CI)."""
    fn = click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")(fn)
    return click.option(
        "--junit",
        "junit",
        type=click.Path(dir_okay=False, writable=True),
        help="Also write a JUnit XML report to this file (one test case per item).",
    )(fn)


@dataclass(frozen=True, slots=True)
class JUnitCase:
    """One test case: ``status`` is ``passed``, ``failed`` or ``skipped``."""

    classname: str
    name: str
    status: str
    message: str = ""
    text: str = ""
    seconds: float = 0.0


def write_junit(path: str | Path, suite: str, cases: Iterable[JUnitCase]) -> Path:
    """Write one JUnit XML test suite (what CI systems read) and return its path."""
    cases = list(cases)
    failures = sum(1 for c in cases if c.status == "failed")
    skipped = sum(1 for c in cases if c.status == "skipped")
    root = ET.Element("testsuites")
    node = ET.SubElement(
        root,
        "testsuite",
        name=suite,
        tests=str(len(cases)),
        failures=str(failures),
        skipped=str(skipped),
        errors="0",
        time=f"{sum(c.seconds for c in cases):.3f}",
    )
    for c in cases:
        case = ET.SubElement(
            node, "testcase", classname=c.classname, name=c.name, time=f"{c.seconds:.3f}"
        )
        if c.status == "failed":
            ET.SubElement(case, "failure", message=c.message).text = c.text or c.message
        elif c.status == "skipped":
            ET.SubElement(case, "skipped", message=c.message)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    ET.ElementTree(root).write(out, encoding="utf-8", xml_declaration=True)
    return out
