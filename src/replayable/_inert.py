"""Recorded text made inert for where it is shown: a terminal, or JSON read by a client.

One home for the characters that can drive a terminal or a renderer (C0 and C1 controls: ESC
starts title, clear-screen and OSC 52 clipboard sequences; DEL; line and paragraph
separators; bidirectional overrides), used by the CLI, notebooks' ``__rich__`` and the MCP
server.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from typing import Any

import orjson
from rich.console import Console, ConsoleOptions, RenderableType, RenderResult
from rich.segment import Segment

__all__ = ["CONTROL", "Inert", "inert_json", "inert_segments", "visible"]

CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")
"""Characters that must never reach a terminal raw."""

_JSON_UNSAFE = re.compile("[<&\x7f-\x9f\u2028\u2029\u200e\u200f\u202a-\u202e\u2066-\u2069]")


def visible(text: str, *, newlines: bool = False) -> str:
    """``text`` with every control character shown as its escape (``\\x1b``, ``\\n``);
    ``newlines=True`` keeps line breaks."""

    def shown(m: re.Match[str]) -> str:
        ch = m.group()
        if newlines and ch == "\n":
            return ch
        return ch.encode("unicode_escape").decode("ascii")

    return CONTROL.sub(shown, text)


def inert_json(value: Any, *, indent: bool = False) -> str:
    """``value`` as JSON text that decodes to exactly ``value`` and carries nothing a terminal
    or an HTML renderer acts on: control characters (orjson escapes C0 already), C1, bidi
    overrides, ``<`` (which opens a tag) and ``&`` (an entity) are written as ``\\uXXXX``
    escapes."""
    text = orjson.dumps(value, option=orjson.OPT_INDENT_2 if indent else 0).decode()
    return _JSON_UNSAFE.sub(lambda m: f"\\u{ord(m.group()):04x}", text)


def inert_segments(segments: Iterable[Segment]) -> Iterator[Segment]:
    """Rich segments with every control character of their text shown as an escape (rich's
    own control segments, cursor moves it makes itself, pass unchanged)."""
    for seg in segments:
        if seg.control or not CONTROL.search(seg.text):
            yield seg
        else:
            yield Segment(visible(seg.text, newlines=True), seg.style, seg.control)


class Inert:
    """A rich renderable drawn with :func:`inert_segments`: what ``__rich__`` hands a console
    the user owns (not the CLI's), so recorded text cannot drive their terminal either."""

    def __init__(self, renderable: RenderableType) -> None:
        self.renderable = renderable

    def __rich_console__(self, console: Console, options: ConsoleOptions) -> RenderResult:
        yield from inert_segments(console.render(self.renderable, options))
