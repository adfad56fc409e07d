"""Fixtures for the SDK integrations: a loopback model server and real SDK clients."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
from tests.integrations.fakeserver import FakeLLMServer

API_KEY = "sk-test-abcdefghijklmnopqrstuvwxyz0123456789"


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    """A fake OpenAI/Anthropic server on 127.0.0.1 at a random port, stopped after the test."""
    srv = FakeLLMServer(seed=7).start()
    yield srv
    srv.stop()


@pytest.fixture
def openai_client(server: FakeLLMServer) -> Any:
    """A real, instrumented ``openai.OpenAI`` pointed at the loopback server."""
    import openai

    from replayable.integrations.openai import instrument

    return instrument(openai.OpenAI(base_url=server.openai_url, api_key=API_KEY, max_retries=0))


@pytest.fixture
async def async_openai_client(server: FakeLLMServer) -> AsyncIterator[Any]:
    """A real, instrumented ``openai.AsyncOpenAI`` pointed at the loopback server."""
    import openai

    from replayable.integrations.openai import instrument

    client = openai.AsyncOpenAI(base_url=server.openai_url, api_key=API_KEY, max_retries=0)
    yield instrument(client)
    await client.close()


@pytest.fixture
def anthropic_client(server: FakeLLMServer) -> Any:
    """A real, instrumented ``anthropic.Anthropic`` pointed at the loopback server."""
    import anthropic

    from replayable.integrations.anthropic import instrument

    client = anthropic.Anthropic(base_url=server.anthropic_url, api_key=API_KEY, max_retries=0)
    return instrument(client)


@pytest.fixture
async def async_anthropic_client(server: FakeLLMServer) -> AsyncIterator[Any]:
    """A real, instrumented ``anthropic.AsyncAnthropic`` pointed at the loopback server."""
    import anthropic

    from replayable.integrations.anthropic import instrument

    client = anthropic.AsyncAnthropic(base_url=server.anthropic_url, api_key=API_KEY, max_retries=0)
    yield instrument(client)
    await client.close()
