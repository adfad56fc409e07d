"""Warnings that point at the user's line, however deep in replayable they are raised.

A fixed ``stacklevel`` counts frames from the ``warnings.warn`` call, so it goes wrong as soon as
a call takes another path to the same place (``rp.replay`` through its callable module, an SDK
call that reaches replayable through the SDK's own layers and httpx, a context manager entered
through ``contextlib``): the warning then names a line of replayable or of a library, which tells
the user nothing. :func:`warn` walks out past replayable's frames and then past library frames
(the standard library, site-packages, the import machinery) to the first frame of the user's
own code. When every frame outside replayable is a library's (an application installed into
site-packages), it names the first frame outside replayable.
"""

from __future__ import annotations

import os
import sys
import sysconfig
import warnings
from types import FrameType

from replayable.errors import ReplayableWarning

__all__ = ["user_stacklevel", "warn"]

_PACKAGE = os.path.dirname(os.path.abspath(__file__)) + os.sep
_PATHS = sysconfig.get_paths()
_LIBRARIES = tuple(
    sorted(
        {
            os.path.abspath(_PATHS[key]) + os.sep
            for key in ("stdlib", "platstdlib", "purelib", "platlib")
            if _PATHS.get(key)
        }
    )
)


def _ours(frame: FrameType) -> bool:
    return os.path.abspath(frame.f_code.co_filename).startswith(_PACKAGE)


def _library(frame: FrameType) -> bool:
    filename = frame.f_code.co_filename
    return filename.startswith("<frozen") or os.path.abspath(filename).startswith(_LIBRARIES)


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a warning raised by this function's caller name the user's
    line (1 is the caller itself): see the module."""
    here = sys._getframe(1)  # the caller of user_stacklevel: warn(), or code in replayable
    level = 1
    while here.f_back is not None and _ours(here):
        here, level = here.f_back, level + 1
    outside = level
    frame: FrameType | None = here
    while frame is not None and _library(frame):
        frame, level = frame.f_back, level + 1
    return level if frame is not None else outside


def warn(message: str, category: type[Warning] = ReplayableWarning) -> None:
    """``warnings.warn(message, category)`` attributed to the user's line (see the module)."""
    warnings.warn(message, category, stacklevel=user_stacklevel())
