"""Instructor 1.17: patched OpenAI clients, sync and async, structured outputs with validation
retries, recorded against the loopback model server and replayed with it stopped."""

from __future__ import annotations

from typing import Any

import instructor
import openai
import pytest
from pydantic import BaseModel, field_validator
from tests.integrations.conftest import API_KEY
from tests.integrations.fakeserver import FakeLLMServer

import replayable as rp
from replayable.errors import Divergence, UnsupportedClient

# Structured outputs (a JSON schema response format): the loopback server samples an answer from
# the schema on every attempt (in tool mode it answers a retry, which carries a tool result,
# with text).
MODE = instructor.Mode.JSON_SCHEMA
MESSAGES = [{"role": "user", "content": "Extract: two mugs to Paris."}]


class Attempts:
    """How many times the validator ran (its first run rejects, forcing one retry)."""

    count = 0


class Order(BaseModel):
    item: str
    quantity: int

    @field_validator("item")
    @classmethod
    def not_on_the_first_try(cls, value: str) -> str:
        Attempts.count += 1
        if Attempts.count == 1:
            raise ValueError("say the item again")
        return value


def extract(client: Any, messages: list[dict[str, str]] = MESSAGES) -> Order:
    Attempts.count = 0
    out: Order = client.chat.completions.create(
        model="gpt-4o-mini", response_model=Order, messages=messages, max_retries=2
    )
    return out


class TestStructuredOutputs:
    def test_a_retried_extraction_replays_with_the_model_stopped(
        self, server: FakeLLMServer
    ) -> None:
        """Both attempts are steps; the replay validates the served answers again and returns
        the same model, with no request sent."""
        sdk = openai.OpenAI(base_url=server.openai_url, api_key=API_KEY, max_retries=0)
        client = rp.instrument(instructor.from_openai(sdk, mode=MODE))
        with rp.record() as run:
            order = extract(client)
        assert [e.boundary for e in run.events()] == ["openai:chat.completions.create"] * 2
        assert len(server.requests) == 2
        server.stop()
        with rp.replay(run.id) as r:
            again = extract(client)
        assert again.model_dump() == order.model_dump()
        assert r.ok
        assert len(server.requests) == 2

    async def test_async_client_replays(self, server: FakeLLMServer) -> None:
        """The async patched client records and replays the same way."""
        sdk = openai.AsyncOpenAI(base_url=server.openai_url, api_key=API_KEY, max_retries=0)
        client = rp.instrument(instructor.from_openai(sdk, mode=MODE))

        async def run_once() -> Order:
            Attempts.count = 0
            out: Order = await client.chat.completions.create(
                model="gpt-4o-mini", response_model=Order, messages=MESSAGES, max_retries=2
            )
            return out

        async with rp.record() as run:
            order = await run_once()
        server.stop()
        async with rp.replay(run.id):
            assert (await run_once()).model_dump() == order.model_dump()
        assert len(server.requests) == 2
        await sdk.close()

    def test_a_changed_prompt_diverges_at_the_first_attempt(self, server: FakeLLMServer) -> None:
        """A different prompt is a divergence at the first model call."""
        sdk = openai.OpenAI(base_url=server.openai_url, api_key=API_KEY, max_retries=0)
        client = rp.instrument(instructor.from_openai(sdk, mode=MODE))
        with rp.record() as run:
            extract(client)
        server.stop()
        changed = [{"role": "user", "content": "Extract: three mugs to Lima."}]
        with pytest.raises(Divergence) as info:
            with rp.replay(run.id):
                extract(client, changed)
        assert info.value.boundary == "openai:chat.completions.create"

    def test_side_effects_are_refused(self, server: FakeLLMServer) -> None:
        """An Instructor client has no tools to mark."""
        sdk = openai.OpenAI(base_url=server.openai_url, api_key=API_KEY)
        with pytest.raises(UnsupportedClient, match="no tools"):
            rp.instrument(instructor.from_openai(sdk, mode=MODE), side_effects=["x"])
