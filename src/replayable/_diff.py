"""Field-level differences between two JSON values, as used in divergences and fixture misses."""

from __future__ import annotations

from typing import Any

from replayable.errors import FieldChange

__all__ = ["diff_values"]


def _join(path: str, part: str | int) -> str:
    if isinstance(part, int):
        return f"{path}[{part}]"
    return f"{path}.{part}" if path else part


def diff_values(recorded: Any, actual: Any, path: str = "", limit: int = 50) -> list[FieldChange]:
    """Paths where ``actual`` differs from ``recorded``: changed, added or removed.

    >>> [str(c) for c in diff_values({"id": 2, "a": 1}, {"id": 3, "b": 1})]
    ['- a: 1', '+ b: 1', '~ id: 2 -> 3']
    """
    out: list[FieldChange] = []
    _diff(recorded, actual, path, out, limit)
    return out


def _diff(a: Any, b: Any, path: str, out: list[FieldChange], limit: int) -> None:
    if len(out) >= limit:
        return
    if isinstance(a, dict) and isinstance(b, dict):
        for k in sorted(set(a) | set(b)):
            sub = _join(path, k)
            if k not in b:
                out.append(FieldChange(sub, "removed", recorded=a[k]))
            elif k not in a:
                out.append(FieldChange(sub, "added", actual=b[k]))
            else:
                _diff(a[k], b[k], sub, out, limit)
        return
    if isinstance(a, list) and isinstance(b, list):
        for i in range(max(len(a), len(b))):
            sub = _join(path, i)
            if i >= len(b):
                out.append(FieldChange(sub, "removed", recorded=a[i]))
            elif i >= len(a):
                out.append(FieldChange(sub, "added", actual=b[i]))
            else:
                _diff(a[i], b[i], sub, out, limit)
        return
    if a != b or type(a) is not type(b):
        out.append(FieldChange(path or "(value)", "changed", recorded=a, actual=b))
