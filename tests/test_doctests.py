"""The ``>>>`` examples in the core modules' docstrings run, and say what they show."""

from __future__ import annotations

import doctest
import importlib

import pytest

MODULES = [
    "replayable",
    "replayable.boundary",
    "replayable.canonical",
    "replayable.cassette",
    "replayable.clock",
    "replayable.context",
    "replayable.record",
    "replayable.replay",
    "replayable.store",
    "replayable._diff",
    "replayable._engine",
    "replayable._errors_codec",
]
"""Modules whose examples are checked (the call path); each runs in a fresh working directory
with its own store (the autouse fixture in conftest.py)."""


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name: str) -> None:
    """Every example in the module runs and prints what its docstring says."""
    module = importlib.import_module(name)
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS, report=True)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples failed in {name}"
