"""The ``replayable`` command line. The only place (with the viewer) that formats for humans.

Each command group lives in its own module and registers itself on :data:`main` on import.
"""

from __future__ import annotations

from replayable.cli import _core, _demo, _store, _testing, _views  # noqa: F401  (registration)
from replayable.cli._common import main

__all__ = ["main"]
