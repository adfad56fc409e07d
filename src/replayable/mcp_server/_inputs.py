"""Checking what a tool call hands the server: run ids, module and boundary names, sizes.

Every check raises :class:`InvalidInput` naming the argument, what was given (escaped, cut)
and what it must be; nothing a tool call sends reaches a store, a path or an import unchecked.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar

from replayable.errors import InvalidInput, TraceCorrupt
from replayable.store.base import RUN_STATUSES, RunStatus, parse_since
from replayable.trace import check_run_id

__all__ = [
    "boundary_name",
    "boundary_names",
    "choice",
    "exception_spec",
    "fake_specs",
    "field_name",
    "kind_names",
    "module_names",
    "number",
    "period",
    "run_id",
    "shown",
    "status",
    "tags",
    "text",
]

T = TypeVar("T")

_IDENT = r"[A-Za-z_][A-Za-z0-9_]*"
_MODULE = re.compile(rf"{_IDENT}(?:\.{_IDENT})*")
_BOUNDARY = re.compile(
    rf"(?:{_IDENT}(?:\.{_IDENT})*:)?[A-Za-z_<][A-Za-z0-9_.<>]*(?:#[1-9][0-9]{{0,6}})?"
)
MAX_NAME = 200
MAX_NAMES = 50


def shown(value: Any, limit: int = 80) -> str:
    """A given value as an error message shows it: repr (so control characters are escapes),
    cut to ``limit`` characters."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 1] + "…"


def run_id(value: Any, name: str = "run_id") -> str:
    """A run id or unique prefix: letters, digits, ``.``, ``_``, ``-``; never a path or a
    trace file name."""
    try:
        check_run_id(value)
    except TraceCorrupt:
        raise InvalidInput(
            f"{name}={shown(value)} is not a run id: a run id is 1-128 letters, digits, '.', "
            "'_' and '-' starting with a letter or digit (list_runs shows them)"
        ) from None
    if value.endswith(".jsonl"):
        raise InvalidInput(f"{name}={shown(value)}: trace files are not read here, only run ids")
    return str(value)


def module_names(values: Iterable[Any], name: str = "modules") -> tuple[str, ...]:
    """Dotted module names (``my_agent``, ``app.agents.support``): importing one runs its
    code, so paths, file names with slashes and anything else are refused."""
    out = tuple(values)
    if not out:
        raise InvalidInput(
            f"{name} is empty: name the module(s) defining the agent's boundaries, as for "
            "`replayable replay --import` (show_run says which one the run's agent lives in)"
        )
    if len(out) > MAX_NAMES:
        raise InvalidInput(f"{name}: at most {MAX_NAMES} modules, not {len(out)}")
    for value in out:
        if not isinstance(value, str) or len(value) > MAX_NAME or not _MODULE.fullmatch(value):
            raise InvalidInput(
                f"{name}: {shown(value)} is not a module name: give a dotted name importable "
                "from the server's working directory (my_agent, app.agents.support), never a "
                "path"
            )
    return out


def boundary_name(value: Any, name: str) -> str:
    """A boundary as ``live=``/``at=`` take it: ``name``, ``module:qualname``, ``name#N``."""
    if not isinstance(value, str) or len(value) > MAX_NAME or not _BOUNDARY.fullmatch(value):
        raise InvalidInput(
            f"{name}: {shown(value)} is not a boundary name: use a bare name (delete_record), "
            "module:qualname, or name#N for its N-th recorded call"
        )
    return value


def boundary_names(values: Iterable[Any], name: str) -> tuple[str, ...]:
    """Several boundary names (see :func:`boundary_name`)."""
    out = tuple(values)
    if len(out) > MAX_NAMES:
        raise InvalidInput(f"{name}: at most {MAX_NAMES} names, not {len(out)}")
    return tuple(boundary_name(v, name) for v in out)


def fake_specs(values: Mapping[str, Any] | None) -> tuple[str, ...]:
    """``{"delete_record": "my_agent.fakes:delete_record"}`` as ``--fake NAME=module:fn``."""
    out = []
    for key, target in (values or {}).items():
        boundary_name(key, "fakes")
        module, sep, attr = str(target).partition(":") if isinstance(target, str) else ("", "", "")
        if not sep or not _MODULE.fullmatch(module) or not _MODULE.fullmatch(attr):
            raise InvalidInput(
                f"fakes[{shown(key)}]: {shown(target)} is not module:function (a dotted module "
                "importable from the server's working directory, then the function's name)"
            )
        out.append(f"{key}={target}")
    if len(out) > MAX_NAMES:
        raise InvalidInput(f"fakes: at most {MAX_NAMES}, not {len(out)}")
    return tuple(out)


def number(value: Any, name: str, low: int, high: int) -> int:
    """An integer within ``[low, high]``."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise InvalidInput(f"{name}={shown(value)}: expected a whole number from {low} to {high}")
    return value


def text(value: Any, name: str, limit: int = MAX_NAME) -> str | None:
    """Optional short text (a run name, a filter)."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > limit:
        raise InvalidInput(f"{name}={shown(value)}: expected text of at most {limit} characters")
    return value


def status(value: Any) -> RunStatus | None:
    """A run status filter."""
    if value is None or value == "":
        return None
    for s in RUN_STATUSES:
        if value == s:
            return s
    raise InvalidInput(f"status={shown(value)}: use one of {', '.join(RUN_STATUSES)}")


def period(value: Any, name: str = "since") -> float | None:
    """``1h``, ``30m``, ``2d`` or an ISO date/time, as epoch seconds."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or len(value) > 64:
        raise InvalidInput(f"{name}={shown(value)}: use 1h, 30m, 2d or an ISO date")
    try:
        return parse_since(value)
    except ValueError as exc:
        raise InvalidInput(f"{name}={shown(value)}: {exc}") from None


def tags(value: Mapping[str, Any] | None) -> dict[str, str] | None:
    """Tag filters, ``{"key": "value"}``."""
    if not value:
        return None
    if len(value) > MAX_NAMES:
        raise InvalidInput(f"tags: at most {MAX_NAMES}, not {len(value)}")
    for k, v in value.items():
        if not isinstance(v, str) or len(k) > MAX_NAME or len(v) > MAX_NAME:
            raise InvalidInput(f"tags[{shown(k)}]={shown(v)}: tags map names to short text")
    return dict(value)


def choice(value: Any, name: str, options: tuple[T, ...]) -> T:
    """One of ``options``."""
    for option in options:
        if value == option:
            return option
    raise InvalidInput(f"{name}={shown(value)}: use one of {', '.join(map(str, options))}")


def field_name(value: Any) -> str | None:
    """Which value of a step to read whole: ``input``, ``output``, ``error`` or ``meta``."""
    if value is None or value == "":
        return None
    return choice(value, "field", ("input", "output", "error", "meta"))


def kind_names(values: Iterable[Any]) -> tuple[str, ...]:
    """Boundary kinds (``llm``, ``tool``, ...)."""
    out = tuple(values)
    if len(out) > MAX_NAMES:
        raise InvalidInput(f"live_kinds: at most {MAX_NAMES}, not {len(out)}")
    for value in out:
        if not isinstance(value, str) or len(value) > 50 or not re.fullmatch(_IDENT, value):
            raise InvalidInput(f"live_kinds: {shown(value)} is not a kind (llm, tool, ...)")
    return out


def exception_spec(value: Any) -> str:
    """``TYPE[:MESSAGE]``: a builtin exception (``TimeoutError:model timed out``) or
    ``module:Class[:MESSAGE]`` with a dotted module name."""
    if not isinstance(value, str) or not 0 < len(value) <= 2000:
        raise InvalidInput(f"set_error={shown(value)}: use TYPE[:MESSAGE]")
    head = value.partition(":")[0]
    if not _MODULE.fullmatch(head):
        raise InvalidInput(
            f"set_error={shown(value)}: use TYPE[:MESSAGE] with a builtin exception "
            "(TimeoutError:model timed out) or module:Class[:MESSAGE] with a dotted module name"
        )
    return value
