"""Fixtures for the SDK integrations: a loopback model server and real SDK clients."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from tests.integrations.fakeserver import FakeLLMServer

API_KEY = "sk-test-abcdefghijklmnopqrstuvwxyz0123456789"


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    """A fake OpenAI/Anthropic server on 127.0.0.1 at a random port, stopped after the test."""
    srv = FakeLLMServer(seed=7).start()
    yield srv
    srv.stop()
