"""The Anthropic integration: real SDK clients over loopback HTTP, recorded and replayed."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import anthropic
import pytest
from anthropic.types import Message
from tests.integrations.conftest import API_KEY
from tests.integrations.fakeserver import FakeLLMServer

import replayable as rp
from replayable.errors import UnsupportedClient
from replayable.integrations import anthropic as rp_anthropic

MESSAGES = [{"role": "user", "content": "Weather in town?"}]
TOOLS = [
    {
        "name": "get_weather",
        "description": "Current weather",
        "input_schema": {"type": "object", "properties": {"city": {"type": "string"}}},
    }
]


def offline(server: FakeLLMServer) -> int:
    server.stop()
    return len(server.requests)


class TestMessages:
    def test_create_replays_an_equal_message_offline(
        self, anthropic_client: Any, server: FakeLLMServer
    ) -> None:
        """messages.create replays an equal Message and sends nothing."""
        with rp.record() as run:
            recorded = anthropic_client.messages.create(
                model="claude-x", max_tokens=64, messages=MESSAGES, system="be brief"
            )
        seen = offline(server)
        with rp.replay(run.id):
            replayed = anthropic_client.messages.create(
                model="claude-x", max_tokens=64, messages=MESSAGES, system="be brief"
            )
        assert isinstance(replayed, Message)
        assert replayed == recorded
        assert replayed._request_id == recorded._request_id
        assert len(server.requests) == seen
        (ev,) = rp.open_store(None).iter_events(run.id)
        assert ev.meta["finish_reasons"] == ["end_turn"]
        assert ev.meta["usage"]["input_tokens"] == recorded.usage.input_tokens

    def test_stream_helper_with_tool_use_replays(
        self, anthropic_client: Any, server: FakeLLMServer
    ) -> None:
        """``with messages.stream(...)`` replays the same events and final tool_use message."""

        def agent() -> tuple[list[Any], Any]:
            with anthropic_client.messages.stream(
                model="claude-x", max_tokens=64, messages=MESSAGES, tools=TOOLS
            ) as stream:
                evs = list(stream)
                return evs, stream.get_final_message()

        with rp.record() as run:
            evs, final = agent()
        offline(server)
        with rp.replay(run.id):
            evs2, final2 = agent()
        assert [e.type for e in evs2] == [e.type for e in evs]
        assert final2 == final
        assert final2.content[0].type == "tool_use"
        assert final2.content[0].input == final.content[0].input
        (ev,) = rp.open_store(None).iter_events(run.id)
        assert ev.meta["tool_calls"] == ["get_weather"]

    def test_create_stream_true_replays_raw_events(
        self, anthropic_client: Any, server: FakeLLMServer
    ) -> None:
        """stream=True replays an anthropic.Stream of equal raw events."""
        kw: dict[str, Any] = {"model": "c", "max_tokens": 8, "messages": MESSAGES, "stream": True}
        with rp.record() as run:
            recorded = list(anthropic_client.messages.create(**kw))
        offline(server)
        with rp.replay(run.id):
            stream = anthropic_client.messages.create(**kw)
            assert isinstance(stream, anthropic.Stream)
            assert list(stream) == recorded

    async def test_async_streams_under_gather(
        self, async_anthropic_client: Any, server: FakeLLMServer
    ) -> None:
        """AsyncAnthropic text streams under asyncio.gather replay the recorded text."""

        async def ask(i: int) -> str:
            async with async_anthropic_client.messages.stream(
                model="c", max_tokens=8, messages=[{"role": "user", "content": f"q{i}"}]
            ) as stream:
                return "".join([t async for t in stream.text_stream])

        async with rp.record() as run:
            recorded = await asyncio.gather(*(ask(i) for i in range(3)))
        seen = offline(server)
        async with rp.replay(run.id):
            replayed = await asyncio.gather(*(ask(i) for i in range(3)))
        assert replayed == recorded
        assert len(server.requests) == seen


class TestErrorsAndSecrets:
    def test_rate_limit_replays_as_the_sdk_exception(
        self, anthropic_client: Any, server: FakeLLMServer
    ) -> None:
        """A 429 is re-raised in replay as anthropic.RateLimitError with its body."""
        msgs = [{"role": "user", "content": "[429]"}]
        with rp.record() as run, pytest.raises(anthropic.RateLimitError) as live:
            anthropic_client.messages.create(model="c", max_tokens=8, messages=msgs)
        offline(server)
        with rp.replay(run.id), pytest.raises(anthropic.RateLimitError) as replayed:
            anthropic_client.messages.create(model="c", max_tokens=8, messages=msgs)
        assert replayed.value.status_code == 429
        assert replayed.value.body == live.value.body

    def test_the_api_key_never_reaches_the_store(
        self, anthropic_client: Any, store_path: Path
    ) -> None:
        """The client's API key appears nowhere in the SQLite files."""
        with rp.record():
            anthropic_client.messages.create(model="c", max_tokens=8, messages=MESSAGES)
        rp.open_store(None).close()
        blobs = b"".join(p.read_bytes() for p in store_path.parent.glob("traces.db*"))
        assert b"messages.create" in blobs
        assert API_KEY.encode() not in blobs

    def test_an_unsupported_client_is_refused(self) -> None:
        """An OpenAI-shaped or foreign object is refused, naming the supported clients."""
        with pytest.raises(UnsupportedClient, match=r"anthropic\.Anthropic and"):
            rp_anthropic.instrument("not a client")


class TestDispatch:
    def test_instrument_dispatches_by_client_type(self, server: FakeLLMServer) -> None:
        """replayable.integrations.instrument picks the integration from the client's package."""
        from replayable.integrations import instrument

        client = instrument(anthropic.Anthropic(base_url=server.anthropic_url, api_key="k"))
        assert getattr(client, "__replayable__", False)
        with pytest.raises(UnsupportedClient, match=r"openai\.OpenAI, openai\.AsyncOpenAI"):
            instrument(42)


class TestEveryPathAnAgentTakes:
    def test_with_raw_response_replays_a_raw_response(
        self, anthropic_client: Any, server: FakeLLMServer
    ) -> None:
        """messages.with_raw_response replays the SDK's raw response; parse() gives the Message."""

        def agent() -> Any:
            return anthropic_client.messages.with_raw_response.create(
                model="claude", max_tokens=64, messages=MESSAGES
            )

        with rp.record() as run:
            raw = agent()
        seen = offline(server)
        with rp.replay(run.id) as r:
            again = agent()
        assert type(again) is type(raw)
        assert isinstance(again.parse(), Message)
        assert again.parse() == raw.parse()
        assert again.headers["request-id"] == raw.headers["request-id"]
        assert r.ok
        assert len(server.requests) == seen

    async def test_async_stream_helper_and_streaming_response(
        self, async_anthropic_client: Any, server: FakeLLMServer
    ) -> None:
        """AsyncAnthropic messages.stream and with_streaming_response replay offline."""

        async def agent() -> tuple[str, Any]:
            async with async_anthropic_client.messages.stream(
                model="claude", max_tokens=64, messages=MESSAGES
            ) as stream:
                text = "".join([t async for t in stream.text_stream])
            create = async_anthropic_client.messages.with_streaming_response.create
            async with create(model="claude", max_tokens=64, messages=MESSAGES) as api:
                message = await api.parse()
            return text, message

        async with rp.record() as run:
            recorded = await agent()
        assert recorded[0]
        seen = offline(server)
        async with rp.replay(run.id) as r:
            assert await agent() == recorded
        assert r.ok
        assert len(server.requests) == seen

    def test_with_options_copies_stay_instrumented(
        self, anthropic_client: Any, server: FakeLLMServer
    ) -> None:
        """A client from with_options() records and replays like the original."""

        def agent() -> Any:
            return anthropic_client.with_options(max_retries=0).messages.create(
                model="claude", max_tokens=64, messages=MESSAGES
            )

        with rp.record() as run:
            recorded = agent()
        seen = offline(server)
        with rp.replay(run.id):
            assert agent() == recorded
        assert len(server.requests) == seen
