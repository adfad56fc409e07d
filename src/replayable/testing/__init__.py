"""Turning recorded runs into regression tests (issue 5 builds it)."""
