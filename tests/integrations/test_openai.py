"""The OpenAI integration: real SDK clients over loopback HTTP, recorded then replayed offline."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import openai
import pytest
from openai.types.chat import ChatCompletion, ChatCompletionChunk
from openai.types.responses import Response
from pydantic import BaseModel
from tests.integrations.conftest import API_KEY
from tests.integrations.fakeserver import FakeLLMServer

import replayable as rp
from replayable.errors import UnsupportedClient
from replayable.integrations import openai as rp_openai

MESSAGES = [{"role": "user", "content": "What is the weather?"}]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "get_weather",
            "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
        },
    }
]


def offline(server: FakeLLMServer) -> int:
    """Stop the server; return how many requests it had seen."""
    server.stop()
    return len(server.requests)


def events(run: rp.Run) -> list[rp.Event]:
    return list(rp.open_store(None).iter_events(run.id))


class TestChatCompletions:
    def test_plain_call_replays_an_equal_chat_completion_offline(
        self, openai_client: Any, server: FakeLLMServer
    ) -> None:
        """A recorded completion comes back as an equal ChatCompletion, with no request sent."""
        with rp.record(name="chat") as run:
            recorded = openai_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        seen = offline(server)
        with rp.replay(run.id):
            replayed = openai_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        assert isinstance(replayed, ChatCompletion)
        assert replayed == recorded
        assert replayed._request_id == recorded._request_id
        assert len(server.requests) == seen == 1

    def test_sampled_answers_differ_live_but_replay_returns_the_recorded_one(
        self, openai_client: Any, server: FakeLLMServer
    ) -> None:
        """The server samples; replay returns what was recorded, not a new sample."""
        with rp.record() as run:
            first = openai_client.chat.completions.create(model="m", messages=MESSAGES)
        second = openai_client.chat.completions.create(model="m", messages=MESSAGES)
        assert first.choices[0].message.content != second.choices[0].message.content
        offline(server)
        with rp.replay(run.id):
            again = openai_client.chat.completions.create(model="m", messages=MESSAGES)
        assert again.choices[0].message.content == first.choices[0].message.content

    def test_a_response_field_unknown_to_the_sdk_is_kept(
        self, openai_client: Any, server: FakeLLMServer
    ) -> None:
        """A field the SDK does not model is stored and replayed, not dropped."""
        with rp.record() as run:
            recorded = openai_client.chat.completions.create(model="m", messages=MESSAGES)
        assert recorded.x_future_field["added_in"] == "2027"
        (ev,) = events(run)
        assert ev.output["x_future_field"]["added_in"] == "2027"
        offline(server)
        with rp.replay(run.id):
            replayed = openai_client.chat.completions.create(model="m", messages=MESSAGES)
        assert replayed.x_future_field == recorded.x_future_field
        assert replayed.model_dump() == recorded.model_dump()

    def test_metadata_is_stored_not_keyed(self, openai_client: Any) -> None:
        """Response model, fingerprint, usage, finish reason and request id land in meta."""
        with rp.record() as run:
            resp = openai_client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
        (ev,) = events(run)
        assert ev.kind == "llm"
        assert ev.boundary == "openai:chat.completions.create"
        assert ev.meta["provider"] == "openai"
        assert ev.meta["sdk_version"] == openai.__version__
        assert ev.meta["request_model"] == "gpt-4o"
        assert ev.meta["response_model"] == resp.model == "gpt-4o-2025"
        assert ev.meta["system_fingerprint"] == resp.system_fingerprint
        assert ev.meta["finish_reasons"] == ["stop"]
        assert ev.meta["request_id"] == resp._request_id
        assert ev.meta["usage"] == {
            "input_tokens": resp.usage.prompt_tokens,
            "output_tokens": resp.usage.completion_tokens,
        }

    def test_outside_a_run_the_client_calls_through(
        self, openai_client: Any, server: FakeLLMServer
    ) -> None:
        """No active record or replay: the instrumented client is the plain client."""
        resp = openai_client.chat.completions.create(model="m", messages=MESSAGES)
        assert isinstance(resp, ChatCompletion)
        assert len(server.requests) == 1


class TestStreaming:
    def test_stream_with_tool_call_deltas_replays_as_an_sdk_stream(
        self, openai_client: Any, server: FakeLLMServer
    ) -> None:
        """stream=True replays as an openai.Stream of equal chunks, tool-call deltas included."""
        kwargs: dict[str, Any] = {
            "model": "gpt-4o",
            "messages": MESSAGES,
            "tools": TOOLS,
            "stream": True,
            "stream_options": {"include_usage": True},
        }
        with rp.record() as run:
            recorded = list(openai_client.chat.completions.create(**kwargs))
        offline(server)
        with rp.replay(run.id):
            stream = openai_client.chat.completions.create(**kwargs)
            assert isinstance(stream, openai.Stream)
            with stream:
                replayed = list(stream)
        assert all(isinstance(c, ChatCompletionChunk) for c in replayed)
        assert replayed == recorded
        args = "".join(
            tc.function.arguments or ""
            for c in replayed
            for ch in c.choices
            for tc in ch.delta.tool_calls or ()
        )
        assert json.loads(args)["city"]
        (ev,) = events(run)
        assert ev.meta["tool_calls"] == ["get_weather"]
        assert ev.meta["usage"]["output_tokens"] > 0

    def test_the_stream_helper_works_in_replay(
        self, openai_client: Any, server: FakeLLMServer
    ) -> None:
        """``with client.chat.completions.stream(...)`` yields the same events and final message."""

        def agent() -> tuple[list[str], Any]:
            with openai_client.chat.completions.stream(
                model="gpt-4o", messages=MESSAGES, tools=TOOLS
            ) as stream:
                kinds = [event.type for event in stream]
                return kinds, stream.get_final_completion()

        with rp.record() as run:
            kinds, final = agent()
        offline(server)
        with rp.replay(run.id):
            kinds2, final2 = agent()
        assert "tool_calls.function.arguments.delta" in kinds
        assert kinds2 == kinds
        assert final2 == final
        assert final2.choices[0].message.tool_calls[0].function.parsed_arguments is None

    async def test_async_streams_under_gather_replay_in_any_start_order(
        self, async_openai_client: Any, server: FakeLLMServer
    ) -> None:
        """Concurrent async streams match their recordings by key, whatever order they start in."""

        async def ask(i: int) -> str:
            stream = await async_openai_client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"q{i}"}], stream=True
            )
            assert isinstance(stream, openai.AsyncStream)
            parts = [c.choices[0].delta.content or "" async for c in stream if c.choices]
            return "".join(parts)

        async with rp.record() as run:
            recorded = await asyncio.gather(*(ask(i) for i in range(4)))
        offline(server)
        async with rp.replay(run.id):
            replayed = await asyncio.gather(*(ask(i) for i in reversed(range(4))))
        assert list(reversed(replayed)) == recorded
        assert len(set(recorded)) == 4


class TestAsync:
    async def test_async_plain_calls_under_gather(
        self, async_openai_client: Any, server: FakeLLMServer
    ) -> None:
        """AsyncOpenAI calls under asyncio.gather record and replay equal objects."""

        async def ask(i: int) -> Any:
            return await async_openai_client.chat.completions.create(
                model="m", messages=[{"role": "user", "content": f"q{i}"}]
            )

        async with rp.record() as run:
            recorded = await asyncio.gather(*(ask(i) for i in range(3)))
        seen = offline(server)
        async with rp.replay(run.id):
            replayed = await asyncio.gather(*(ask(i) for i in range(3)))
        assert replayed == recorded
        assert len(server.requests) == seen


class TestResponsesAPI:
    def test_responses_create_plain_and_streamed(
        self, openai_client: Any, server: FakeLLMServer
    ) -> None:
        """responses.create replays a Response; stream=True replays the same typed events."""

        def agent() -> tuple[Any, list[Any]]:
            resp = openai_client.responses.create(model="gpt-5", input="hello", instructions="be")
            events = list(openai_client.responses.create(model="gpt-5", input="hi", stream=True))
            return resp, events

        with rp.record() as run:
            resp, evs = agent()
        offline(server)
        with rp.replay(run.id):
            resp2, evs2 = agent()
        assert isinstance(resp2, Response)
        assert resp2 == resp
        assert resp2.output_text == resp.output_text != ""
        assert evs2 == evs
        assert [type(e).__name__ for e in evs2][-1] == "ResponseCompletedEvent"
        meta = {e.boundary: e.meta for e in events(run)}
        assert meta["openai:responses.create"]["usage"]["input_tokens"] > 0
        assert meta["openai:responses.create_stream"]["finish_reasons"] == ["completed"]


class TestErrors:
    @pytest.mark.parametrize(
        ("directive", "error"),
        [("[429]", openai.RateLimitError), ("[500]", openai.InternalServerError)],
    )
    def test_http_errors_replay_as_the_sdk_exception(
        self, openai_client: Any, server: FakeLLMServer, directive: str, error: type
    ) -> None:
        """An HTTP error is recorded and re-raised in replay as the SDK's own exception type."""
        messages = [{"role": "user", "content": directive}]
        with rp.record() as run, pytest.raises(error) as live:
            openai_client.chat.completions.create(model="m", messages=messages)
        offline(server)
        with rp.replay(run.id), pytest.raises(error) as replayed:
            openai_client.chat.completions.create(model="m", messages=messages)
        exc = replayed.value
        assert type(exc) is error
        assert exc.status_code == live.value.status_code
        assert exc.body == live.value.body
        assert str(exc) == str(live.value)
        assert exc.request_id == live.value.request_id

    def test_an_error_opening_a_stream_is_replayed(
        self, openai_client: Any, server: FakeLLMServer
    ) -> None:
        """A 429 when opening a stream is raised by create() in replay too."""
        messages = [{"role": "user", "content": "[429]"}]
        with rp.record() as run, pytest.raises(openai.RateLimitError):
            openai_client.chat.completions.create(model="m", messages=messages, stream=True)
        offline(server)
        with rp.replay(run.id), pytest.raises(openai.RateLimitError):
            openai_client.chat.completions.create(model="m", messages=messages, stream=True)


class TestKeys:
    def test_a_field_outside_the_key_matches_with_a_warning(
        self, openai_client: Any, server: FakeLLMServer
    ) -> None:
        """``user`` decides nothing: a changed user still matches, and replay says so."""
        with rp.record() as run:
            openai_client.chat.completions.create(model="m", messages=MESSAGES, user="alice")
        offline(server)
        with (
            rp.replay(run.id),
            pytest.warns(rp.ReplayableWarning, match="outside the key changed: user") as caught,
        ):
            openai_client.chat.completions.create(model="m", messages=MESSAGES, user="bob")
        assert caught[0].filename == __file__  # the user's line, not one of replayable's

    def test_a_changed_sampling_field_is_a_divergence(
        self, openai_client: Any, server: FakeLLMServer
    ) -> None:
        """temperature decides the answer: changing it diverges, naming the field."""
        with rp.record() as run:
            openai_client.chat.completions.create(model="m", messages=MESSAGES, temperature=0)
        offline(server)
        with pytest.raises(rp.Divergence, match="temperature"), rp.replay(run.id):
            openai_client.chat.completions.create(model="m", messages=MESSAGES, temperature=1)


class TestSecrets:
    def test_the_api_key_never_reaches_the_store(
        self, openai_client: Any, store_path: Path
    ) -> None:
        """The client's API key appears nowhere in the SQLite files, errors included."""
        with rp.record():
            openai_client.chat.completions.create(model="m", messages=MESSAGES)
            list(openai_client.chat.completions.create(model="m", messages=MESSAGES, stream=True))
            with pytest.raises(openai.RateLimitError):
                openai_client.chat.completions.create(
                    model="m",
                    messages=[{"role": "user", "content": "[429]"}],
                    extra_headers={"Authorization": f"Bearer {API_KEY}"},
                )
        rp.open_store(None).close()
        blobs = b"".join(p.read_bytes() for p in store_path.parent.glob("traces.db*"))
        assert b"chat.completions" in blobs
        assert API_KEY.encode() not in blobs
        assert API_KEY[10:30].encode() not in blobs


class TestBadInput:
    def test_an_unsupported_client_is_refused_naming_the_supported_ones(self) -> None:
        """Instrumenting something else says which clients are supported."""
        with pytest.raises(UnsupportedClient, match=r"openai\.OpenAI, openai\.AsyncOpenAI"):
            rp_openai.instrument(object())

    def test_instrumenting_twice_records_once(self, openai_client: Any) -> None:
        """instrument() is idempotent: one call, one recorded step."""
        rp_openai.instrument(openai_client)
        with rp.record() as run:
            openai_client.chat.completions.create(model="m", messages=MESSAGES)
        assert len(events(run)) == 1

    def test_another_sdk_major_version_at_replay_warns(
        self, openai_client: Any, server: FakeLLMServer, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A run recorded with another major SDK version is replayed with a clear warning."""
        with rp.record() as run:
            recorded = openai_client.chat.completions.create(model="m", messages=MESSAGES)
        offline(server)
        sdk = rp_openai._FAMILY.sdk(openai)
        monkeypatch.setattr(sdk, "version", "99.0.0")
        with rp.replay(run.id), pytest.warns(rp.ReplayableWarning, match="major versions differ"):
            replayed = openai_client.chat.completions.create(model="m", messages=MESSAGES)
        assert replayed == recorded


class Weather(BaseModel):
    city: str
    celsius: int


class TestEveryPathAnAgentTakes:
    def test_with_raw_response_replays_a_raw_response_whose_parse_works(
        self, openai_client: Any, server: FakeLLMServer
    ) -> None:
        """with_raw_response (ChatOpenAI's default) replays a LegacyAPIResponse, headers and all."""

        def agent() -> Any:
            return openai_client.chat.completions.with_raw_response.create(
                model="m", messages=MESSAGES
            )

        with rp.record() as run:
            raw = agent()
        (ev,) = events(run)
        assert ev.output["object"] == "chat.completion"
        seen = offline(server)
        with rp.replay(run.id) as r:
            again = agent()
        assert type(again) is type(raw)
        assert type(again).__name__ == "LegacyAPIResponse"
        assert again.parse() == raw.parse()
        assert isinstance(again.parse(), ChatCompletion)
        assert again.headers["x-request-id"] == raw.headers["x-request-id"]
        assert again.parse()._request_id == raw.parse()._request_id
        assert r.ok
        assert len(server.requests) == seen

    async def test_async_with_streaming_response_streams_the_same_events(
        self, async_openai_client: Any, server: FakeLLMServer
    ) -> None:
        """The agents SDK's streamed Responses path: with_streaming_response + parse() + iterate."""

        async def agent() -> tuple[list[Any], str | None]:
            create = async_openai_client.responses.with_streaming_response.create
            async with create(model="gpt-5", input="hi", tools=[], stream=True) as api:
                stream = await api.parse()
                return [e async for e in stream], api.request_id

        async with rp.record() as run:
            recorded, request_id = await agent()
        seen = offline(server)
        async with rp.replay(run.id) as r:
            replayed, request_id2 = await agent()
        assert replayed == recorded
        assert type(replayed[-1]).__name__ == "ResponseCompletedEvent"
        assert request_id2 == request_id is not None
        assert r.ok
        assert len(server.requests) == seen

    def test_sync_with_streaming_response_of_a_plain_call(
        self, openai_client: Any, server: FakeLLMServer
    ) -> None:
        """with_streaming_response without stream=True replays an APIResponse to parse()."""

        def agent() -> Any:
            with openai_client.chat.completions.with_streaming_response.create(
                model="m", messages=MESSAGES
            ) as api:
                return api.parse()

        with rp.record() as run:
            recorded = agent()
        offline(server)
        with rp.replay(run.id):
            assert agent() == recorded

    def test_with_options_and_copy_stay_instrumented(
        self, openai_client: Any, server: FakeLLMServer
    ) -> None:
        """Clients made by with_options()/copy() (Pydantic AI, the agents SDK) record and replay."""

        def agent() -> list[Any]:
            return [
                openai_client.with_options(max_retries=0).chat.completions.create(
                    model="m", messages=MESSAGES
                ),
                openai_client.copy(timeout=5).chat.completions.create(
                    model="m2", messages=MESSAGES
                ),
            ]

        with rp.record() as run:
            recorded = agent()
        assert len(events(run)) == 2
        seen = offline(server)
        with rp.replay(run.id):
            assert agent() == recorded
        assert len(server.requests) == seen

    def test_parse_with_a_pydantic_model_replays_the_parsed_object(
        self, openai_client: Any, server: FakeLLMServer
    ) -> None:
        """Structured outputs: .parse(response_format=Model) replays .parsed as that model."""

        def agent() -> Any:
            return openai_client.chat.completions.parse(
                model="m", messages=MESSAGES, response_format=Weather
            )

        with rp.record() as run:
            recorded = agent()
        assert isinstance(recorded.choices[0].message.parsed, Weather)
        (ev,) = events(run)
        assert ev.input["response_format"]["type"] == "json_schema"
        offline(server)
        with rp.replay(run.id):
            replayed = agent()
        assert replayed.choices[0].message.parsed == recorded.choices[0].message.parsed

    def test_responses_stream_helper_and_text_format(
        self, openai_client: Any, server: FakeLLMServer
    ) -> None:
        """responses.stream(text_format=Model) yields the same events and the parsed output."""

        def agent() -> tuple[list[str], Any]:
            with openai_client.responses.stream(
                model="gpt-5", input="weather?", text_format=Weather
            ) as stream:
                kinds = [e.type for e in stream]
                return kinds, stream.get_final_response().output_parsed

        with rp.record() as run:
            kinds, parsed = agent()
        assert isinstance(parsed, Weather)
        assert "response.output_text.delta" in kinds
        offline(server)
        with rp.replay(run.id):
            assert agent() == (kinds, parsed)

    def test_embeddings_are_retrieval_steps(
        self, openai_client: Any, server: FakeLLMServer
    ) -> None:
        """embeddings.create is a `retrieval` boundary; replay returns the same vectors."""

        def agent() -> list[list[float]]:
            resp = openai_client.embeddings.create(model="e", input=["a cat", "a dog"])
            return [d.embedding for d in resp.data]

        with rp.record() as run:
            vectors = agent()
        assert vectors != agent()
        (ev,) = events(run)
        assert (ev.boundary, ev.kind) == ("openai:embeddings.create", "retrieval")
        seen = offline(server)
        with rp.replay(run.id):
            assert agent() == vectors
        assert len(server.requests) == seen

    def test_azure_client_is_supported(self, server: FakeLLMServer) -> None:
        """AzureOpenAI (deployment URLs) records and replays through the same boundary."""
        client = rp.instrument(
            openai.AzureOpenAI(
                azure_endpoint=f"http://127.0.0.1:{server.port}",
                api_key=API_KEY,
                api_version="2024-10-21",
                max_retries=0,
            )
        )
        with rp.record() as run:
            recorded = client.chat.completions.create(model="dep", messages=MESSAGES)
        assert server.requests[-1].path.startswith("/openai/deployments/dep/chat/completions")
        seen = offline(server)
        with rp.replay(run.id):
            assert client.chat.completions.create(model="dep", messages=MESSAGES) == recorded
        assert len(server.requests) == seen
