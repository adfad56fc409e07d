"""Recorded demo runs: the incident (a wrong record deleted) and a correct run."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

import replayable as rp
from replayable.demo import agent

OWNER_EMAIL = agent.OWNER_EMAIL


def record_demo(*, wrong: bool) -> rp.Run:
    """Record the unguarded demo agent until it deletes the wrong (or the right) record."""
    agent.GUARD = False
    for _ in range(200):
        agent.reset_db()
        with rp.record(name="support-agent") as run:
            result = agent.support_agent(agent.REQUEST)
        if (result["customer"]["email"] != OWNER_EMAIL) == wrong:
            return run
    raise AssertionError("the demo agent never produced the wanted outcome")


@pytest.fixture(autouse=True)
def _unguarded() -> Iterator[None]:
    agent.GUARD = False
    yield
    agent.GUARD = False


@pytest.fixture
def incident() -> rp.Run:
    """A recorded run in which the agent deleted someone else's record."""
    return record_demo(wrong=True)


@pytest.fixture
def correct_run() -> rp.Run:
    """A recorded run in which the agent deleted the requester's own record."""
    return record_demo(wrong=False)
