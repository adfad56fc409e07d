"""Thread pools keep the run's context: ``loop.run_in_executor`` carries it while a run is active.

``asyncio.to_thread`` copies the caller's context into the worker thread; ``run_in_executor``
does not, and frameworks run their sync tools through it (AutoGen's ``FunctionTool``, among
others), so a boundary called there would see no run. While a record or replay is active,
:data:`EXECUTOR` wraps the callable handed to ``run_in_executor`` with a copy of the caller's
context when the caller is inside a run, as :func:`replayable.bind` would; outside a run it
passes the callable as it is. Installed by the first active run, removed by the last.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
from collections.abc import Callable
from typing import Any

from replayable._patching import Patches
from replayable.context import SESSION

__all__ = ["EXECUTOR"]


def _carrying(original: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(original)
    def run_in_executor(self: Any, executor: Any, func: Callable[..., Any], *args: Any) -> Any:
        if SESSION.get() is not None:
            func = functools.partial(contextvars.copy_context().run, func)
        return original(self, executor, func, *args)

    return run_in_executor


def _make() -> list[tuple[Any, str, Any]]:
    loop_cls = asyncio.BaseEventLoop
    return [(loop_cls, "run_in_executor", _carrying(loop_cls.run_in_executor))]


EXECUTOR = Patches(_make)
"""The ``run_in_executor`` patch, held while a run is active."""
