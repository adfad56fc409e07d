"""LiteLLM: completion / acompletion, streamed or not, against the sampling loopback server;
recorded, then replayed with the server stopped."""

from __future__ import annotations

import os

os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

import inspect
from collections.abc import AsyncIterator
from typing import Any

import litellm
import pytest
from tests.integrations.conftest import API_KEY
from tests.integrations.fakeserver import FakeLLMServer

import replayable as rp
from replayable.errors import UnsupportedClient

rp.instrument(litellm)

MESSAGES = [{"role": "user", "content": "What is the weather?"}]

# LiteLLM imports provider modules lazily on the first call; one of them makes pydantic warn.
pytestmark = pytest.mark.filterwarnings("ignore:Item.* `ReadOnly` qualifier:UserWarning")


@pytest.fixture(autouse=True)
async def close_litellm_clients() -> AsyncIterator[None]:
    """LiteLLM caches the SDK clients it opens; close them so no socket outlives the test."""
    yield
    cache = litellm.in_memory_llm_clients_cache
    for client in list(getattr(cache, "cache_dict", {}).values()):
        close = getattr(client, "close", None)
        if callable(close):
            result = close()
            if inspect.isawaitable(result):
                await result
    cache.flush_cache()


def call(server: FakeLLMServer, **options: Any) -> dict[str, Any]:
    """The quick-start call, pointed at the loopback server."""
    return {
        "model": "openai/gpt-4o",
        "messages": MESSAGES,
        "api_base": server.openai_url,
        "api_key": API_KEY,
        **options,
    }


def texts(chunks: list[Any]) -> str:
    return "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)


def boundaries(run: rp.Run) -> list[str]:
    return [e.boundary for e in rp.open_store(None).iter_events(run.id)]


class TestCompletion:
    def test_a_pydantic_response_format_is_recorded_as_json(self, server: FakeLLMServer) -> None:
        """response_format=<pydantic class> (as DSPy passes it) is recorded as the JSON form
        LiteLLM sends, with no warning, and replays."""
        from pydantic import BaseModel

        class Weather(BaseModel):
            city: str

        with rp.record() as run:
            first = litellm.completion(**call(server, response_format=Weather))
        (event,) = rp.open_store(None).iter_events(run.id)
        assert event.input["response_format"]["type"] == "json_schema"
        server.stop()
        with rp.replay(run.id) as r:
            again = litellm.completion(**call(server, response_format=Weather))
        assert again.choices[0].message.content == first.choices[0].message.content
        assert r.ok

    def test_completion_and_its_stream_replay_offline(self, server: FakeLLMServer) -> None:
        """completion() and completion(stream=True) return the recorded answers, no request."""

        def agent() -> tuple[str, str]:
            resp = litellm.completion(**call(server))
            chunks = list(litellm.completion(**call(server, stream=True)))
            return str(resp.choices[0].message.content), texts(chunks)

        with rp.record() as run:
            recorded = agent()
        assert recorded[0] != recorded[1].strip()
        assert boundaries(run) == ["litellm:completion", "litellm:completion_stream"]
        server.stop()
        seen = len(server.requests)
        with rp.replay(run.id) as r:
            replayed = agent()
        assert replayed == recorded
        assert isinstance(litellm.ModelResponse(), litellm.ModelResponse)
        assert r.ok
        assert len(server.requests) == seen

    async def test_acompletion_and_its_stream_replay_offline(self, server: FakeLLMServer) -> None:
        """acompletion(), plain and stream=True, replay as ModelResponse and streamed chunks."""

        async def agent() -> tuple[Any, str]:
            resp = await litellm.acompletion(**call(server))
            stream = await litellm.acompletion(**call(server, stream=True))
            return resp, texts([c async for c in stream])

        async with rp.record() as run:
            resp, text = await agent()
        server.stop()
        seen = len(server.requests)
        async with rp.replay(run.id) as r:
            resp2, text2 = await agent()
        assert isinstance(resp2, litellm.ModelResponse)
        assert resp2.choices[0].message.content == resp.choices[0].message.content
        assert resp2.usage.prompt_tokens == resp.usage.prompt_tokens
        assert text2 == text != ""
        assert r.ok
        assert len(server.requests) == seen

    def test_tool_calls_come_back_as_litellm_objects(self, server: FakeLLMServer) -> None:
        """A recorded tool call replays with its name and arguments."""
        tools = [
            {
                "type": "function",
                "function": {
                    "name": "get_weather",
                    "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
                },
            }
        ]
        with rp.record() as run:
            recorded = litellm.completion(**call(server, tools=tools))
        server.stop()
        with rp.replay(run.id):
            replayed = litellm.completion(**call(server, tools=tools))
        (tc,) = replayed.choices[0].message.tool_calls
        assert tc.function.name == "get_weather"
        assert tc.function.arguments == recorded.choices[0].message.tool_calls[0].function.arguments
        (ev,) = rp.open_store(None).iter_events(run.id)
        assert ev.meta["tool_calls"] == ["get_weather"]

    def test_where_the_call_goes_is_not_keyed_but_the_prompt_is(
        self, server: FakeLLMServer
    ) -> None:
        """Another api_base still matches (with a warning); another prompt diverges on messages."""
        with rp.record() as run:
            litellm.completion(**call(server))
        server.stop()
        with (
            rp.replay(run.id) as r,
            pytest.warns(rp.ReplayableWarning, match="fields outside the key changed: api_base"),
        ):
            litellm.completion(**call(server, api_base="http://127.0.0.1:9/v1"))
        assert r.ok
        changed = [{"role": "user", "content": "And tomorrow?"}]
        with pytest.raises(rp.Divergence, match="messages"), rp.replay(run.id):
            litellm.completion(**call(server, messages=changed))

    def test_hidden_params_are_recorded_redacted_and_restored(
        self, server: FakeLLMServer, store_path: Any
    ) -> None:
        """response._hidden_params (cost, provider, response headers) replay as recorded; a
        secret among them (a session cookie) is redacted before it is written."""
        cookie = "session=c2VjcmV0LWNvb2tpZS12YWx1ZQ"
        server.headers["set-cookie"] = cookie
        with rp.record() as run:
            live = litellm.completion(**call(server))
        hidden = live._hidden_params
        assert hidden["additional_headers"]["llm_provider-set-cookie"] == cookie
        server.stop()
        with rp.replay(run.id) as r:
            replayed = litellm.completion(**call(server))
        assert r.ok
        again = replayed._hidden_params
        headers = again["additional_headers"]
        assert (
            headers["llm_provider-x-request-id"]
            == hidden["additional_headers"]["llm_provider-x-request-id"]
        )
        assert headers["llm_provider-set-cookie"] == "[REDACTED]"
        for name in ("response_cost", "custom_llm_provider", "api_base", "litellm_call_id"):
            assert again[name] == hidden[name], name
        rp.open_store(None).close()
        blobs = b"".join(p.read_bytes() for p in store_path.parent.glob("traces.db*"))
        assert b"c2VjcmV0LWNvb2tpZS12YWx1ZQ" not in blobs

    def test_the_api_key_is_not_stored(self, server: FakeLLMServer, store_path: Any) -> None:
        """api_key is an argument: redacted before anything is written."""
        with rp.record():
            litellm.completion(**call(server))
        rp.open_store(None).close()
        blobs = b"".join(p.read_bytes() for p in store_path.parent.glob("traces.db*"))
        assert b"litellm:completion" in blobs
        assert API_KEY.encode() not in blobs


class TestInstrument:
    def test_the_functions_can_be_instrumented_alone(self, server: FakeLLMServer) -> None:
        """rp.instrument(litellm.completion) returns a recording function (idempotent)."""
        completion = rp.instrument(litellm.completion)
        assert rp.instrument(completion) is completion
        with rp.record() as run:
            completion(**call(server))
        assert boundaries(run) == ["litellm:completion"]

    def test_side_effects_and_other_objects_are_refused(self) -> None:
        """LiteLLM has no tools to mark; other objects name what is supported."""
        with pytest.raises(UnsupportedClient, match="has no tools"):
            rp.instrument(litellm, side_effects=["x"])
        with pytest.raises(UnsupportedClient, match=r"litellm\.completion"):
            rp.instrument(litellm.embedding)
