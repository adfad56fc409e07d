"""MkDocs hooks: the API reference lists every public name, wherever it is defined.

``docs/reference/api.md`` holds ``<!-- api: MODULE -->`` lines; each becomes one mkdocstrings
directive per name in ``MODULE.__all__``, pointing at the object where it is defined (so a
function that shares its name with a submodule, such as ``replayable.record``, renders as the
function).
Loaded by ``mkdocs.yml`` (``hooks:``).
"""

from __future__ import annotations

import importlib
import inspect
import re
from typing import Any

_MARKER = re.compile(r"^<!-- api: (?P<module>[\w.]+) -->$", re.MULTILINE)


def api_path(module: str, name: str) -> str:
    """The dotted path mkdocstrings renders ``module.name`` from."""
    obj = getattr(importlib.import_module(module), name)
    if inspect.ismodule(obj) and callable(obj):  # rp.replay: the module, called as its function
        return f"{obj.__name__}.{name}"
    if _foreign(module, name) is None and (inspect.isclass(obj) or inspect.isfunction(obj)):
        return f"{obj.__module__}.{obj.__qualname__}"
    return f"{module}.{name}"


def _foreign(module: str, name: str) -> str | None:
    """Where ``module.name`` comes from when another package defines it (mkdocstrings cannot
    render those), else None."""
    home = getattr(getattr(importlib.import_module(module), name), "__module__", None)
    if isinstance(home, str) and home.split(".", 1)[0] != module.split(".", 1)[0]:
        return home
    return None


def _entry(module: str, name: str) -> str:
    home = _foreign(module, name)
    if home is not None:
        return f"### `{name}` {{ #{module}.{name} }}\n\n`{home}.{name}`, re-exported here."
    return (
        f"::: {api_path(module, name)}\n    options:\n      heading_level: 3\n"
        "      show_root_full_path: false"
    )


def _directives(match: re.Match[str]) -> str:
    module = match["module"]
    names = sorted(importlib.import_module(module).__all__, key=str.lower)
    return "\n\n".join(_entry(module, name) for name in names if not name.startswith("__"))


def on_page_markdown(markdown: str, **kwargs: Any) -> str:
    """Expand the API markers of a page."""
    return _MARKER.sub(_directives, markdown)


def on_page_content(html: str, **kwargs: Any) -> str:
    """Show an option without a default as such: click 8.3 hands mkdocs-click its ``UNSET``
    marker, which it would print as ``Sentinel.UNSET``."""
    return html.replace("<td><code>Sentinel.UNSET</code></td>", "<td>—</td>")
