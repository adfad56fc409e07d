"""Exact-match fixture files (issue 5 builds them)."""

from __future__ import annotations

from typing import Any

__all__ = ["Cassette", "cassette"]


class Cassette:
    """Placeholder until cassettes land."""


def cassette(path: str, mode: str = "auto") -> Any:
    """Placeholder until cassettes land."""
    raise NotImplementedError("cassettes are not implemented yet")
