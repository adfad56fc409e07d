"""replayable: record LLM-agent runs at their semantic boundaries and replay them offline.

>>> import replayable as rp
>>> deleted = []
>>> @rp.boundary(kind="tool", side_effects=True)
... def delete_record(record_id: int) -> bool:
...     deleted.append(record_id)
...     return True
>>> def agent(request: str) -> bool:
...     return delete_record(7)
>>> with rp.record(name="support") as run:
...     agent("delete Bob's record")
True
>>> with rp.replay(run.id) as r:      # delete_record is served, never called
...     agent("delete Bob's record")
True
>>> deleted, r.ok
([7], True)
"""

from __future__ import annotations

import os as _os

from replayable import redact
from replayable._check import CheckReport, check
from replayable._drift import DriftReport, drift
from replayable._exports import publish, unshadow
from replayable._otlp import import_otlp
from replayable._pii import PII
from replayable._rundiff import RunDiff, diff
from replayable._sampling import Keep, flag
from replayable._version import __version__
from replayable.boundary import Boundary, Codec, boundary, get_boundary, registry
from replayable.canonical import canonicalize, key
from replayable.cassette import Cassette, cassette
from replayable.clock import now, random, uuid4
from replayable.context import annotate, bind
from replayable.errors import (
    CutValue,
    Divergence,
    FieldChange,
    FixtureMiss,
    InvalidOtlp,
    NetworkRefused,
    NotCaptured,
    PIIKeyError,
    RecordedError,
    ReplayableError,
    ReplayableWarning,
    RunNotFound,
    SideEffectRefused,
    StoreUnavailable,
    TraceCorrupt,
    UnknownBoundary,
    Unserializable,
    UnsupportedClient,
)
from replayable.integrations import instrument
from replayable.record import flush, record
from replayable.replay import Replay, replay
from replayable.store import Store, open_store
from replayable.trace import Event, Run

__all__ = [  # noqa: RUF022 - plain sorted order (tests/test_exported_members.py)
    "Boundary",
    "Cassette",
    "CheckReport",
    "Codec",
    "CutValue",
    "Divergence",
    "DriftReport",
    "Event",
    "FieldChange",
    "FixtureMiss",
    "InvalidOtlp",
    "Keep",
    "NetworkRefused",
    "NotCaptured",
    "PII",
    "PIIKeyError",
    "RecordedError",
    "Replay",
    "ReplayableError",
    "ReplayableWarning",
    "Run",
    "RunDiff",
    "RunNotFound",
    "SideEffectRefused",
    "Store",
    "StoreUnavailable",
    "TraceCorrupt",
    "UnknownBoundary",
    "Unserializable",
    "UnsupportedClient",
    "__version__",
    "annotate",
    "bind",
    "boundary",
    "canonicalize",
    "cassette",
    "check",
    "diff",
    "drift",
    "flag",
    "flush",
    "get_boundary",
    "import_otlp",
    "instrument",
    "key",
    "now",
    "open_store",
    "random",
    "record",
    "redact",
    "registry",
    "replay",
    "uuid4",
]

_SUBMODULES = (
    "boundary",
    "canonical",
    "cassette",
    "cli",
    "clock",
    "context",
    "demo",
    "errors",
    "integrations",
    "mcp_server",
    "record",
    "redact",
    "replay",
    "store",
    "testing",
    "trace",
    "viewer",
)
"""The package's public modules and subpackages (``import replayable.store``); every other
module is private (its name starts with ``_``)."""


publish(globals())
unshadow(globals(), ("boundary", "cassette", "record", "replay"))


def __dir__() -> list[str]:
    """The public API and the public modules: not the private modules imported on the way."""
    return sorted({*__all__, *_SUBMODULES})


if _os.environ.get("REPLAYABLE_AUTO_INSTRUMENT", "").strip().lower() in ("1", "true", "yes"):
    instrument()  # every supported library, imported now or later
