"""A Griffe extension for the API reference: the docstrings' reStructuredText, as Markdown.

The docstrings are written for ``help()`` and doctest (reStructuredText roles, ``>>>`` examples,
``::`` literal blocks); mkdocstrings renders them as Markdown. Before it does, this rewrites:

- a role (``:class:`~replayable.Run```) as inline code (``Run``; the full path without ``~``);
- an example (``>>>`` lines and their output, up to a blank line) as a fenced ``pycon`` block;
- a literal block (a paragraph ending in ``::`` and the indented lines after it) as a fenced
  ``python`` block, the paragraph ending in ``:``.

Loaded by ``mkdocs.yml`` (``plugins.mkdocstrings.handlers.python.options.extensions``).
"""

from __future__ import annotations

import re
from typing import Any

import griffe

_ROLE = re.compile(r":(?:py:)?(?:class|func|meth|data|attr|exc|mod|obj|const):`(~?)([^`]+)`")


def _role(match: re.Match[str]) -> str:
    tilde, target = match.groups()
    return f"`{target.rsplit('.', 1)[-1] if tilde else target}`"


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip())


def to_markdown(text: str) -> str:
    """The docstring ``text`` with its roles, examples and literal blocks as Markdown (fenced
    blocks are left alone, so rewriting twice changes nothing)."""
    lines = text.splitlines()
    out: list[str] = []
    i = 0
    while i < len(lines):
        line = lines[i]
        stripped = line.lstrip()
        pad = line[: _indent(line)]
        if stripped.startswith("```"):  # already Markdown: keep the block as it is
            out.append(line)
            i += 1
            while i < len(lines) and not lines[i].lstrip().startswith("```"):
                out.append(lines[i])
                i += 1
            if i < len(lines):
                out.append(lines[i])
                i += 1
            continue
        if stripped.startswith(">>>"):
            out.append(f"{pad}```pycon")
            while i < len(lines) and lines[i].strip():
                out.append(lines[i])
                i += 1
            out.append(f"{pad}```")
            continue
        if stripped.endswith("::") and not stripped.startswith(".."):
            base = _indent(line)
            j = i + 1
            while j < len(lines) and not lines[j].strip():
                j += 1
            if j < len(lines) and _indent(lines[j]) > base:
                head = line[:-2] if stripped != "::" else ""
                out.append(_ROLE.sub(_role, head.rstrip() + ":" if head.strip() else ""))
                out.append("")
                out.append(f"{pad}```python")
                block: list[str] = []
                while j < len(lines) and (not lines[j].strip() or _indent(lines[j]) > base):
                    block.append(lines[j])
                    j += 1
                while block and not block[-1].strip():
                    block.pop()
                cut = min(_indent(b) for b in block if b.strip())
                out.extend(pad + b[cut:] if b.strip() else "" for b in block)
                out.append(f"{pad}```")
                if j < len(lines) and lines[j].strip():
                    out.append("")
                i = j
                continue
        out.append(_ROLE.sub(_role, line))
        i += 1
    return "\n".join(out).rstrip("\n") + ("\n" if text.endswith("\n") else "")


class RstToMarkdown(griffe.Extension):
    """Rewrites every docstring the API reference renders (see the module's docstring)."""

    def on_object(self, *, obj: griffe.Object, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Rewrite ``obj``'s docstring once the object tree is complete."""
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Rewrite the package's own docstring (``on_object`` is not called for the root)."""
        self.on_object(obj=pkg, loader=loader)
