"""Recorded text made inert: JSON that decodes to the same value with nothing a terminal or an
HTML renderer acts on; rich renderables whose control characters print as escapes."""

from __future__ import annotations

import io
import json

from hypothesis import given
from hypothesis import strategies as st
from rich.console import Console
from rich.text import Text
from tests.fixtures.hostile import RAW_TERMINAL, TERMINAL

from replayable._inert import CONTROL, Inert, inert_json

JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**63 - 1) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=20,
)


class TestInertJson:
    @given(JSON, st.booleans())
    def test_decodes_to_the_value_and_carries_nothing_unsafe(
        self, value: object, indent: bool
    ) -> None:
        """Any JSON value round-trips; no control character, bidi override, < or & is raw."""
        text = inert_json(value, indent=indent)
        assert json.loads(text) == value
        assert "<" not in text
        assert "&" not in text
        assert not CONTROL.search(text.replace("\n", ""))


class TestInertRenderable:
    def test_a_users_console_prints_recorded_escapes_as_text(self) -> None:
        """Inert(Text) on a plain rich Console: no ESC, BEL or bidi override reaches it."""
        out = io.StringIO()
        Console(file=out, force_terminal=True, width=200).print(Inert(Text(TERMINAL)))
        printed = out.getvalue()
        for raw in RAW_TERMINAL:
            assert raw not in printed.replace("\x1b[0m", "")
        assert "\\x1b]0;owned" in printed
