"""Clock and randomness that are recorded in a run and served back in its replay.

``now()``, ``random()`` and ``uuid4()`` are boundaries of kind ``clock``: outside a run they are the
plain standard-library calls; in a replay they return what the recording saw, so "next Tuesday"
and a sampled seed resolve the same way.
"""

from __future__ import annotations

import datetime as _dt
import random as _random
import uuid as _uuid
from typing import Any

from replayable.boundary import boundary

__all__ = ["now", "random", "uuid4"]


class _DatetimeCodec:
    def encode(self, value: _dt.datetime) -> str:
        return value.isoformat()

    def decode(self, data: Any) -> _dt.datetime:
        return _dt.datetime.fromisoformat(str(data))


class _UUIDCodec:
    def encode(self, value: _uuid.UUID) -> str:
        return str(value)

    def decode(self, data: Any) -> _uuid.UUID:
        return _uuid.UUID(str(data))


@boundary(name="replayable:now", kind="clock", codec=_DatetimeCodec())
def now() -> _dt.datetime:
    """The current time, timezone-aware UTC; recorded and replayed.

    >>> now().tzinfo
    datetime.timezone.utc
    """
    return _dt.datetime.now(_dt.UTC)


@boundary(name="replayable:random", kind="clock")
def random() -> float:
    """A float in [0, 1) from the system's randomness; recorded and replayed.

    >>> 0.0 <= random() < 1.0       # in a replay: the value recorded at this point
    True
    """
    return _random.SystemRandom().random()


@boundary(name="replayable:uuid4", kind="clock", codec=_UUIDCodec())
def uuid4() -> _uuid.UUID:
    """A random UUID; recorded and replayed.

    >>> uuid4().version             # in a replay: the id recorded at this point
    4
    """
    return _uuid.uuid4()
