"""Size bounds: a recorded value over the cap is stored cut.

A call's input or output whose stored JSON (redacted, pseudonymized) is longer than the cap
(``rp.record(max_value_bytes=...)``, else ``$REPLAYABLE_MAX_VALUE_BYTES``, else 1 MiB) is
stored as a marker instead: ``{"$cut": {"bytes": N, "sha256": "...", "preview": "..."}}`` (the
full JSON's length and digest, and its first characters), and the event's metadata lists what
was cut (``meta["cut"] == ["output"]``), which is how a reader tells a cut value from a value
that happens to look like the marker.

The call's key is computed over the whole input before it is cut, so two different inputs
over the cap never share a key, and a replay matches a cut input by key (its bytes are gone).
A replay refuses to serve a cut output (:class:`~replayable.errors.CutValue`, raised by the
replay's server part, :class:`replayable._replayer.RecordedServer`) unless the boundary opts in
with ``@rp.boundary(serve_cut=True)``, which serves the marker as it is. A replay's own steps
are cut by the same cap; a served output is stored as a reference to the recorded one, never
cut again.
"""

from __future__ import annotations

import hashlib
import os
from typing import TYPE_CHECKING, Any

import orjson

from replayable.errors import CutValue

if TYPE_CHECKING:
    from replayable.trace import Event

__all__ = [
    "CUT",
    "DEFAULT_MAX_VALUE_BYTES",
    "MAX_VALUE_ENV",
    "META",
    "PREVIEW_CHARS",
    "cut",
    "cut_output",
    "describe",
    "info",
    "label",
    "max_value_bytes",
    "refusal",
    "was_cut",
]

CUT = "$cut"
"""The marker key a cut value is stored under."""
META = "cut"
"""The event metadata key listing what was cut (``"input"``, ``"output"``)."""
DEFAULT_MAX_VALUE_BYTES = 1 << 20
MAX_VALUE_ENV = "REPLAYABLE_MAX_VALUE_BYTES"
PREVIEW_CHARS = 200


def max_value_bytes(value: int | None = None) -> int:
    """The cap a run records under: ``value`` as given, else ``$REPLAYABLE_MAX_VALUE_BYTES``,
    else 1 MiB."""
    where = "max_value_bytes"
    if value is None:
        text = os.environ.get(MAX_VALUE_ENV, "").strip()
        if not text:
            return DEFAULT_MAX_VALUE_BYTES
        where = f"${MAX_VALUE_ENV}"
        try:
            value = int(text)
        except ValueError:
            raise ValueError(
                f"{where}={text!r}: set a size in bytes (1048576 for 1 MiB), or unset it"
            ) from None
    if isinstance(value, bool) or not isinstance(value, int) or value < 1024:
        raise ValueError(f"{where}={value!r}: the cap is a whole number of bytes, 1024 or more")
    return value


def cut(data: bytes) -> bytes:
    """The marker stored for ``data`` (a value's JSON, over the cap)."""
    preview = data[: PREVIEW_CHARS * 4].decode("utf-8", "ignore")[:PREVIEW_CHARS]
    return orjson.dumps(
        {
            CUT: {
                "bytes": len(data),
                "sha256": hashlib.sha256(data).hexdigest(),
                "preview": preview,
            }
        }
    )


def info(value: Any) -> dict[str, Any] | None:
    """The marker's fields (``bytes``, ``sha256``, ``preview``) when ``value`` is a stored cut
    marker (check the event's ``meta["cut"]`` first: a recorded value may look like one)."""
    if isinstance(value, dict) and len(value) == 1:
        inner = value.get(CUT)
        if isinstance(inner, dict) and isinstance(inner.get("bytes"), int):
            return inner
    return None


def label(meta: dict[str, Any], which: str, value: Any) -> str | None:
    """:func:`describe` of an event's ``which`` (``"input"``, ``"output"``) when it was stored
    cut (its metadata says so), else None."""
    cut = meta.get(META)
    if isinstance(cut, list) and which in cut:
        return describe(value)
    return None


def describe(value: Any) -> str:
    """One line for people: ``cut at record time: 2,345,678 bytes, sha256 1a2b3c4d5e6f…``."""
    fields = info(value)
    if fields is None:
        return "cut at record time"
    return f"cut at record time: {fields['bytes']:,} bytes, sha256 {str(fields['sha256'])[:12]}…"


def was_cut(ev: Event, which: str) -> bool:
    """Whether ``ev``'s ``which`` (``"input"``, ``"output"``) was stored cut."""
    if not ev.has_meta(META):
        return False
    cut = ev.meta.get(META)
    return isinstance(cut, list) and which in cut and info(getattr(ev, which)) is not None


def cut_output(ev: Event) -> dict[str, Any] | None:
    """The marker's fields when ``ev``'s output was stored cut (its metadata says so and the
    output is the marker), else None. Cheap when nothing was cut: one look at the stored
    metadata's bytes."""
    return info(ev.output) if was_cut(ev, "output") else None


def refusal(ev: Event, boundary: str, run_id: str, fields: dict[str, Any]) -> CutValue:
    """The error a replay raises instead of serving ``ev``'s cut output (``fields``: the
    marker's, from :func:`cut_output`)."""
    size = int(fields["bytes"])
    digest = str(fields.get("sha256", ""))
    return CutValue(
        f"cannot serve {boundary} at {ev.address} of run {run_id}: its output was cut at record "
        f"time ({size:,} bytes, over the recording's size cap; sha256 {digest[:12]}…), so the "
        "recording does not hold it. Name the boundary in live=[...] to run it, re-record "
        "with a larger rp.record(max_value_bytes=...), or let the boundary take the marker "
        "as its output with @rp.boundary(serve_cut=True)",
        boundary=boundary,
        address=ev.address,
        run_id=run_id,
        size=size,
        sha256=digest,
    )
