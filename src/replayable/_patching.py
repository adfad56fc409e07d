"""Process-wide patches held only while someone needs them (a record or a replay is active).

A :class:`Patches` set is installed by its first user and removed by its last, under one lock,
so two runs in two threads share one installation and the process is left as it was found.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

__all__ = ["Patches"]

_MISSING = object()


@dataclass
class Patches:
    """Attributes to replace while in use: ``make()`` returns ``(owner, name, new)`` triples
    (called at each installation, so it sees the modules imported by then)."""

    make: Callable[[], list[tuple[Any, str, Any]]]
    _users: int = 0
    _saved: list[tuple[Any, str, Any]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def acquire(self) -> None:
        """One more user; the first one installs the patches."""
        with self._lock:
            self._users += 1
            if self._users > 1:
                return
            for owner, name, new in self.make():
                self._saved.append((owner, name, owner.__dict__.get(name, _MISSING)))
                setattr(owner, name, new)

    def release(self) -> None:
        """One user fewer; the last one puts every attribute back as it was."""
        with self._lock:
            self._users -= 1
            if self._users > 0:
                return
            self._users = 0
            for owner, name, old in reversed(self._saved):
                if old is _MISSING:
                    delattr(owner, name)
                else:
                    setattr(owner, name, old)
            self._saved.clear()

    @property
    def installed(self) -> bool:
        """True while at least one user holds the patches."""
        return self._users > 0
