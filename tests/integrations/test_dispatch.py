"""rp.instrument: one entry point that dispatches on the object's stack, imported lazily."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import anthropic
import openai
import pytest
from tests.integrations.conftest import API_KEY
from tests.integrations.fakeserver import FakeLLMServer

import replayable as rp
from replayable.errors import UnsupportedClient
from replayable.integrations import INTEGRATIONS, Integration, from_modules
from replayable.integrations import anthropic as rp_anthropic

MESSAGES = [{"role": "user", "content": "hello"}]


class TestDispatch:
    def test_an_openai_client_is_instrumented_in_place(self, server: FakeLLMServer) -> None:
        """rp.instrument returns the same OpenAI client, now recording its calls."""
        client = openai.OpenAI(base_url=server.openai_url, api_key=API_KEY, max_retries=0)
        assert rp.instrument(client) is client
        with rp.record() as run:
            client.chat.completions.create(model="m", messages=MESSAGES)
        (ev,) = rp.open_store(None).iter_events(run.id)
        assert ev.boundary == "openai:chat.completions.create"
        assert ev.kind == "llm"

    def test_a_subclass_defined_elsewhere_is_matched_by_its_base(
        self, server: FakeLLMServer
    ) -> None:
        """A user's subclass of anthropic.Anthropic dispatches to the Anthropic integration."""

        class MyClient(anthropic.Anthropic):
            pass

        client = MyClient(base_url=server.anthropic_url, api_key=API_KEY, max_retries=0)
        assert rp.instrument(client) is client
        assert getattr(client, "__replayable__", False)

    def test_an_unsupported_object_lists_what_is_supported(self) -> None:
        """Anything else is refused with one line naming every supported stack."""
        with pytest.raises(UnsupportedClient) as info:
            rp.instrument({"not": "a client"})
        message = str(info.value)
        assert "builtins.dict" in message
        for integration in INTEGRATIONS:
            assert integration.supported in message
        assert "\n" not in message

    def test_side_effects_on_a_client_without_tools_is_refused(self, server: FakeLLMServer) -> None:
        """side_effects= names tools; a bare SDK client has none, so it is refused, not ignored."""
        client = openai.OpenAI(base_url=server.openai_url, api_key=API_KEY)
        with pytest.raises(UnsupportedClient, match="has no tools"):
            rp.instrument(client, side_effects=["place_order"])

    def test_a_missing_sdk_names_the_extra(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """Without the SDK installed, the error says which extra installs it."""
        monkeypatch.setitem(sys.modules, "anthropic", None)
        with pytest.raises(UnsupportedClient, match=r"pip install 'replayable\[anthropic\]'"):
            rp_anthropic.instrument(object())

    def test_a_missing_integration_module_names_the_extra(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """An entry whose module cannot be imported reports the extra to install."""

        class Thing:
            pass

        entry = Integration(
            "thing",
            "replayable.integrations._no_such_stack",
            "thing",
            "Thing",
            from_modules(__name__),
        )
        monkeypatch.setattr("replayable.integrations.INTEGRATIONS", [entry])
        with pytest.raises(UnsupportedClient, match=r"pip install 'replayable\[thing\]'"):
            rp.instrument(Thing())

    def test_importing_replayable_imports_no_sdk(self) -> None:
        """rp.instrument is available without importing any stack."""
        code = (
            "import sys, replayable as rp; rp.instrument; "
            "print(sorted(m for m in ('openai', 'anthropic', 'langgraph', 'agents', 'litellm') "
            "if m in sys.modules))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        assert out.strip() == "[]"


class TestFromModules:
    def test_matches_modules_functions_and_instances(self) -> None:
        """A prefix matches a module, a function and an instance of a class from under it."""
        match = from_modules("openai")
        assert match(openai)
        assert match(openai.OpenAI(api_key=API_KEY))
        assert match(openai.resources)
        assert not match(anthropic.Anthropic(api_key=API_KEY))
        assert not match(from_modules)
        assert not match(Any)
