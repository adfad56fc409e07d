"""Instrument every supported library: those imported already and those imported later.

:func:`instrument_all` (``rp.instrument()`` with no argument, or ``REPLAYABLE_AUTO_INSTRUMENT=1``
at ``import replayable``) hands each supported library that is imported to its integration's
``instrument_library(module)``, which makes every object the library creates from then on
record and replay (a wrapped constructor, a patched module function). A library imported
later is handed over as soon as its import finishes, through a :data:`sys.meta_path` finder
that wraps the library's loader (as OpenTelemetry's auto-instrumentation does), so the order
of imports and instrumenting stops mattering. Calling it again does nothing more.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import sys
import threading
from collections.abc import Callable, Mapping, Sequence
from types import ModuleType
from typing import Any

from replayable._warn import warn

__all__ = ["after_init", "install", "installed_libraries"]

_LOCK = threading.RLock()
_DONE: set[str] = set()
_HOOKS: dict[str, Callable[[ModuleType], None]] = {}
_FINDER: _Finder | None = None


_BUILDING = threading.local()


def after_init(cls: type, then: Callable[[Any], None]) -> None:
    """Make ``cls`` (and its subclasses) call ``then(instance)`` when construction finishes
    (idempotent). Nested ``__init__`` calls on one instance (a subclass calling
    ``super().__init__``, both wrapped) run one ``then``: the outermost one's, at its end."""
    init = cls.__dict__.get("__init__")
    if init is None or getattr(init, "__replayable_after__", False):
        return

    @functools.wraps(init)
    def __init__(self: Any, *args: Any, **kwargs: Any) -> None:
        building: set[int] = _BUILDING.__dict__.setdefault("ids", set())
        outer = id(self) not in building
        building.add(id(self))
        try:
            init(self, *args, **kwargs)
        finally:
            if outer:
                building.discard(id(self))
        if outer:
            then(self)

    __init__.__replayable_after__ = True  # type: ignore[attr-defined]
    type.__setattr__(cls, "__init__", __init__)


def installed_libraries() -> list[str]:
    """The libraries instrumented so far (top-level module names), in order."""
    return sorted(_DONE)


def _apply(name: str) -> None:
    with _LOCK:
        module = sys.modules.get(name)
        hook = _HOOKS.get(name)
        if module is None or hook is None or name in _DONE:
            return
        _DONE.add(name)
    try:
        hook(module)
    except Exception as exc:  # an import must never fail because instrumenting it did
        warn(
            f"replayable could not instrument {name} ({type(exc).__name__}: {exc}); its calls "
            "are not recorded. Instrument its objects with rp.instrument(obj) instead",
        )


class _Loader(importlib.abc.Loader):
    """The library's own loader, then the hook once the module has executed."""

    def __init__(self, loader: Any, name: str) -> None:
        self.loader = loader
        self.name = name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        create: Any = getattr(self.loader, "create_module", None)
        return None if create is None else create(spec)

    def exec_module(self, module: ModuleType) -> None:
        self.loader.exec_module(module)
        _apply(self.name)

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.loader, attr)


class _Finder(importlib.abc.MetaPathFinder):
    """Finds nothing itself: wraps the loader of a watched library another finder found."""

    def __init__(self) -> None:
        self.busy = threading.local()

    def find_spec(
        self,
        fullname: str,
        path: Sequence[str] | None,
        target: ModuleType | None = None,
    ) -> importlib.machinery.ModuleSpec | None:
        if fullname not in _HOOKS or fullname in _DONE or getattr(self.busy, "on", False):
            return None
        self.busy.on = True
        try:
            for finder in sys.meta_path:
                if finder is self or not hasattr(finder, "find_spec"):
                    continue
                spec: importlib.machinery.ModuleSpec | None = finder.find_spec(
                    fullname, path, target
                )
                if spec is not None:
                    break
            else:
                return None
        finally:
            self.busy.on = False
        if spec.loader is not None and hasattr(spec.loader, "exec_module"):
            spec.loader = _Loader(spec.loader, fullname)
        return spec


def install(hooks: Mapping[str, Callable[[ModuleType], None]]) -> list[str]:
    """Instrument each library in ``hooks`` (top-level module name -> hook) now if imported,
    else when it is; returns the libraries instrumented so far."""
    global _FINDER
    with _LOCK:
        _HOOKS.update(hooks)
        if _FINDER is None:
            _FINDER = _Finder()
            sys.meta_path.insert(0, _FINDER)
    for name in list(hooks):
        _apply(name)
    return installed_libraries()
