"""The OTLP/HTTP collector: real exporters post to it, each trace is kept once as a run, and
hostile requests are refused whole."""

from __future__ import annotations

import base64
import gzip
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import orjson
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor

from replayable._otlp._collect import Kept
from replayable.store import Store, open_store

from .conftest import LiveCollector, agent_trace, genai_messages, many_spans, to_json
from .test_import import chain, jspan, otlp_json, pb_request

PB = {"content-type": "application/x-protobuf"}


def traced_with_sdk(endpoint: str, compression: Compression = Compression.NoCompression) -> str:
    """Trace a two-span agent with the real SDK, exporting over OTLP/HTTP; its trace id."""
    provider = TracerProvider(resource=Resource.create({"service.name": "svc"}))
    provider.add_span_processor(
        BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint, compression=compression))
    )
    tracer = provider.get_tracer("app")
    with tracer.start_as_current_span("agent") as root:
        with tracer.start_as_current_span(
            "chat m",
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "m",
                "gen_ai.input.messages": genai_messages("hi"),
            },
        ):
            pass
        trace_id = f"{root.get_span_context().trace_id:032x}"
    provider.shutdown()
    return trace_id


class TestReceiving:
    def test_real_exporter_trace_becomes_one_run(
        self, store: Store, live_collector: Callable[..., LiveCollector]
    ) -> None:
        """The SDK's OTLP/HTTP exporter (protobuf, gzip) posts a trace; it is kept as one run."""
        c = live_collector()
        trace_id = traced_with_sdk(f"{c.url}/v1/traces", Compression.Gzip)
        (kept,) = c.wait_kept(1)
        assert kept.written
        assert kept.ended == "root span ended"
        run = store.get_run(f"otlp-{trace_id}")
        assert [e.kind for e in store.iter_events(run.id)] == ["span", "llm"]

    def test_json_gzip_and_the_langfuse_path(
        self, store: Store, live_collector: Callable[..., LiveCollector]
    ) -> None:
        """OTLP/JSON, gzipped, on Langfuse's path is accepted and kept."""
        c = live_collector()
        body = gzip.compress(orjson.dumps(to_json(agent_trace())))
        r = httpx.post(
            f"{c.url}/api/public/otel/v1/traces",
            content=body,
            headers={"content-type": "application/json", "content-encoding": "gzip"},
        )
        assert (r.status_code, r.json()) == (200, {})
        (kept,) = c.wait_kept(1)
        assert kept.run is not None
        assert kept.steps == 4

    def test_spans_of_one_trace_across_requests(
        self, store: Store, live_collector: Callable[..., LiveCollector]
    ) -> None:
        """Children sent before their root wait for it; one run holds them all."""
        c = live_collector()
        child = jspan("00000000000000b2", "00000000000000a1")
        root = jspan("00000000000000a1")
        for s in (child, root):
            r = httpx.post(f"{c.url}/v1/traces", json=otlp_json([s]))
            assert r.status_code == 200
        (kept,) = c.wait_kept(1)
        assert kept.steps == 2

    def test_a_trace_without_root_is_kept_after_idle(
        self, store: Store, live_collector: Callable[..., LiveCollector]
    ) -> None:
        """A trace whose root never arrives is kept once it has been idle."""
        c = live_collector(idle=0.3)
        httpx.post(
            f"{c.url}/v1/traces", json=otlp_json([jspan("00000000000000b2", "00000000000000a1")])
        )
        (kept,) = c.wait_kept(1)
        assert kept.ended == "idle, no root span"
        assert kept.written

    def test_two_collectors_one_postgres_store(
        self, pg_url: str, live_collector: Callable[..., LiveCollector]
    ) -> None:
        """The same trace sent to two collectors on one PostgreSQL store is one run."""
        a = live_collector(open_store(pg_url))
        b = live_collector(open_store(pg_url))
        body = agent_trace().SerializeToString()
        for c in (a, b):
            assert httpx.post(f"{c.url}/v1/traces", content=body, headers=PB).status_code == 200
        (ka,), (kb,) = a.wait_kept(1), b.wait_kept(1)
        assert sorted([ka.written, kb.written]) == [False, True]
        assert len(open_store(pg_url).list_runs()) == 1


class TestHostile:
    def test_malformed_requests_get_4xx_and_nothing_is_written(
        self, store: Store, live_collector: Callable[..., LiveCollector]
    ) -> None:
        """Bad protobuf, wrong JSON types, an unknown encoding: 4xx with a message, no run."""
        c = live_collector(idle=0.1)
        bad = [
            (b"\xff\x01garbage", PB),
            (b'{"resourceSpans": [{"scopeSpans": 5}]}', {"content-type": "application/json"}),
            (b"x", {"content-type": "application/x-protobuf", "content-encoding": "br"}),
            (b"not gzip", {"content-type": "application/x-protobuf", "content-encoding": "gzip"}),
        ]
        for body, headers in bad:
            r = httpx.post(f"{c.url}/v1/traces", content=body, headers=headers)
            assert 400 <= r.status_code < 500, r.text
            assert r.json()["message"]
        time.sleep(0.3)
        assert c.kept == []
        assert store.list_runs() == []

    def test_a_trace_with_odd_values_does_not_stop_the_collector(
        self, store: Store, live_collector: Callable[..., LiveCollector]
    ) -> None:
        """A span whose token count is a digit but no number ('\u00b2') is kept without it, and
        traces after it are kept too (its ValueError ended the sweeper: every later trace was
        answered 200 and never kept)."""
        c = live_collector(settle=0, idle=0.1)
        odd = jspan("00f067aa0ba902b7", **{"gen_ai.operation.name": "chat"})
        odd["attributes"].append(
            {"key": "gen_ai.usage.input_tokens", "value": {"stringValue": "\u00b2"}}
        )
        assert httpx.post(f"{c.url}/v1/traces", json=otlp_json([odd])).status_code == 200
        c.wait_kept(1)
        later = {**jspan("00f067aa0ba902b8"), "traceId": "0af7651916cd43dd8448eb211c80319d"}
        assert httpx.post(f"{c.url}/v1/traces", json=otlp_json([later])).status_code == 200
        first, second = c.wait_kept(2)
        assert first.run is not None, first.problem
        assert second.run is not None, second.problem
        assert len(store.list_runs()) == 2

    def test_a_failing_report_does_not_stop_the_collector(self, store: Store) -> None:
        """When reporting a kept trace fails (``collect``'s stdout a closed pipe), the
        collector goes on keeping the traces after it (the error ended its sweeper)."""
        seen: list[Kept] = []

        def report(kept: Kept) -> None:
            seen.append(kept)
            if len(seen) == 1:
                raise BrokenPipeError(32, "Broken pipe")

        with LiveCollector(store, settle=0, idle=0.1, on_kept=report) as c:
            for n in range(2):
                trace = {**jspan("00f067aa0ba902b7"), "traceId": f"{n + 1:032x}"}
                r = httpx.post(f"{c.url}/v1/traces", json=otlp_json([trace]))
                assert r.status_code == 200
                deadline = time.monotonic() + 10
                while len(seen) <= n:
                    assert time.monotonic() < deadline, f"trace {n + 1} not kept"
                    time.sleep(0.02)
        assert len(store.list_runs()) == 2

    def test_a_cycle_across_requests_is_refused(
        self, store: Store, live_collector: Callable[..., LiveCollector]
    ) -> None:
        """A request that would close a span cycle in a held trace is refused; the rest is kept."""
        c = live_collector(settle=60, idle=60)  # held until the sweep, however slow the machine
        a, b = "00000000000000a1", "00000000000000b2"
        assert httpx.post(f"{c.url}/v1/traces", json=otlp_json([jspan(a, b)])).status_code == 200
        r = httpx.post(f"{c.url}/v1/traces", json=otlp_json([jspan(b, a)]))
        assert r.status_code == 400
        assert "cycle" in r.json()["message"]
        (kept,) = c.collector.sweep(everything=True)  # the held trace, as at shutdown
        assert kept.steps == 1

    def test_huge_traces_and_bodies_are_413(
        self, store: Store, live_collector: Callable[..., LiveCollector]
    ) -> None:
        """100,000 spans in one request, or a body past the bound, get 413 and hold nothing."""
        c = live_collector(idle=0.1)
        r = httpx.post(f"{c.url}/v1/traces", content=many_spans(100_000), headers=PB, timeout=60)
        assert r.status_code == 413
        with socket.create_connection(("127.0.0.1", c.port), timeout=10) as sock:
            sock.sendall(
                b"POST /v1/traces HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                b"Content-Type: application/x-protobuf\r\nContent-Length: 1000000000000\r\n\r\n"
            )
            assert sock.recv(100).startswith(b"HTTP/1.1 413")
        time.sleep(0.3)
        assert store.list_runs() == []

    def test_a_deep_chain_or_a_huge_attribute_is_413(
        self, store: Store, live_collector: Callable[..., LiveCollector]
    ) -> None:
        """Spans nested past the bound, or one attribute past the value bound, get 413 with a
        message; a chain closed across two requests too; nothing is kept."""
        from replayable._otlp._decode import MAX_NESTING, MAX_VALUE

        c = live_collector(settle=60, idle=60)
        deep = chain(MAX_NESTING + 1)
        huge = pb_request([(1, None)], {"input.value": "x" * (MAX_VALUE + 1)})
        for body in (pb_request(deep), huge):
            r = httpx.post(f"{c.url}/v1/traces", content=body, headers=PB, timeout=60)
            assert r.status_code == 413, r.text
            assert "bound" in r.json()["message"]
        top, rest = deep[:MAX_NESTING], deep[MAX_NESTING:]
        assert httpx.post(f"{c.url}/v1/traces", content=pb_request(top), headers=PB).is_success
        r = httpx.post(f"{c.url}/v1/traces", content=pb_request(rest), headers=PB)
        assert r.status_code == 413, r.text
        (kept,) = c.collector.sweep(everything=True)  # only the first, in-bound request
        assert kept.steps == MAX_NESTING

    def test_token_and_host_checks(
        self, store: Store, live_collector: Callable[..., LiveCollector]
    ) -> None:
        """With a token, a request without it gets 401; bound locally, a foreign Host gets 400."""
        c = live_collector(token="s3cret-token")
        body = agent_trace().SerializeToString()
        assert httpx.post(f"{c.url}/v1/traces", content=body, headers=PB).status_code == 401
        ok = httpx.post(
            f"{c.url}/v1/traces",
            content=body,
            headers={**PB, "authorization": "Bearer s3cret-token"},
        )
        assert ok.status_code == 200
        for user, password, status in [
            ("pk-lf-1", "s3cret-token", 200),  # Langfuse's way: the token as the secret key
            ("", "s3cret-token", 200),
            ("s3cret-token", "other", 401),  # the user name is no password
            ("pk-lf-1", "s3cret-token-", 401),
        ]:
            basic = base64.b64encode(f"{user}:{password}".encode()).decode()
            r = httpx.post(
                f"{c.url}/v1/traces",
                content=body,
                headers={**PB, "authorization": f"Basic {basic}"},
            )
            assert r.status_code == status, (user, password)
        for broken in ["Basic !!!", "Basic " + base64.b64encode(b"no-colon").decode(), "Basic"]:
            r = httpx.post(
                f"{c.url}/v1/traces", content=body, headers={**PB, "authorization": broken}
            )
            assert r.status_code == 401, broken
        d = live_collector()
        r = httpx.post(f"{d.url}/v1/traces", content=body, headers={**PB, "host": "evil.example"})
        assert r.status_code == 400


class TestCommand:
    def test_public_bind_needs_a_token(self) -> None:
        """collect --host 0.0.0.0 without a token refuses to start and says why."""
        r = subprocess.run(
            [sys.executable, "-m", "replayable.cli", "collect", "--host", "0.0.0.0"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            env={k: v for k, v in os.environ.items() if k != "REPLAYABLE_VIEWER_TOKEN"},
        )
        assert r.returncode == 2
        assert "--auth-token" in r.stderr

    def test_collect_prints_one_line_per_run_kept(self, store: Store) -> None:
        """replayable collect, started as a command, keeps a posted trace and prints a line."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "replayable.cli",
                "collect",
                "--port",
                str(port),
                "--settle",
                "0",
            ],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            deadline = time.monotonic() + 30
            while True:
                try:
                    r = httpx.post(
                        f"http://127.0.0.1:{port}/v1/traces",
                        content=agent_trace().SerializeToString(),
                        headers=PB,
                    )
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline, "collect did not start"
                    time.sleep(0.1)
            assert r.status_code == 200
            deadline = time.monotonic() + 10
            while not store.list_runs():
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            proc.terminate()
            out, _ = proc.communicate(timeout=20)
        lines = [ln for ln in out.splitlines() if ln.startswith("kept run otlp-")]
        assert len(lines) == 1, out
        assert json.dumps("support")[1:-1] in lines[0]

    def test_port_zero_prints_the_port_it_listens_on(self, store: Store) -> None:
        """collect --port 0 (any free port, as --help says) prints the port it got, and a
        trace posted there is kept (it printed :0, which nothing can reach)."""
        proc = subprocess.Popen(
            [sys.executable, "-m", "replayable.cli", "collect", "--port", "0", "--settle", "0"],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert proc.stdout is not None
            first = proc.stdout.readline()
            port = int(first.split("http://127.0.0.1:", 1)[1].split("/", 1)[0])
            assert port != 0, first
            r = httpx.post(
                f"http://127.0.0.1:{port}/v1/traces",
                content=agent_trace().SerializeToString(),
                headers=PB,
            )
            assert r.status_code == 200
            deadline = time.monotonic() + 10
            while not store.list_runs():
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            proc.terminate()
            proc.communicate(timeout=20)

    def test_a_port_in_use_is_a_clear_error_not_a_listening_line(self) -> None:
        """collect on a port another process holds says so and exits 2, without first
        announcing that it listens there."""
        with socket.socket() as held:
            held.bind(("127.0.0.1", 0))
            held.listen()
            port = held.getsockname()[1]
            r = subprocess.run(
                [sys.executable, "-m", "replayable.cli", "collect", "--port", str(port)],
                check=False,
                capture_output=True,
                text=True,
                timeout=60,
            )
        assert r.returncode == 2, r.stdout + r.stderr
        assert "OTLP/HTTP on" not in r.stdout
        assert f"127.0.0.1:{port}" in r.stderr
        assert "--port" in r.stderr
        assert "Traceback" not in r.stderr

    def test_a_store_it_cannot_write_fails_before_listening(self, tmp_path: Path) -> None:
        """collect into a store it cannot write (a read-only directory of trace files, a
        SQLite path under a missing directory it cannot create) fails at start with the
        store's error: an exporter is never answered 200 for spans that cannot be kept."""
        (tmp_path / "traces").mkdir()
        for target in (tmp_path / "traces", Path("/proc/no-such-dir/x.db")):
            r = subprocess.run(
                [sys.executable, "-m", "replayable.cli", "collect", "--port", "0"],
                check=False,
                capture_output=True,
                text=True,
                timeout=60,
                env={**os.environ, "REPLAYABLE_STORE": str(target)},
            )
            assert r.returncode == 2, r.stdout + r.stderr
            assert "OTLP/HTTP on" not in r.stdout
            assert str(target) in r.stderr
            assert "Traceback" not in r.stderr
