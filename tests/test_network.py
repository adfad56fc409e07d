"""The offline guard: a replay refuses outbound calls no boundary served; a recording flags model
calls no boundary recorded. Real SDK clients against the loopback model server."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Iterator
from typing import Any

import openai
import pytest
import requests
from tests.integrations.conftest import API_KEY
from tests.integrations.fakeserver import FakeLLMServer

import replayable as rp
from replayable import _network
from replayable.integrations.openai import instrument

MESSAGES = [{"role": "user", "content": "What is the weather?"}]


@pytest.fixture
def server() -> Iterator[FakeLLMServer]:
    """The sampling loopback model server."""
    srv = FakeLLMServer(seed=3).start()
    yield srv
    srv.stop()


def bare(server: FakeLLMServer) -> Any:
    """A real OpenAI client that is deliberately NOT instrumented."""
    return openai.OpenAI(base_url=server.openai_url, api_key=API_KEY, max_retries=0)


def chat(client: Any) -> str:
    out = client.chat.completions.create(model="gpt-4o", messages=MESSAGES)
    return str(out.choices[0].message.content)


def mixed(server: FakeLLMServer) -> None:
    """One call through an instrumented client, one through a client that is not."""
    chat(instrument(bare(server)))
    chat(bare(server))


def record_mixed(server: FakeLLMServer) -> rp.Run:
    """A run of :func:`mixed` (the recording warns about the second call)."""
    with pytest.warns(rp.ReplayableWarning, match="no boundary recorded it"):
        return record_run(server)


def record_run(server: FakeLLMServer) -> rp.Run:
    with rp.record() as run:
        mixed(server)
    return run


def replay_mixed(run: rp.Run, server: FakeLLMServer, **options: Any) -> None:
    with rp.replay(run.id, **options):
        mixed(server)


class TestReplayRefusesUnservedCalls:
    def test_an_uninstrumented_client_fails_clearly_and_reaches_no_socket(
        self, server: FakeLLMServer
    ) -> None:
        """The unrecorded call raises NetworkRefused naming the request and the client; the
        model server sees no request from the replay."""
        run = record_mixed(server)
        seen = len(server.requests)
        with pytest.raises(rp.NetworkRefused) as info:
            replay_mixed(run, server)
        msg = str(info.value)
        for part in ("POST http://127.0.0.1", "/chat/completions", "OpenAI client", "allow_net"):
            assert part in msg
        assert info.value.target.startswith("POST ")
        assert len(server.requests) == seen

    def test_the_refusal_survives_an_sdk_that_swallows_it(self, server: FakeLLMServer) -> None:
        """The SDK turns the refusal into its own connection error; the replay's exit raises
        the refusal anyway."""
        run = record_mixed(server)

        def swallowing() -> None:
            with rp.replay(run.id):
                chat(instrument(bare(server)))
                with contextlib.suppress(openai.APIConnectionError):
                    chat(bare(server))

        with pytest.raises(rp.NetworkRefused):
            swallowing()

    def test_allow_network_lets_the_call_out(self, server: FakeLLMServer) -> None:
        """allow_network=True, or a list naming the host, opts out of the guard."""
        run = record_mixed(server)
        for allow in (True, ["127.0.0.1"], [f"127.0.0.1:{server.port}"]):
            seen = len(server.requests)
            replay_mixed(run, server, allow_network=allow)
            assert len(server.requests) == seen + 1

    def test_a_host_list_not_naming_the_host_still_refuses(self, server: FakeLLMServer) -> None:
        """A host list only lets the hosts it names out."""
        run = record_mixed(server)
        with pytest.raises(rp.NetworkRefused):
            replay_mixed(run, server, allow_network=["api.other"])

    def test_a_live_boundary_may_go_out(self, server: FakeLLMServer) -> None:
        """A boundary named in live= runs and reaches the model through any client."""
        client = bare(server)
        ask = rp.boundary(kind="tool", name="net:ask")(lambda q: chat(client))
        with rp.record() as run:
            ask("q")
        seen = len(server.requests)
        with rp.replay(run.id, live=["net:ask"], strict=False):
            ask("q")
        assert len(server.requests) == seen + 1

    def test_a_raw_socket_to_a_recorded_model_endpoint_is_refused(
        self, server: FakeLLMServer
    ) -> None:
        """The recording keeps the model endpoints it talked to; in replay even a loopback
        socket to one of them is refused."""
        with rp.record() as run:
            chat(instrument(bare(server)))
        stored = rp.open_store(None).get_run(run.id)
        assert stored.metadata[_network.ENDPOINTS_KEY] == [f"127.0.0.1:{server.port}"]
        seen = len(server.requests)
        with pytest.raises(rp.NetworkRefused, match="model endpoint"), rp.replay(run.id):
            socket.create_connection(("127.0.0.1", server.port), timeout=2)
        assert len(server.requests) == seen

    def test_a_socket_to_a_non_loopback_address_is_refused(self) -> None:
        """Anything but loopback is refused before connecting (0.0.0.0 stays on this host
        should the guard ever fail); code that handles the refusal goes on."""
        noop = rp.boundary(kind="tool", name="net:noop")(lambda: 1)
        with rp.record() as run:
            noop()

        def attempt() -> None:
            with rp.replay(run.id):
                noop()
                with pytest.raises(rp.NetworkRefused, match=r"connect to 0\.0\.0\.0:9"):
                    socket.create_connection(("0.0.0.0", 9), timeout=1)

        attempt()  # handled by the code (a fallback to a local copy): the replay goes on

    def test_other_loopback_services_stay_reachable(self, server: FakeLLMServer) -> None:
        """A loopback server the recording did not see as a model (a database, a test
        service) is reachable in replay."""
        other = FakeLLMServer(seed=1).start()
        try:
            noop = rp.boundary(kind="tool", name="net:noop2")(lambda: 1)
            with rp.record() as run:
                noop()
            with rp.replay(run.id):
                noop()
                got = requests.get(f"{other.openai_url}/models", timeout=5)
            assert got.status_code == 501  # it answers POSTs only: the GET reached it
        finally:
            other.stop()

    def test_a_thread_without_the_replay_context_is_refused_too(
        self, server: FakeLLMServer
    ) -> None:
        """A raw thread (no rp.bind) making the call during a replay is refused as well."""
        run = record_mixed(server)
        good = instrument(bare(server))
        seen = len(server.requests)
        errors: list[BaseException] = []

        def worker() -> None:
            try:
                requests.post(
                    f"{server.openai_url}/chat/completions",
                    json={"model": "gpt-4o", "messages": MESSAGES},
                    timeout=5,
                )
            except BaseException as exc:
                errors.append(exc)

        def replay_with_thread() -> None:
            with rp.replay(run.id):
                chat(good)
                t = threading.Thread(target=worker)
                t.start()
                t.join()

        with pytest.raises(rp.NetworkRefused):
            replay_with_thread()
        assert [type(e) for e in errors] == [rp.NetworkRefused]
        assert len(server.requests) == seen


class TestHooksAreScoped:
    def test_everything_is_restored_after_the_run(self, server: FakeLLMServer) -> None:
        """The socket and HTTP hooks exist only while a run is active."""
        import httpx

        before = (socket.socket.__dict__.get("connect"), httpx.Client.__dict__["send"])
        with rp.record():
            assert "connect" in socket.socket.__dict__
            assert httpx.Client.__dict__["send"] is not before[1]
        assert (socket.socket.__dict__.get("connect"), httpx.Client.__dict__["send"]) == before
        assert not _network._HOOKS.installed

    def test_no_run_no_guard(self, server: FakeLLMServer) -> None:
        """Outside any run, an uninstrumented client calls out as usual."""
        seen = len(server.requests)
        chat(bare(server))
        assert len(server.requests) == seen + 1


class TestRecordingFlagsUnrecordedModelCalls:
    def test_warns_once_per_run(self, server: FakeLLMServer) -> None:
        """Two unrecorded model calls in one run warn once; an instrumented one not at all."""

        def twice() -> None:
            with rp.record():
                chat(bare(server))
                chat(bare(server))

        with pytest.warns(rp.ReplayableWarning) as caught:
            twice()
        assert len([w for w in caught if "no boundary recorded" in str(w.message)]) == 1

    def test_the_warning_shows_no_query_values(self, server: FakeLLMServer) -> None:
        """The warning names the endpoint, not its query string: a key passed as ?key=...
        would otherwise reach the logs in clear."""
        client = requests.Session()
        with pytest.warns(rp.ReplayableWarning) as caught, rp.record():
            client.post(
                f"{server.openai_url}/chat/completions?key=plain-key-value-42",
                json={"model": "m", "messages": [{"role": "user", "content": "hi"}]},
                timeout=10,
            )
        (message,) = [str(w.message) for w in caught if "no boundary recorded" in str(w.message)]
        assert "/chat/completions" in message
        assert "plain-key-value-42" not in message

    def test_recorded_calls_do_not_warn(self, server: FakeLLMServer) -> None:
        """Model calls made through an instrumented client are recorded, so nothing warns."""
        with rp.record() as run:
            chat(instrument(bare(server)))
        assert [e.boundary for e in run.events()] == ["openai:chat.completions.create"]

    def test_non_model_paths_do_not_warn(self, server: FakeLLMServer) -> None:
        """A request to another path (listing models) is not a model call."""
        with rp.record():
            requests.get(f"{server.openai_url}/models", timeout=5)


class TestModelPaths:
    @pytest.mark.parametrize(
        ("path", "model"),
        [
            ("/v1/chat/completions", True),
            ("/v1/responses", True),
            ("/v1/messages?beta=true", True),
            ("/v1/embeddings/", True),
            ("/v1/models", False),
            ("/health", False),
        ],
    )
    def test_known_model_api_paths(self, path: str, model: bool) -> None:
        """OpenAI-style and Anthropic model API paths are recognised, others are not."""
        assert _network.is_model_path(path) is model
