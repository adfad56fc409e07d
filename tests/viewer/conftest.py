"""Viewer fixtures: the demo incident recorded with its replays, and a live server on loopback."""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import pytest
import uvicorn

import replayable as rp
from replayable.store import Store, open_store
from replayable.trace import Run
from replayable.viewer import create_app


@dataclass
class Incident:
    """The demo incident (the wrong customer deleted) and two replays of it."""

    store: Store
    run: Run
    replay: Run
    fixed: Run


def record_incident(store: Store) -> Incident:
    """Run the demo agent until it deletes the wrong record, then replay it with and without
    the fix (as `replayable demo` does)."""
    from replayable.demo import agent

    agent.GUARD = False
    for _ in range(200):
        agent.reset_db()
        with rp.record(store, name="support-agent", tags={"demo": "incident"}) as run:
            result = agent.support_agent(agent.REQUEST)
        if result["customer"]["email"] != agent.OWNER_EMAIL:
            break
    else:  # pragma: no cover - 0.7**200
        raise AssertionError("the demo agent never picked the wrong record")
    with rp.replay(run.id, store=store) as same:
        agent.support_agent(agent.REQUEST)
    agent.GUARD = True
    try:
        with rp.replay(run.id, store=store, strict=False) as fixed:
            agent.support_agent(agent.REQUEST)
    finally:
        agent.GUARD = False
    return Incident(store, run, same.run, fixed.run)


@pytest.fixture
def store() -> Store:
    """The test's own SQLite store."""
    return open_store(None)


@pytest.fixture
def incident(store: Store) -> Incident:
    """The demo incident, recorded into the test's store, with a plain and a fixed replay."""
    from replayable._writer import stop_writer

    inc = record_incident(store)
    stop_writer(store)  # flush: the viewer reads what is on disk
    return inc


class LiveServer:
    """A uvicorn server on 127.0.0.1, on a free port, in a background thread."""

    def __init__(self, app: object) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, log_level="warning", lifespan="off")  # type: ignore[arg-type]
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, kwargs={"sockets": [self.sock]})

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("viewer did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(10)
        self.sock.close()


@pytest.fixture
def live_server(incident: Incident) -> Iterator[LiveServer]:
    """The viewer over the incident's store, served on loopback."""
    with LiveServer(create_app(incident.store)) as server:
        yield server
