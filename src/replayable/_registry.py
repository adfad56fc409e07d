"""The registry of boundaries by full name (public through :func:`replayable.boundary.registry`)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from replayable.boundary import Boundary

__all__ = ["REGISTRY", "register", "registry"]

REGISTRY: dict[str, Boundary] = {}
"""Every boundary defined so far, by full name (read it through :func:`registry`)."""
_LOCK = threading.Lock()


def register(b: Boundary) -> None:
    """Register ``b`` under its name (a later boundary of the same name replaces it)."""
    with _LOCK:
        REGISTRY[b.name] = b


def registry() -> dict[str, Boundary]:
    """A copy of the name -> :class:`Boundary` map of every boundary defined so far."""
    with _LOCK:
        return dict(REGISTRY)
