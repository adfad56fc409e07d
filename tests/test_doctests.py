"""Every ``>>>`` example in ``src/replayable``'s docstrings runs, and shows what it says."""

from __future__ import annotations

import doctest
import importlib
import importlib.util
import pkgutil
from pathlib import Path

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
    result = doctest.testmod(
        module,
        extraglobs={"tmp_dir": str(tmp_dir)},
        optionflags=doctest.ELLIPSIS,
        report=True,
    )
    assert result.attempted > 0, f"no example ran in {name}"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
