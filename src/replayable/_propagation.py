"""Cross-service context: the W3C ``traceparent`` and replayable's ``baggage`` entry.

A request made inside a run carries ``traceparent: 00-<trace id>-<span id>-01`` (the run's trace
id, the calling step as the parent span) and a ``baggage`` member
``replayable=1!<run id>!<mode>!<step>`` (step percent-encoded), where mode is ``record``,
``replay`` or ``follow``. A ``follow`` request (a replay asking the callee to replay its own
linked run) adds ``!<source run id>!<source step>``: the recorded caller step the callee's run
is linked to.

Parsing is strict and bounded: a header that is too long, malformed, or names an impossible run
id or step is ignored with a warning (logged), never trusted. Where OpenTelemetry has a current
span, ``traceparent`` is its context, not a second one.
"""

from __future__ import annotations

import hashlib
import logging
import re
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import quote, unquote

__all__ = [
    "BAGGAGE",
    "MAX_HEADER",
    "MAX_STEP",
    "TRACEPARENT",
    "Incoming",
    "Link",
    "Mode",
    "baggage_entry",
    "merge_baggage",
    "new_trace_id",
    "parse",
    "span_id",
    "start_trace_id",
    "traceparent",
]

log = logging.getLogger("replayable")

TRACEPARENT = "traceparent"
BAGGAGE = "baggage"
MAX_HEADER = 8192
"""W3C's limit on a whole ``baggage`` header; a longer header (either one) is ignored."""
MAX_STEP = 2048
"""The longest step address accepted from another service."""
_MAX_MEMBERS = 64

Mode = Literal["record", "replay", "follow"]
_MODES: frozenset[str] = frozenset(("record", "replay", "follow"))
_TRACEPARENT = re.compile(r"00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})")
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_QUOTED = re.compile(r"[A-Za-z0-9%._~-]+")
_KEY = "replayable"


@dataclass(frozen=True, slots=True)
class Link:
    """Where a run came from in another service: the caller's run, the step that called, and
    the service that called (when known)."""

    run: str
    step: str
    service: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form kept in the run's metadata (``metadata["parent"]``)."""
        d: dict[str, Any] = {"run": self.run, "step": self.step}
        if self.service:
            d["service"] = self.service
        return d

    @classmethod
    def from_metadata(cls, value: Any) -> Link | None:
        """The link kept in a run's metadata, or ``None`` when there is none (or it is not one)."""
        if not isinstance(value, dict):
            return None
        run, step, service = value.get("run"), value.get("step"), value.get("service")
        if not isinstance(run, str) or not isinstance(step, str):
            return None
        return cls(run, step, service if isinstance(service, str) else None)


@dataclass(frozen=True, slots=True)
class Incoming:
    """The context a request arrived with (parsed, checked): the W3C trace and, when the caller
    runs replayable, its run, step and mode (and for ``follow``, the recorded step to replay)."""

    trace_id: str | None
    parent_span: str | None
    caller: Link | None
    mode: Mode | None
    source: Link | None = None


def span_id(run_id: str, address: str) -> str:
    """A step's W3C span id: 16 hex digits derived from its run and address (never all zero)."""
    digest = hashlib.sha256(f"{run_id}\n{address}".encode()).hexdigest()[:16]
    return digest if digest != "0" * 16 else "0" * 15 + "1"


def _otel_context() -> tuple[str, str] | None:
    """The current OpenTelemetry span's (trace id, span id) as hex, when one is active."""
    trace = sys.modules.get("opentelemetry.trace")
    if trace is None:  # not imported by anyone: not active
        return None
    ctx = trace.get_current_span().get_span_context()
    if not ctx.is_valid:
        return None
    return f"{ctx.trace_id:032x}", f"{ctx.span_id:016x}"


def new_trace_id() -> str:
    """A random W3C trace id (32 hex digits, never all zero)."""
    import secrets

    while True:
        value = secrets.token_hex(16)
        if value != "0" * 32:
            return value


def start_trace_id() -> str:
    """The trace id a run starting now belongs to: the current OpenTelemetry span's when one is
    active (it is what the run's requests then carry), else a new one."""
    otel = _otel_context()
    return otel[0] if otel is not None else new_trace_id()


def traceparent(trace_id: str, run_id: str, address: str) -> str:
    """The ``traceparent`` of a request made by step ``address`` of run ``run_id``; the current
    OpenTelemetry span's context instead when OpenTelemetry is active."""
    otel = _otel_context()
    if otel is not None:
        return f"00-{otel[0]}-{otel[1]}-01"
    return f"00-{trace_id}-{span_id(run_id, address)}-01"


def baggage_entry(run_id: str, address: str, mode: Mode, source: Link | None = None) -> str:
    """The ``replayable=...`` baggage member for a request made by step ``address``."""
    value = f"1!{run_id}!{mode}!{quote(address, safe='')}"
    if source is not None:
        value += f"!{source.run}!{quote(source.step, safe='')}"
    return f"{_KEY}={value}"


def merge_baggage(existing: str | None, entry: str) -> str:
    """``existing`` baggage (another library's members kept) with our member set to ``entry``."""
    if not existing:
        return entry
    kept = [m for m in existing.split(",") if m.split("=", 1)[0].strip() != _KEY and m.strip()]
    return ",".join([*kept, entry])


def _warn(what: str) -> None:
    log.warning("replayable: ignored a request's propagation headers: %s", what)


def _step(quoted: str) -> str | None:
    """A step address from its quoted form (``""``: the run's root), or ``None``."""
    if not quoted:
        return ""
    if len(quoted) > 3 * MAX_STEP or not _QUOTED.fullmatch(quoted):
        return None
    try:
        step = unquote(quoted, errors="strict")
    except UnicodeDecodeError:  # %FF: percent-encoded bytes that are not UTF-8
        return None
    if len(step) > MAX_STEP or any(ord(c) < 32 or ord(c) == 127 for c in step):
        return None
    return step


def _member(header: str) -> str | None:
    """The value of the one ``replayable`` member of a baggage header (``""``: none); ``None``
    when the header is malformed."""
    members = header.split(",")
    if len(members) > _MAX_MEMBERS:
        return None
    found: list[str] = []
    for member in members:
        key, eq, rest = member.partition("=")
        if key.strip() == _KEY:
            if not eq:
                return None
            found.append(rest.split(";", 1)[0].strip())
    if len(found) > 1:
        return None
    return found[0] if found else ""


def _links(value: str, service: str | None) -> tuple[Link | None, str | None, Link | None]:
    """The caller's link, the mode and (following) the source's link in a replayable baggage
    member's value; the caller is None when the member is malformed."""
    parts = value.split("!")
    caller = source = None
    mode: str | None = None
    if len(parts) in (4, 6) and parts[0] == "1" and parts[2] in _MODES:
        run, mode = parts[1], parts[2]
        step = _step(parts[3])
        if _RUN_ID.fullmatch(run) and ".." not in run and step is not None:
            caller = Link(run, step, None)
        if len(parts) == 6:
            src_step = _step(parts[5])
            if _RUN_ID.fullmatch(parts[4]) and ".." not in parts[4] and src_step is not None:
                source = Link(parts[4], src_step, service)
            else:
                caller = None
        if (mode == "follow") != (source is not None):
            caller = None
    return caller, mode, source


def parse(headers: Mapping[str, str], service: str | None = None) -> Incoming | None:
    """The checked context of a request's headers (lower-case names), or ``None`` when it
    carries none. A malformed, oversized or contradictory header is ignored with a warning."""
    tp = headers.get(TRACEPARENT)
    bg = headers.get(BAGGAGE)
    if tp is None and bg is None:
        return None
    trace_id = parent_span = None
    if tp is not None:
        m = _TRACEPARENT.fullmatch(tp.strip()) if len(tp) <= 128 else None
        if m is None or m.group(1) == "0" * 32 or m.group(2) == "0" * 16:
            _warn("traceparent is not a W3C version-00 traceparent")
        else:
            trace_id, parent_span = m.group(1), m.group(2)
    if bg is None:
        return Incoming(trace_id, parent_span, None, None) if trace_id else None
    if len(bg) > MAX_HEADER:
        _warn(f"baggage is longer than {MAX_HEADER} characters")
        return Incoming(trace_id, parent_span, None, None) if trace_id else None
    value = _member(bg)
    if value is None:
        _warn("baggage is malformed (more than one replayable member, or too many members)")
        return Incoming(trace_id, parent_span, None, None) if trace_id else None
    if not value:
        return Incoming(trace_id, parent_span, None, None) if trace_id else None
    caller, mode, source = _links(value, service)
    if caller is None:
        _warn("the replayable baggage member is malformed")
        return Incoming(trace_id, parent_span, None, None) if trace_id else None
    if trace_id is None:
        _warn("replayable baggage without a valid traceparent")
        return None
    return Incoming(trace_id, parent_span, caller, mode, source)  # type: ignore[arg-type]
