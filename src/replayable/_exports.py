"""How the public modules show what they re-export (as httpx does).

A class or function written in a private module and exported by a public one names the public
module as its ``__module__``, so reprs, tracebacks, pickles and the docs point where the user
imports it (``replayable.CheckReport``, not ``replayable._check._report.CheckReport``).

A public module that shares its name with its main function (``replayable.replay`` holds
``replay``) is made callable as that function, and the package attribute is the module: so
``rp.replay(run.id)`` replays and ``import replayable.replay`` gives the module, instead of the
function shadowing the module on the package.
"""

from __future__ import annotations

import inspect
import sys
import types
from collections.abc import Iterable, MutableMapping
from typing import Any

__all__ = ["CallableModule", "is_private", "publish", "unshadow"]


def is_private(module: str) -> bool:
    """Whether a dotted module name has a private part (``replayable._check._report``)."""
    return any(part.startswith("_") for part in module.split("."))


def publish(namespace: MutableMapping[str, Any]) -> None:
    """Give each class and function in the module's ``__all__`` that a private module defines
    the public module as its ``__module__`` (call it at the end of the public module)."""
    module = namespace["__name__"]
    for name in namespace.get("__all__", ()):
        obj = namespace.get(name)
        if not (inspect.isclass(obj) or inspect.isfunction(obj)):
            continue
        if is_private(obj.__module__) and obj.__module__.startswith("replayable"):
            obj.__module__ = module


class CallableModule(types.ModuleType):
    """A module that is also its main function: calling it calls the function of its name."""

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.__dict__[self.__name__.rpartition(".")[2]](*args, **kwargs)

    @property
    def __signature__(self) -> inspect.Signature:
        return inspect.signature(self.__dict__[self.__name__.rpartition(".")[2]])


def unshadow(namespace: MutableMapping[str, Any], names: Iterable[str]) -> None:
    """On the package, put back each submodule its function of the same name shadowed, made
    callable as that function (the function stays the module's own attribute)."""
    package = namespace["__name__"]
    for name in names:
        module = sys.modules[f"{package}.{name}"]
        assert namespace.get(name) is getattr(module, name), f"{package}.{name} is no function"
        module.__class__ = CallableModule
        namespace[name] = module
