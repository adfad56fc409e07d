"""Every error replayable raises, in one place.

The hierarchy::

    ReplayableError                 root: catch this to catch everything of ours
    ├── Unserializable              a value has no canonical form (names its path)
    ├── Divergence                  a replayed call differs from the recording
    ├── FixtureMiss                 a cassette in replay mode has no recording for a call
    ├── SideEffectRefused           a side-effecting boundary was asked to run live
    ├── TraceCorrupt                a trace file or hash chain does not check out
    ├── StoreUnavailable            the store cannot be opened, read or written
    ├── RunNotFound                 no run with that id (or id prefix) in the store
    ├── UnknownBoundary             a boundary name that no registered boundary carries
    ├── UnsupportedClient           an integration was handed an object it cannot instrument
    ├── InvalidOtlp                 an OTLP export request or file that cannot be imported
    ├── NotCaptured                 an imported step lacks the content a replay must serve
    ├── NetworkRefused              a replay tried to reach the network and no boundary served it
    ├── PIIKeyError                 personal data needs a key that is missing or not the run's
    ├── RecordedError               a recorded exception whose type cannot be rebuilt
    ├── CutValue                    a replay was asked to serve a value stored cut (over the cap)
    └── InvalidInput                an argument from outside (an MCP tool call) is malformed

    ReplayableWarning (UserWarning) something was recorded or replayed less faithfully than asked

Every error says what happened, where (run, step address, field path) and what to do next.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

__all__ = [
    "CutValue",
    "Divergence",
    "DivergenceReason",
    "FieldChange",
    "FixtureMiss",
    "InvalidInput",
    "InvalidOtlp",
    "NetworkRefused",
    "NotCaptured",
    "PIIKeyError",
    "RecordedError",
    "ReplayableError",
    "ReplayableWarning",
    "RunNotFound",
    "SideEffectRefused",
    "StoreUnavailable",
    "TraceCorrupt",
    "UnknownBoundary",
    "Unserializable",
    "UnsupportedClient",
]


class ReplayableError(Exception):
    """Root of every error raised by replayable."""


class Unserializable(ReplayableError, TypeError):
    """A value has no canonical JSON form.

    ``path`` names where it sits, e.g. ``args[1].user.session``; ``type_name`` is its type.
    """

    def __init__(self, path: str, type_name: str, hint: str | None = None) -> None:
        self.path = path
        self.type_name = type_name
        msg = f"cannot serialize {path or 'value'}: unsupported type {type_name}"
        msg += (
            f"; {hint}"
            if hint
            else "; convert it first, leave it out of the key with ignore=(...), or pass a codec"
        )
        super().__init__(msg)


@dataclass(frozen=True)
class FieldChange:
    """One field-level difference between a recorded and an actual value."""

    path: str
    change: str  # "changed" | "added" | "removed"
    recorded: Any = None
    actual: Any = None

    def __str__(self) -> str:
        if self.change == "added":
            return f"+ {self.path}: {_short(self.actual)}"
        if self.change == "removed":
            return f"- {self.path}: {_short(self.recorded)}"
        return f"~ {self.path}: {_short(self.recorded)} -> {_short(self.actual)}"


def _short(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


DivergenceReason = Literal["changed", "unexpected", "skipped", "outcome", "error"]
"""Why a replayed call diverged (see :class:`Divergence`)."""


class Divergence(ReplayableError):
    """A replayed call does not match the recording.

    ``reason`` is one of ``changed`` (same step, different input), ``unexpected`` (a call the
    recording does not have), ``skipped`` (a recorded call never reached), ``outcome`` (the
    recorded run raised and the code now returns, found by ``rp.check``) or ``error``.
    """

    def __init__(
        self,
        *,
        reason: DivergenceReason,
        address: str,
        boundary: str,
        recorded_input: Any = None,
        actual_input: Any = None,
        changes: Sequence[FieldChange] = (),
        run_id: str | None = None,
        detail: str | None = None,
    ) -> None:
        self.reason = reason
        self.address = address
        self.boundary = boundary
        self.recorded_input = recorded_input
        self.actual_input = actual_input
        self.changes = list(changes)
        self.run_id = run_id
        self.detail = detail
        super().__init__(self.describe())

    def describe(self) -> str:
        """A multi-line human description: what, where, and the field-level diff."""
        where = f" in run {self.run_id}" if self.run_id else ""
        head = {
            "changed": f"call to {self.boundary} changed at {self.address}{where}",
            "unexpected": f"unexpected call to {self.boundary} at {self.address}{where}"
            " (the recording has no such call)",
            "skipped": f"recorded call to {self.boundary} at {self.address}{where}"
            " was never reached",
        }.get(self.reason, f"{self.reason} at {self.address} ({self.boundary}){where}")
        lines = [head]
        if self.detail:
            lines.append(f"  {self.detail}")
        lines.extend(f"  {c}" for c in self.changes)
        return "\n".join(lines)

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able form, for reports and the viewer."""
        return {
            "reason": self.reason,
            "address": self.address,
            "boundary": self.boundary,
            "detail": self.detail,
            "changes": [
                {"path": c.path, "change": c.change, "recorded": c.recorded, "actual": c.actual}
                for c in self.changes
            ],
        }


class FixtureMiss(ReplayableError):
    """A cassette in replay mode has no recording for this call."""

    def __init__(
        self,
        boundary: str,
        key: str,
        *,
        nearest: Any = None,
        changes: Sequence[FieldChange] = (),
        path: str | None = None,
    ) -> None:
        self.boundary = boundary
        self.key = key
        self.nearest = nearest
        self.changes = list(changes)
        self.path = path
        lines = [f"no recording for {boundary} (key {key[:12]}) in cassette {path or ''}".rstrip()]
        if self.changes:
            lines.append(f"  nearest recorded input: {_short(nearest, 200)}")
            lines.append("  it differs in:")
            lines.extend(f"    {c}" for c in self.changes)
        else:
            lines.append("  the cassette has no call to this boundary")
        lines.append("  re-record with mode='auto' or REPLAYABLE_MODE=record")
        super().__init__("\n".join(lines))


class SideEffectRefused(ReplayableError):
    """A boundary with side effects was named live without ``allow_side_effects=True``."""


class TraceCorrupt(ReplayableError):
    """A trace file or hash chain is damaged; ``line`` / ``seq`` say where."""

    def __init__(self, message: str, *, line: int | None = None, seq: int | None = None) -> None:
        self.line = line
        self.seq = seq
        super().__init__(message)


class StoreUnavailable(ReplayableError):
    """The store cannot be opened, read or written."""


class RunNotFound(ReplayableError):
    """No run with that id or prefix exists in the store."""


class UnknownBoundary(ReplayableError):
    """A name that matches no registered or recorded boundary, or matches several.

    When the name came from an argument (a what-if's ``override``, ``live_from`` or ``fakes``),
    ``option`` is that keyword, ``given`` the name as written and ``detail`` what is wrong
    with it, so a caller that took the name under another label (the CLI's ``--at``) can say
    it in its own words.
    """

    def __init__(
        self,
        message: str,
        *,
        option: str | None = None,
        given: str | None = None,
        detail: str | None = None,
    ) -> None:
        super().__init__(message)
        self.option = option
        self.given = given
        self.detail = message if detail is None else detail


class UnsupportedClient(ReplayableError, TypeError):
    """An integration was given an object it cannot instrument (the message names what it can)."""


class InvalidOtlp(ReplayableError, ValueError):
    """OTLP trace data that cannot be imported: not protobuf or OTLP/JSON, wrong types, a span
    cycle, or over a bound. ``line`` is the file line (1-based) when it came from a file;
    ``status`` the HTTP status the collector answers with (400, or 413 for a bound)."""

    def __init__(self, message: str, *, line: int | None = None, status: int = 400) -> None:
        self.line = line
        self.status = status
        super().__init__(message if line is None else f"line {line}: {message}")


class NotCaptured(ReplayableError):
    """An imported run's step cannot be served: the trace did not capture its content (or not in
    a form replayable can rebuild). ``setting`` names what captures it where the app runs."""

    def __init__(
        self, message: str, *, run_id: str = "", address: str = "", setting: str = ""
    ) -> None:
        self.run_id = run_id
        self.address = address
        self.setting = setting
        super().__init__(message)


class NetworkRefused(ReplayableError):
    """A replay tried to reach the network and no boundary served the call.

    ``target`` is what it tried to reach (``POST http://host/v1/chat/completions``, or a socket
    address), ``step`` the address of the step it happened under (``""`` at the top level).
    Raised where the call was made and again at the replay's exit when the code swallowed it
    (SDKs turn connection errors into their own).
    """

    def __init__(self, message: str, *, target: str, step: str = "") -> None:
        self.target = target
        self.step = step


class PIIKeyError(ReplayableError):
    """Pseudonymizing or revealing personal data needs a key: none is set, it is too short,
    or it is not the key the run was recorded under (``run_id`` names the run, if one)."""

    def __init__(self, message: str, *, run_id: str | None = None) -> None:
        self.run_id = run_id
        super().__init__(message)


class RecordedError(ReplayableError):
    """Stands in for a recorded exception whose original type cannot be rebuilt."""

    def __init__(self, type_name: str, message: str) -> None:
        self.type_name = type_name
        self.message = message
        super().__init__(f"{type_name}: {message}")


class CutValue(ReplayableError):
    """A replay was asked to serve a recorded output that was stored cut: it was over the
    recording's size cap (``rp.record(max_value_bytes=...)``), so only its length, digest and
    first characters were kept. ``boundary``, ``address`` and ``run_id`` name the step;
    ``size`` and ``sha256`` describe the value that was cut."""

    def __init__(
        self, message: str, *, boundary: str, address: str, run_id: str, size: int, sha256: str
    ) -> None:
        self.boundary = boundary
        self.address = address
        self.run_id = run_id
        self.size = size
        self.sha256 = sha256
        super().__init__(message)


class InvalidInput(ReplayableError, ValueError):
    """An argument that came from outside (a tool call of ``replayable mcp``) is malformed: the
    message names the argument, what was given (escaped) and what it must be."""


class ReplayableWarning(UserWarning):
    """Something was recorded or replayed less faithfully than asked (never fatal)."""
