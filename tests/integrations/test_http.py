"""Requests to other services (httpx sync/async, requests) as remote steps, with W3C context."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
from hypothesis import given
from hypothesis import strategies as st
from tests.integrations.echoserver import EchoServer

import replayable as rp
from replayable import _propagation as prop
from replayable.integrations import http

SECRET = "sk-live-abcdefghijklmnopqrstuvwxyz012345"


@pytest.fixture
def echo() -> Iterator[EchoServer]:
    """A loopback service answering with what it was sent."""
    srv = EchoServer().start()
    yield srv
    srv.stop()


@pytest.fixture
def keep() -> Iterator[Callable[[Any], Any]]:
    """Closes the clients a test makes (``keep(client)`` returns it)."""
    with ExitStack() as stack:
        yield stack.enter_context


def _flush() -> None:
    flush = getattr(rp, "flush", None)
    if flush is not None:
        flush()


def _context(headers: dict[str, str]) -> prop.Incoming:
    parsed = prop.parse(headers)
    assert parsed is not None
    return parsed


class TestPropagationOut:
    """Requests made inside a run carry traceparent and replayable's baggage member."""

    def test_httpx_sync_carries_the_run_and_step(
        self, echo: EchoServer, keep: Callable[[Any], Any]
    ) -> None:
        """An httpx request names the run's trace id, the calling step's span and address."""
        client = keep(rp.instrument(httpx.Client(base_url=echo.url), service="billing"))
        with rp.record() as run:
            client.post("/charge", json={"cents": 5})
        seen = _context(echo.requests[0]["headers"])
        step = next(run.events())
        assert seen.trace_id == run.trace_id
        assert seen.parent_span == prop.span_id(run.id, step.address)
        assert seen.caller == prop.Link(run.id, step.address)
        assert seen.mode == "record"
        assert step.address == "http:POST billing/charge/0"

    async def test_httpx_async_carries_context(self, echo: EchoServer) -> None:
        """An httpx.AsyncClient request carries the same context."""
        client = rp.instrument(httpx.AsyncClient(base_url=echo.url))
        async with client:
            async with rp.record() as run:
                await client.get("/items", params={"q": "mug"})
        seen = _context(echo.requests[0]["headers"])
        assert seen.caller is not None
        assert seen.caller.run == run.id
        assert seen.trace_id == run.trace_id

    def test_requests_carries_context(self, echo: EchoServer, keep: Callable[[Any], Any]) -> None:
        """A requests.Session request carries the same context."""
        session = keep(rp.instrument(requests.Session()))
        with rp.record() as run:
            session.get(echo.url + "/items")
        seen = _context(echo.requests[0]["headers"])
        assert seen.caller is not None
        assert seen.caller.run == run.id

    def test_outside_a_run_nothing_is_added(
        self, echo: EchoServer, keep: Callable[[Any], Any]
    ) -> None:
        """An instrumented client used outside any run sends the request as it is."""
        keep(rp.instrument(httpx.Client())).get(echo.url)
        keep(rp.instrument(requests.Session())).get(echo.url)
        for r in echo.requests:
            assert "traceparent" not in r["headers"]
            assert "baggage" not in r["headers"]

    def test_other_baggage_members_are_kept(
        self, echo: EchoServer, keep: Callable[[Any], Any]
    ) -> None:
        """Baggage the application set survives; replayable's member is added beside it."""
        client = keep(rp.instrument(httpx.Client()))
        with rp.record():
            client.get(echo.url, headers={"baggage": "tenant=acme,replayable=forged"})
        bag = echo.requests[0]["headers"]["baggage"]
        assert bag.startswith("tenant=acme,replayable=1!")
        assert bag.count("replayable=") == 1

    def test_opentelemetry_context_is_used_when_active(
        self, echo: EchoServer, keep: Callable[[Any], Any]
    ) -> None:
        """With an OpenTelemetry span current, traceparent is that span's, not a second one."""
        from opentelemetry.sdk.trace import TracerProvider

        tracer = TracerProvider().get_tracer("test")
        client = keep(rp.instrument(httpx.Client()))
        with tracer.start_as_current_span("handler") as span, rp.record():
            client.get(echo.url)
        ctx = span.get_span_context()
        seen = _context(echo.requests[0]["headers"])
        assert seen.trace_id == f"{ctx.trace_id:032x}"
        assert seen.parent_span == f"{ctx.span_id:016x}"

    def test_propagate_only_adds_headers_without_a_step(
        self, echo: EchoServer, keep: Callable[[Any], Any]
    ) -> None:
        """propagate_only=True sends the context but records no remote step."""
        client = keep(rp.instrument(httpx.Client(), propagate_only=True))
        with rp.record() as run:
            client.get(echo.url)
        assert list(run.events()) == []
        assert _context(echo.requests[0]["headers"]).caller is not None


class TestRemoteSteps:
    """Each request is a boundary of kind remote, keyed without volatile headers."""

    def test_step_name_kind_and_input(self, echo: EchoServer, keep: Callable[[Any], Any]) -> None:
        """The step is http:METHOD host/path, keyed by method, path, query and body."""
        client = keep(rp.instrument(httpx.Client()))
        with rp.record() as run:
            client.post(echo.url + "/charge?user=bob", json={"cents": 5})
        (ev,) = run.events()
        host = echo.url.removeprefix("http://")
        assert (ev.boundary, ev.kind) == (f"http:POST {host}/charge", "remote")
        assert ev.input["query"] == [["user", "bob"]]
        assert ev.input["body"] == {"json": {"cents": 5}}
        assert ev.output["status"] == 200

    def test_volatile_headers_leave_the_key_alone(
        self, echo: EchoServer, keep: Callable[[Any], Any]
    ) -> None:
        """Two identical requests differing in user-agent and trace headers share a key."""
        client = keep(rp.instrument(httpx.Client()))
        keys = []
        for agent in ("a/1", "b/2"):
            with rp.record() as run:
                client.get(echo.url + "/x", headers={"user-agent": agent})
            keys.append(next(run.events()).key)
        assert keys[0] == keys[1]

    def test_credentials_never_reach_the_disk(
        self, echo: EchoServer, tmp_path: Path, keep: Callable[[Any], Any]
    ) -> None:
        """Authorization headers and credential query fields are redacted in the store."""
        db = tmp_path / "t.db"
        client = keep(rp.instrument(httpx.Client()))
        with rp.record(db) as run:
            client.get(
                echo.url + f"/x?api_key={SECRET}", headers={"authorization": f"Bearer {SECRET}"}
            )
        _flush()
        assert SECRET.encode() not in db.read_bytes()
        assert next(run.events()).input["headers"]["authorization"] == "[REDACTED]"

    def test_query_fields_named_like_credentials_are_redacted(
        self, echo: EchoServer, tmp_path: Path, keep: Callable[[Any], Any]
    ) -> None:
        """A query field named like a credential (token, access_token, password) is redacted
        whatever its value looks like (the query is kept as pairs, which the store's
        redaction does not read by name: an OAuth or a signed-URL token reached the disk); a
        replay of the same request still matches."""
        db = tmp_path / "t.db"
        client = keep(rp.instrument(httpx.Client()))
        plain = ["plain-token-42", "ya29-abc-opaque", "hunter2-pw"]
        url = f"{echo.url}/x?token={plain[0]}&access_token={plain[1]}&password={plain[2]}&page=2"
        with rp.record(db) as run:
            client.get(url)
        _flush()
        data = db.read_bytes() + (
            db.with_name("t.db-wal").read_bytes() if db.with_name("t.db-wal").exists() else b""
        )
        for value in plain:
            assert value.encode() not in data
        assert next(run.events()).input["query"][-1] == ["page", "2"]
        with rp.replay(run.id, store=db) as r:
            client.get(url)
        assert r.ok, r.report()

    def test_a_key_in_the_path_is_redacted_from_the_step_name(
        self, echo: EchoServer, tmp_path: Path, keep: Callable[[Any], Any]
    ) -> None:
        """A key in a request's path (an API that takes it there) is redacted from the
        step's name and address, which the path makes; a replay still matches."""
        db = tmp_path / "t.db"
        client = keep(rp.instrument(httpx.Client(), service="bot"))
        with rp.record(db) as run:
            client.get(f"{echo.url}/keys/{SECRET}/send")
        _flush()
        (ev,) = run.events()
        assert SECRET not in ev.boundary
        assert SECRET not in ev.address
        for f in (db, tmp_path / "t.db-wal"):
            assert not f.exists() or SECRET.encode() not in f.read_bytes()
        with rp.replay(run.id, store=db) as r:
            client.get(f"{echo.url}/keys/{SECRET}/send")
        assert r.ok, r.report()

    def test_custom_names(self, echo: EchoServer, keep: Callable[[Any], Any]) -> None:
        """name= names the step from (method, host, path)."""
        client = keep(rp.instrument(httpx.Client(), name=lambda m, h, p: f"billing.{m.lower()}"))
        with rp.record() as run:
            client.get(echo.url + "/x")
        assert next(run.events()).boundary == "billing.get"

    def test_unsafe_methods_have_side_effects(self, keep: Callable[[Any], Any]) -> None:
        """POST changes the world by default, GET does not; side_effects= lists methods."""
        from replayable._remote import remote_boundary

        assert remote_boundary("http:POST a/b", True).side_effects
        client = keep(rp.instrument(httpx.Client(), side_effects=["GET"]))
        assert client._transport.options.changes_world("GET") is True
        assert client._transport.options.changes_world("POST") is False

    def test_instrumenting_twice_is_an_error(self, keep: Callable[[Any], Any]) -> None:
        """A client instrumented twice says so instead of nesting steps."""
        client = keep(rp.instrument(httpx.Client()))
        with pytest.raises(rp.UnsupportedClient, match="already"):
            rp.instrument(client)


class TestReplay:
    """In replay the recorded response is served as the library's own type, offline."""

    def _agent(self, client: Any, session: Any, url: str) -> list[Any]:
        a = client.post(url + "/charge", json={"cents": 5})
        b = session.get(url + "/items?x=1")
        return [
            (type(a).__name__, a.status_code, a.json(), a.headers["x-served-by"]),
            (type(b).__name__, b.status_code, b.json(), b.reason),
        ]

    def test_replay_serves_without_contacting_the_service(
        self, echo: EchoServer, keep: Callable[[Any], Any]
    ) -> None:
        """A replay returns httpx/requests responses equal to the recorded ones, no socket."""
        client = keep(rp.instrument(httpx.Client()))
        session = keep(rp.instrument(requests.Session()))
        with rp.record() as run:
            recorded = self._agent(client, session, echo.url)
        before = echo.connections
        with rp.replay(run.id) as r:
            replayed = self._agent(client, session, echo.url)
        assert replayed == recorded
        assert recorded[0][0] == "Response"
        assert recorded[1][1] == 200
        assert echo.connections == before
        assert r.ok

    async def test_async_replay_serves(self, echo: EchoServer) -> None:
        """An AsyncClient's request is served in replay too."""
        async with rp.instrument(httpx.AsyncClient()) as client:
            async with rp.record() as run:
                first = (await client.get(echo.url + "/a")).json()
            before = echo.connections
            async with rp.replay(run.id):
                again = (await client.get(echo.url + "/a")).json()
        assert again == first
        assert echo.connections == before

    def test_a_get_named_live_reaches_the_service(
        self, echo: EchoServer, keep: Callable[[Any], Any]
    ) -> None:
        """A remote call named in live= is sent for real, and the service sees replay mode."""
        client = keep(rp.instrument(httpx.Client(), service="echo"))
        with rp.record() as run:
            client.get(echo.url + "/a")
        with rp.replay(run.id, live=["http:GET echo/a"]) as r:
            client.get(echo.url + "/a")
        assert len(echo.requests) == 2
        assert _context(echo.requests[1]["headers"]).mode == "replay"
        assert _context(echo.requests[1]["headers"]).caller == prop.Link(
            r.run.id, "http:GET echo/a/0"
        )

    def test_a_post_named_live_is_refused(
        self, echo: EchoServer, keep: Callable[[Any], Any]
    ) -> None:
        """A side-effecting remote call is refused live unless allowed (or followed)."""
        client = keep(rp.instrument(httpx.Client(), service="echo"))
        with rp.record() as run:
            client.post(echo.url + "/charge")
        with pytest.raises(rp.SideEffectRefused):
            rp.replay(run.id, live=["http:POST echo/charge"])

    def test_a_changed_request_diverges(self, echo: EchoServer, keep: Callable[[Any], Any]) -> None:
        """A request whose body changed is a divergence at the remote step."""
        client = keep(rp.instrument(httpx.Client(), service="echo"))
        with rp.record() as run:
            client.post(echo.url + "/charge", json={"cents": 5})
        with pytest.raises(rp.Divergence, match="http:POST echo/charge"):
            with rp.replay(run.id):
                client.post(echo.url + "/charge", json={"cents": 6})


class TestProcessWide:
    """instrument(httpx) / instrument(requests) instruments every client created later."""

    def test_module_switch(self, echo: EchoServer) -> None:
        """Clients created after the switch record; after uninstrument they do not."""
        rp.instrument(httpx)
        rp.instrument(requests)
        try:
            with rp.record() as run, httpx.Client() as hc, requests.Session() as rs:
                hc.get(echo.url + "/a")
                rs.get(echo.url + "/b")
        finally:
            http.uninstrument(httpx)
            http.uninstrument(requests)
        assert [e.kind for e in run.events()] == ["remote", "remote"]
        with rp.record() as plain, httpx.Client() as hc:
            hc.get(echo.url)
        assert list(plain.events()) == []


class TestContextFormat:
    """The baggage member and traceparent round-trip and stay strict."""

    @given(st.text(min_size=1, max_size=300).filter(lambda s: s.isprintable()))
    def test_any_step_address_round_trips(self, step: str) -> None:
        """Every printable step address survives the baggage encoding."""
        headers = {
            "traceparent": prop.traceparent("a" * 32, "run1", step),
            "baggage": prop.baggage_entry("run1", step, "record"),
        }
        assert _context(headers).caller == prop.Link("run1", step)

    def test_follow_names_the_source(self) -> None:
        """A follow entry carries the recorded step to replay."""
        source = prop.Link("src1", "agent/0 > http:POST b/c/0")
        headers = {
            "traceparent": prop.traceparent("b" * 32, "run2", "x/0"),
            "baggage": prop.baggage_entry("run2", "x/0", "follow", source),
        }
        parsed = prop.parse(headers, service="billing")
        assert parsed is not None
        assert parsed.mode == "follow"
        assert parsed.source == prop.Link("src1", "agent/0 > http:POST b/c/0", "billing")

    def test_trace_id_is_lazy_and_kept_in_metadata(
        self, echo: EchoServer, keep: Callable[[Any], Any]
    ) -> None:
        """A run that never called out has no trace id; one that did keeps it in metadata."""
        with rp.record() as quiet:
            pass
        assert quiet.trace_id is None
        client = keep(rp.instrument(httpx.Client()))
        with rp.record() as run:
            client.get(echo.url)
        stored = rp.open_store(None).get_run(run.id)
        assert stored.trace_id == run.trace_id
        assert len(run.trace_id or "") == 32


def test_asyncio_gather_keeps_steps_apart(echo: EchoServer) -> None:
    """Concurrent requests in tasks each carry their own step."""

    async def go() -> None:
        async with rp.instrument(httpx.AsyncClient(), service="echo") as client:
            await asyncio.gather(*(client.get(f"{echo.url}/p{i}") for i in range(5)))

    with rp.record() as run:
        asyncio.run(go())
    steps = {e.address for e in run.events()}
    seen = {_context(r["headers"]).caller.step for r in echo.requests}  # type: ignore[union-attr]
    assert seen == steps
    assert len(steps) == 5


class TestHostileContext:
    """Whatever arrives in the headers, parsing never raises and never yields an unsafe link."""

    @given(st.text(max_size=200), st.text(max_size=400))
    def test_parse_never_raises(self, traceparent: str, baggage: str) -> None:
        """Arbitrary header text is parsed or ignored; a link it yields is well-formed."""
        parsed = prop.parse({"traceparent": traceparent, "baggage": baggage})
        if parsed is not None and parsed.caller is not None:
            assert ".." not in parsed.caller.run
            assert "/" not in parsed.caller.run
            assert all(ord(c) >= 32 for c in parsed.caller.step)
            assert len(parsed.caller.step) <= prop.MAX_STEP

    @given(
        st.text(alphabet="%0123456789abcdefABCDEF!.-_~rpecodlyfw", max_size=60),
        st.sampled_from(["record", "replay", "follow", "x"]),
    )
    def test_structured_garbage_never_raises(self, tail: str, mode: str) -> None:
        """A replayable member shaped right but filled with garbage is parsed or ignored."""
        tp = f"00-{'a' * 32}-{'1' * 16}-01"
        for value in (f"1!r1!{mode}!{tail}", f"1!r1!{mode}!a!{tail}!{tail}", f"1!{tail}!{mode}!a"):
            prop.parse({"traceparent": tp, "baggage": f"replayable={value}"})

    def test_invalid_utf8_in_a_step_is_refused(self) -> None:
        """A step whose percent-encoding is not UTF-8 (%FF) is ignored, not an error."""
        tp = f"00-{'a' * 32}-{'1' * 16}-01"
        parsed = prop.parse({"traceparent": tp, "baggage": "replayable=1!r1!record!%FF"})
        assert parsed is not None
        assert parsed.caller is None

    def test_too_many_members_are_refused(self) -> None:
        """A baggage header of hundreds of members is ignored as a whole."""
        many = ",".join(f"k{i}=v" for i in range(100)) + ",replayable=1!r1!record!a"
        parsed = prop.parse({"traceparent": f"00-{'a' * 32}-{'1' * 16}-01", "baggage": many})
        assert parsed is not None
        assert parsed.caller is None

    def test_an_overlong_step_is_refused(self) -> None:
        """A step address longer than MAX_STEP is not accepted."""
        entry = prop.baggage_entry("r1", "a" * (prop.MAX_STEP + 1), "record")
        parsed = prop.parse({"traceparent": f"00-{'a' * 32}-{'1' * 16}-01", "baggage": entry})
        assert parsed is not None
        assert parsed.caller is None


PII_KEY = "http-pii-key-" + "h" * 32


class TestPersonalData:
    """With pii, a request's path (a step's name and address) is pseudonymized like its input."""

    def _agent(self, client: Any, session: Any, url: str) -> list[Any]:
        a = client.get(url + "/customers/dana.whitfield@acme.io")
        b = session.get(url + "/phones/+14158675309/calls")
        return [a.status_code, b.status_code]

    def test_a_personal_value_in_a_path_is_off_disk_and_replays(
        self,
        echo: EchoServer,
        tmp_path: Path,
        keep: Callable[[Any], Any],
        monkeypatch: pytest.MonkeyPatch,
    ) -> None:
        """An email and a phone number in request paths are not in the store (step name,
        address, input or the echoed output), and a replay serves both with no divergence
        and no connection."""
        db = tmp_path / "t.db"
        client = keep(rp.instrument(httpx.Client()))
        session = keep(rp.instrument(requests.Session()))
        with rp.record(db, pii=rp.PII(key=PII_KEY)) as run:
            recorded = self._agent(client, session, echo.url)
        _flush()
        for f in sorted(tmp_path.glob("t.db*")):
            data = f.read_bytes()
            for part in (b"dana.whitfield", b"4158675309", b"415867"):
                assert part not in data, f"{f.name}: {part!r}"
        email = rp.PII(key=PII_KEY).pseudonymizer().text("dana.whitfield@acme.io")
        assert any(email in e.boundary and email in e.address for e in run.events())
        monkeypatch.setenv("REPLAYABLE_PII_KEY", PII_KEY)
        before = echo.connections
        with rp.replay(run.id, store=db) as r:
            replayed = self._agent(client, session, echo.url)
        assert replayed == recorded
        assert r.divergences == []
        assert echo.connections == before
