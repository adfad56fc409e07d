"""Imported traces keep personal data out of the store as a recording does: ``import_otlp``,
``replayable import --format otlp`` and ``replayable collect`` pseudonymize every span before it
is written, checked on the bytes on disk."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from click.testing import CliRunner
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import Status, StatusCode

import replayable as rp
from replayable._otlp import import_otlp
from replayable.cli import main
from replayable.store import Store
from replayable.trace import verify_run

from .conftest import LiveCollector, genai_messages, to_json

KEY = "otlp-pii-key-" + "d" * 32
NAME = "Dana Whitfield"
VALUES = {
    "email": "dana.whitfield@acme.io",
    "phone": "+1 415-867-5309",
    "card": "4111 1111 1111 1111",
    "iban": "DE89 3704 0044 0532 0130 00",
    "ip": "81.2.69.160",
    "ssn": "123-45-6789",
    "name": NAME,
}
PII = rp.PII(names=[NAME], key=KEY)


def fragments(value: str) -> list[str]:
    """What of a value must not be on disk: as written, lower case, its digits, the email's
    local part, the surname."""
    out = [value, value.lower()]
    digits = "".join(c for c in value if c.isdigit())
    if len(digits) >= 9 and "." not in value:
        out.append(digits)
    if "@" in value:
        out.append(value.split("@", maxsplit=1)[0])
    if value == NAME:
        out.append("Whitfield")
    return out


def assert_off_disk(directory: Path, values: list[str]) -> None:
    """No fragment of ``values`` in any file of the store (the database and its WAL)."""
    rp.flush()
    files = sorted(directory.glob("traces.db*"))
    assert files
    for f in files:
        text = f.read_bytes().decode("utf-8", "replace").replace("\\n", "\n")
        for value in values:
            for part in fragments(value):
                assert part not in text, f"{f.name}: {part!r} is on disk"


def traced(value: str, exporter: Any = None) -> Any:
    """An agent traced by the real SDK with ``value`` in every place a span carries text: the
    trace name, a resource attribute, the prompt and the answer, a tool's arguments and
    result, an exception event and the root's error status. Returns the export request (or
    sends it to ``exporter``)."""
    memory = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "support", "enduser.id": value})
    )
    provider.add_span_processor(
        SimpleSpanProcessor(memory) if exporter is None else BatchSpanProcessor(exporter)
    )
    tracer = provider.get_tracer("opentelemetry.instrumentation.openai_v2", "2.4b0")
    with tracer.start_as_current_span(
        "invoke_agent support",
        attributes={
            "gen_ai.operation.name": "invoke_agent",
            "gen_ai.agent.name": "support",
            "langfuse.trace.name": f"ticket from {value}",
        },
    ) as root:
        with tracer.start_as_current_span(
            "chat gpt-4o-mini",
            attributes={
                "gen_ai.operation.name": "chat",
                "gen_ai.request.model": "gpt-4o-mini",
                "gen_ai.input.messages": genai_messages(f"Customer {value} wants a refund"),
                "gen_ai.output.messages": json.dumps(
                    [{"role": "assistant", "parts": [{"type": "text", "content": f"Ok {value}"}]}]
                ),
            },
        ):
            pass
        with tracer.start_as_current_span(
            "execute_tool lookup",
            attributes={
                "gen_ai.operation.name": "execute_tool",
                "gen_ai.tool.name": "lookup",
                "gen_ai.tool.call.arguments": json.dumps({"who": value}),
                "gen_ai.tool.call.result": json.dumps({"found": [value]}),
            },
        ) as tool:
            tool.record_exception(RuntimeError(f"lookup slow for {value}"))
        with tracer.start_as_current_span(f"fetch profile of {value}"):
            pass  # a span of no convention: its name is the step's name and address
        with tracer.start_as_current_span("x" * (120 - len(value) // 2) + f" {value} tail"):
            pass  # a name clipped (128 characters) through the value
        root.set_status(Status(StatusCode.ERROR, f"refund refused for {value}"))
    provider.shutdown()
    return None if exporter is not None else encode_spans(memory.get_finished_spans())


def write_file(path: Path, value: str) -> Path:
    """The trace as the Collector file exporter writes it (one JSON line)."""
    path.write_bytes(orjson.dumps(to_json(traced(value))) + b"\n")
    return path


class TestImport:
    @pytest.mark.parametrize("kind", list(VALUES))
    def test_every_kind_in_every_span_place_is_off_disk(
        self, kind: str, store: Store, tmp_path: Path
    ) -> None:
        """Each kind, in the trace name, resource, prompt, answer, tool arguments and result,
        exception event, error status and a span's name (a step's name and address), is absent
        from the database and its WAL; the pseudonym is the one a recording gives, and the
        run's chain verifies."""
        value = VALUES[kind]
        ((run, written),) = import_otlp(write_file(tmp_path / "t.jsonl", value), store, pii=PII)
        assert written
        assert_off_disk(tmp_path, [value])
        events = list(store.iter_events(run.id))
        dump = json.dumps([[e.input, e.output, e.error, e.meta] for e in events])
        pseudonym = PII.pseudonymizer().text(value)
        assert pseudonym != value
        assert pseudonym in dump
        assert pseudonym in (store.get_run(run.id).name or "")
        assert any(pseudonym in e.address for e in events)
        assert verify_run(store.get_run(run.id), events).ok
        assert store.get_run(run.id).metadata["pii"]["key_id"] == PII.pseudonymizer().key_id

    def test_the_environment_switches_it_on(
        self, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """With $REPLAYABLE_PII=1 and the key in the environment, an import with no pii=
        pseudonymizes too."""
        monkeypatch.setenv("REPLAYABLE_PII", "1")
        monkeypatch.setenv("REPLAYABLE_PII_KEY", KEY)
        import_otlp(write_file(tmp_path / "t.jsonl", VALUES["email"]), store)
        assert_off_disk(tmp_path, [VALUES["email"]])

    def test_no_key_is_a_clear_error_and_nothing_is_written(
        self, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """pii on without a key: PIIKeyError before any run is written."""
        monkeypatch.setenv("REPLAYABLE_PII", "1")
        with pytest.raises(rp.PIIKeyError, match="REPLAYABLE_PII_KEY"):
            import_otlp(write_file(tmp_path / "t.jsonl", VALUES["email"]), store)
        assert store.list_runs() == []

    def test_the_import_command_with_pii(
        self, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """replayable import --format otlp --pii writes pseudonyms; without a key it fails
        with exit 2 and one line, and writes nothing."""
        path = write_file(tmp_path / "t.jsonl", VALUES["phone"])
        bad = CliRunner().invoke(main, ["import", "--format", "otlp", "--pii", str(path)])
        assert bad.exit_code == 2
        assert "REPLAYABLE_PII_KEY" in bad.output
        assert "Traceback" not in bad.output
        assert not (tmp_path / "traces.db").exists() or store.list_runs() == []
        monkeypatch.setenv("REPLAYABLE_PII_KEY", KEY)
        ok = CliRunner().invoke(main, ["import", "--format", "otlp", "--pii", str(path)])
        assert ok.exit_code == 0, ok.output
        assert_off_disk(tmp_path, [VALUES["phone"]])
        assert VALUES["phone"] not in ok.output

    def test_pii_goes_with_otlp_only(self, tmp_path: Path) -> None:
        """--pii on a replayable trace file is refused and names the command that fixes one."""
        path = tmp_path / "t.jsonl"
        path.write_text("{}\n")
        r = CliRunner().invoke(main, ["import", "--pii", str(path)])
        assert r.exit_code == 2
        assert "scan --pii --fix" in r.output


class TestCollect:
    def test_a_live_collector_keeps_pseudonyms(
        self, store: Store, tmp_path: Path, live_collector: Callable[..., LiveCollector]
    ) -> None:
        """The SDK's OTLP/HTTP exporter posts a trace with every kind in it to a collector
        with pii: the stored run holds pseudonyms only."""
        c = live_collector(pii=PII.pseudonymizer())
        everything = " / ".join(VALUES.values())
        traced(everything, OTLPSpanExporter(endpoint=f"{c.url}/v1/traces"))
        (kept,) = c.wait_kept(1)
        assert kept.written
        assert kept.run is not None
        assert NAME not in (kept.run.name or "")
        assert_off_disk(tmp_path, list(VALUES.values()))

    def test_the_collect_command_with_pii_from_the_environment(
        self, store: Store, tmp_path: Path
    ) -> None:
        """replayable collect under $REPLAYABLE_PII=1 keeps a posted trace pseudonymized,
        and its printed line holds no personal value."""
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        env = {**os.environ, "REPLAYABLE_PII": "1", "REPLAYABLE_PII_KEY": KEY}
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
            env=env,
        )
        try:
            body = traced(VALUES["email"]).SerializeToString()
            deadline = time.monotonic() + 60
            while True:
                try:
                    r = httpx.post(
                        f"http://127.0.0.1:{port}/v1/traces",
                        content=body,
                        headers={"content-type": "application/x-protobuf"},
                    )
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline, "collect did not start"
                    time.sleep(0.1)
            assert r.status_code == 200
            deadline = time.monotonic() + 30
            while not store.list_runs():
                assert time.monotonic() < deadline
                time.sleep(0.05)
        finally:
            proc.terminate()
            out, _ = proc.communicate(timeout=30)
        assert "kept run otlp-" in out, out
        assert "dana.whitfield" not in out
        assert_off_disk(tmp_path, [VALUES["email"]])

    def test_the_collect_command_without_a_key_refuses_to_start(self) -> None:
        """collect --pii with no key exits 2 with one line naming the key, before binding."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("REPLAYABLE_PII")}
        r = subprocess.run(
            [sys.executable, "-m", "replayable.cli", "collect", "--pii", "--port", "0"],
            check=False,
            capture_output=True,
            text=True,
            timeout=60,
            env=env,
        )
        assert r.returncode == 2
        assert "REPLAYABLE_PII_KEY" in r.stderr
        assert "Traceback" not in r.stderr
