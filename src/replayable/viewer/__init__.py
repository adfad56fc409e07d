"""The local web viewer: ``replayable serve`` (needs ``pip install "replayable[viewer]"``).

Pages for the run list, a run's step tree and timeline, one step in full, and two runs diffed;
a JSON API under ``/api/`` (documented at ``/api/docs``). Binds to 127.0.0.1 by default.

The app (and so Starlette) is imported on first use: the plain-data views in this package
(``_data``) and its templates serve the MCP server and notebooks too.

For example (a sketch, not run as a doctest)::

    from replayable.viewer import create_app
    app = create_app(rp.open_store(".replayable/traces.db"))
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from replayable.viewer._app import create_app

__all__ = ["create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from replayable.viewer._app import create_app

        create_app.__module__ = __name__
        return create_app
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
