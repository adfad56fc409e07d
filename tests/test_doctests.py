"""Every ``>>>`` example in ``src/replayable``'s docstrings runs, and shows what it says."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import inspect
import pkgutil
from pathlib import Path
from typing import Any

import pytest

import replayable


def _modules_with_examples() -> list[str]:
    """Every module of the package whose source holds a ``>>>`` example."""
    names = ["replayable"]
    names += [info.name for info in pkgutil.walk_packages(replayable.__path__, "replayable.")]
    found = []
    for name in names:
        spec = importlib.util.find_spec(name)
        assert spec is not None
        assert spec.origin is not None
        if ">>>" in Path(spec.origin).read_text(encoding="utf-8"):
            found.append(name)
    return sorted(found)


MODULES = _modules_with_examples()
"""Modules whose examples are checked; each runs in a fresh working directory with its own
store (the autouse fixture in conftest.py), and gets ``tmp_dir``, a fresh empty directory."""


class _DefiningModuleFinder(doctest.DocTestFinder):
    """Finds each object's examples in the module whose source defines it. A name a public
    module re-exports names that module as its ``__module__`` (``replayable.check``), but its
    examples use the globals of the module it is written in (``replayable._check``)."""

    def _from_module(self, module: Any, obj: Any) -> bool:
        home = _globals_of(obj)
        if home is not None:
            return home is module.__dict__
        return bool(super()._from_module(module, obj))  # type: ignore[misc]


def _globals_of(obj: Any) -> dict[str, Any] | None:
    """The globals of the module a function or class is written in (a class's, through its
    methods; a decorated function's, through what it wraps), or None when nothing tells."""
    if inspect.isfunction(obj):
        obj = inspect.unwrap(obj)
        return obj.__globals__  # type: ignore[no-any-return]
    if inspect.isclass(obj):
        for member in vars(obj).values():
            fn = getattr(member, "__func__", getattr(member, "fget", member))
            if inspect.isfunction(fn) and fn.__qualname__.startswith(obj.__qualname__ + "."):
                return fn.__globals__  # type: ignore[no-any-return]
    return None


# Rules the `redact` examples add do not outlive them.
pytestmark = pytest.mark.usefixtures("redaction_rules")


def test_the_examples_are_found() -> None:
    """The walk finds examples in the core modules and in the outer layers alike."""
    for name in ("replayable.canonical", "replayable.redact", "replayable.clock"):
        assert name in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str, tmp_path: Path) -> None:
    """Every example in the module runs and prints what its docstring says."""
    module = importlib.import_module(name)
    tmp_dir = tmp_path / "doctest"
    tmp_dir.mkdir()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in _DefiningModuleFinder().find(module, extraglobs={"tmp_dir": str(tmp_dir)}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0, f"no example ran in {name}"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
