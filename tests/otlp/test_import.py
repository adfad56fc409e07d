"""OTLP export requests and files read into runs: encodings, conventions, the run's shape, and
hostile input refused whole."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import orjson
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import replayable as rp
from replayable._otlp import _decode as decode_mod
from replayable._otlp import build_run, decode_request, import_otlp, read_otlp_file, runs_of
from replayable._otlp._conventions import read_span
from replayable._otlp._decode import MAX_BODY, MAX_SPANS, Span, SpanEvent, decode_json
from replayable.cli import main
from replayable.store import Store
from replayable.trace import verify_run

from .conftest import SECRET, agent_trace, many_spans, to_json

TRACE = "0af7651916cd43dd8448eb211c80319c"


def otlp_json(spans: list[dict[str, Any]], scope: str = "test") -> dict[str, Any]:
    """One OTLP/JSON export request of hand-written spans (ids in hex, as the spec writes)."""
    return {
        "resourceSpans": [
            {
                "resource": {
                    "attributes": [{"key": "service.name", "value": {"stringValue": "svc"}}]
                },
                "scopeSpans": [{"scope": {"name": scope, "version": "1.0"}, "spans": spans}],
            }
        ]
    }


def jspan(span_id: str, parent: str | None = None, **attrs: Any) -> dict[str, Any]:
    """A hand-written OTLP/JSON span with string attributes."""
    out: dict[str, Any] = {
        "traceId": TRACE,
        "spanId": span_id,
        "name": f"span {span_id[-2:]}",
        "kind": 1,
        "startTimeUnixNano": str(1_700_000_000_000_000_000 + int(span_id[-2:], 16)),
        "endTimeUnixNano": str(1_700_000_000_500_000_000),
        "attributes": [{"key": k, "value": {"stringValue": v}} for k, v in attrs.items()],
    }
    if parent:
        out["parentSpanId"] = parent
    return out


def span(attrs: dict[str, Any], events: list[SpanEvent] | None = None) -> Span:
    """A decoded span with these attributes."""
    return Span(TRACE, "00f067aa0ba902b7", None, "s", attributes=attrs, events=events or [])


class TestEncodings:
    def test_protobuf_and_json_read_the_same(self) -> None:
        """A request read as protobuf and as OTLP/JSON gives the same spans."""
        request = agent_trace()
        a = decode_request(request.SerializeToString(), "application/x-protobuf")
        b = decode_request(orjson.dumps(to_json(request)), "application/json; charset=utf-8")
        assert [(s.span_id, s.parent_id, s.attributes) for s in a] == [
            (s.span_id, s.parent_id, s.attributes) for s in b
        ]
        assert len(a) == 4

    def test_gzip_bodies(self) -> None:
        """A gzip Content-Encoding is undone before reading."""
        body = gzip.compress(agent_trace().SerializeToString())
        assert len(decode_request(body, "application/x-protobuf", "gzip")) == 4

    def test_any_value_variants(self) -> None:
        """AnyValue ints (as strings), doubles, bools, arrays, key lists and bytes become JSON."""
        s = jspan("00f067aa0ba902b7")
        s["attributes"] = [
            {"key": "i", "value": {"intValue": "9007199254740993"}},
            {"key": "d", "value": {"doubleValue": 0.5}},
            {"key": "b", "value": {"boolValue": True}},
            {"key": "a", "value": {"arrayValue": {"values": [{"stringValue": "x"}]}}},
            {
                "key": "kv",
                "value": {"kvlistValue": {"values": [{"key": "k", "value": {"intValue": 1}}]}},
            },
            {"key": "y", "value": {"bytesValue": "AAE="}},
        ]
        (got,) = decode_json(otlp_json([s]))
        assert got.attributes == {
            "i": 9007199254740993,
            "d": 0.5,
            "b": True,
            "a": ["x"],
            "kv": {"k": 1},
            "y": "AAE=",
        }


class TestMalformed:
    @pytest.mark.parametrize(
        ("body", "ctype"),
        [
            (b"\xff\xff\xff\xff", "application/x-protobuf"),
            (b"not json", "application/json"),
            (b"[1, 2]", "application/json"),
            (b'{"resourceSpans": "x"}', "application/json"),
            (
                orjson.dumps(
                    otlp_json([{**jspan("00f067aa0ba902b7"), "startTimeUnixNano": "soon"}])
                ),
                "application/json",
            ),
            (
                orjson.dumps(otlp_json([{**jspan("00f067aa0ba902b7"), "kind": [1]}])),
                "application/json",
            ),
            (
                orjson.dumps(otlp_json([{**jspan("00f067aa0ba902b7"), "spanId": "zz"}])),
                "application/json",
            ),
            (
                orjson.dumps(otlp_json([{**jspan("00f067aa0ba902b7"), "traceId": ""}])),
                "application/json",
            ),
        ],
        ids=["protobuf", "json", "array", "spans-type", "time-type", "kind", "hex", "no-trace"],
    )
    def test_malformed_bodies_are_refused(self, body: bytes, ctype: str) -> None:
        """Bodies that are not OTLP raise InvalidOtlp with status 400 and say what is wrong."""
        with pytest.raises(rp.InvalidOtlp) as err:
            decode_request(body, ctype)
        assert err.value.status == 400
        assert str(err.value)

    def test_gzip_bomb_is_refused(self) -> None:
        """A body that unzips past the bound is refused with 413 without unzipping all of it."""
        bomb = gzip.compress(b"\0" * (MAX_BODY + 1024))
        with pytest.raises(rp.InvalidOtlp) as err:
            decode_request(bomb, "application/x-protobuf", "gzip")
        assert err.value.status == 413

    def test_unknown_media_type_is_415(self) -> None:
        """A Content-Type that is neither protobuf nor JSON gets 415."""
        with pytest.raises(rp.InvalidOtlp) as err:
            decode_request(b"x", "text/plain")
        assert err.value.status == 415

    def test_too_many_spans_is_413(self) -> None:
        """A request of 100,000 spans is refused with 413, naming the bound."""
        with pytest.raises(rp.InvalidOtlp) as err:
            decode_request(many_spans(100_000), "application/x-protobuf")
        assert err.value.status == 413
        assert str(MAX_SPANS) in str(err.value)

    def test_too_many_json_spans_is_413_before_parsing(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """OTLP/JSON over the span bound is refused before the protobuf mapping builds it."""
        monkeypatch.setattr(decode_mod, "MAX_SPANS", 10)
        spans = [jspan(f"{i + 1:016x}") for i in range(11)]
        with pytest.raises(rp.InvalidOtlp) as err:
            decode_json(otlp_json(spans))
        assert err.value.status == 413
        assert "11 spans" in str(err.value)

    def test_span_cycle_is_refused(self) -> None:
        """Spans that are their own ancestors are refused; so is a span that is its own parent."""
        a, b = "00000000000000a1", "00000000000000b2"
        with pytest.raises(rp.InvalidOtlp, match="cycle"):
            runs_of(decode_json(otlp_json([jspan(a, b), jspan(b, a)])))
        with pytest.raises(rp.InvalidOtlp, match="cycle"):
            runs_of(decode_json(otlp_json([jspan(a, a)])))

    @settings(max_examples=60, deadline=None)
    @given(st.binary(max_size=300))
    def test_arbitrary_bytes_never_escape_as_another_error(self, body: bytes) -> None:
        """Whatever the bytes, reading them gives spans or InvalidOtlp, never another error."""
        for ctype in ("application/x-protobuf", "application/json"):
            try:
                for run, _ in runs_of(decode_request(body, ctype)):
                    assert run.id.startswith("otlp-")
            except rp.InvalidOtlp:
                pass


class TestConventions:
    def test_genai_messages_as_attributes(self) -> None:
        """GenAI chat spans give an llm step: model, messages, tool calls, finish, usage."""
        _run, events = build_run(decode_request(agent_trace().SerializeToString(), ""))
        kinds = [(e.kind, e.boundary) for e in events]
        assert kinds == [
            ("agent", "agent:support"),
            ("llm", "llm:gpt-4o-mini"),
            ("tool", "tool:refund"),
            ("llm", "llm:gpt-4o-mini"),
        ]
        first = events[1]
        assert first.input["model"] == "gpt-4o-mini"
        assert first.input["parameters"] == {"temperature": 0.0}
        assert first.output["choices"][0] == {
            "message": {
                "role": "assistant",
                "tool_calls": [{"id": "call_1", "name": "refund", "arguments": {"order": 7}}],
            },
            "finish_reason": "tool_call",
        }
        assert first.meta["usage"] == {"input_tokens": 12, "output_tokens": 5}
        assert first.meta["response_model"] == "gpt-4o-mini-2024-07-18"
        assert events[2].input == {"order": 7}
        assert events[2].output == {"refunded": True}
        assert events[3].output["choices"][0]["message"]["content"] == "Refunded order 7."

    def test_genai_messages_as_span_events(self) -> None:
        """Older GenAI spans carry messages as gen_ai.*.message and gen_ai.choice events."""
        view = read_span(
            span(
                {"gen_ai.operation.name": "chat", "gen_ai.request.model": "m"},
                [
                    SpanEvent("gen_ai.system.message", 1, {"content": "be brief"}),
                    SpanEvent("gen_ai.user.message", 2, {"content": "hi"}),
                    SpanEvent(
                        "gen_ai.choice",
                        3,
                        {
                            "finish_reason": "tool_calls",
                            "message": json.dumps(
                                {
                                    "tool_calls": [
                                        {
                                            "id": "c",
                                            "type": "function",
                                            "function": {"name": "f", "arguments": '{"x":1}'},
                                        }
                                    ]
                                }
                            ),
                        },
                    ),
                ],
            )
        )
        assert view.kind == "llm"
        assert view.content
        assert view.input["messages"] == [
            {"role": "system", "content": "be brief"},
            {"role": "user", "content": "hi"},
        ]
        assert view.output["choices"] == [
            {
                "message": {
                    "role": "assistant",
                    "tool_calls": [{"id": "c", "name": "f", "arguments": {"x": 1}}],
                },
                "finish_reason": "tool_calls",
            }
        ]

    def test_openinference_llm_and_tool(self) -> None:
        """OpenInference flattened messages, tool calls, parameters and token counts map."""
        llm = read_span(
            span(
                {
                    "openinference.span.kind": "LLM",
                    "llm.model_name": "gpt-4o",
                    "llm.invocation_parameters": '{"temperature": 0.2, "model": "gpt-4o"}',
                    "llm.input_messages.0.message.role": "user",
                    "llm.input_messages.0.message.content": "hi",
                    "llm.output_messages.0.message.role": "assistant",
                    "llm.output_messages.0.message.tool_calls.0.tool_call.id": "c1",
                    "llm.output_messages.0.message.tool_calls.0.tool_call.function.name": "f",
                    "llm.output_messages.0.message.tool_calls.0.tool_call.function.arguments": "{}",
                    "llm.token_count.prompt": 3,
                    "llm.token_count.completion": 4,
                }
            )
        )
        assert llm.input == {
            "model": "gpt-4o",
            "messages": [{"role": "user", "content": "hi"}],
            "parameters": {"temperature": 0.2},
        }
        assert llm.output["choices"][0]["message"]["tool_calls"] == [
            {"id": "c1", "name": "f", "arguments": {}}
        ]
        assert llm.meta["usage"] == {"input_tokens": 3, "output_tokens": 4}
        tool = read_span(
            span(
                {
                    "openinference.span.kind": "TOOL",
                    "tool.name": "refund",
                    "input.value": '{"order": 7}',
                    "output.value": "done",
                }
            )
        )
        assert (tool.kind, tool.name, tool.input, tool.output) == (
            "tool",
            "refund",
            {"order": 7},
            "done",
        )

    @pytest.mark.parametrize(
        ("kind", "expected"),
        [
            ("AGENT", "agent"),
            ("CHAIN", "chain"),
            ("RETRIEVER", "retrieval"),
            ("EMBEDDING", "embedding"),
        ],
    )
    def test_openinference_kinds(self, kind: str, expected: str) -> None:
        """Each OpenInference span kind becomes its step kind."""
        assert read_span(span({"openinference.span.kind": kind})).kind == expected

    def test_langfuse_generation(self) -> None:
        """A Langfuse generation's input messages and output message map to an llm step."""
        view = read_span(
            span(
                {
                    "langfuse.observation.type": "generation",
                    "langfuse.observation.model.name": "gpt-4o",
                    "langfuse.observation.input": '[{"role": "user", "content": "hi"}]',
                    "langfuse.observation.output": '{"role": "assistant", "content": "hello"}',
                    "langfuse.observation.usage_details": '{"input": 2, "output": 1}',
                }
            )
        )
        assert view.convention == "langfuse"
        assert view.input["messages"] == [{"role": "user", "content": "hi"}]
        assert view.output["choices"][0]["message"] == {"role": "assistant", "content": "hello"}
        assert view.meta["usage"] == {"input_tokens": 2, "output_tokens": 1}

    def test_logfire_request_and_response_data(self) -> None:
        """Logfire's request_data/response_data give the llm step beside its gen_ai.* attributes."""
        view = read_span(
            span(
                {
                    "request_data": '{"model": "gpt-4o", "messages": [{"role": "user", '
                    '"content": "hi"}], "temperature": 1}',
                    "response_data": '{"message": {"role": "assistant", "content": "yo"}, '
                    '"usage": {"prompt_tokens": 2, "completion_tokens": 1}}',
                    "gen_ai.system": "openai",
                    "gen_ai.response.finish_reasons": ["stop"],
                }
            )
        )
        assert (view.convention, view.kind) == ("logfire", "llm")
        assert view.input["parameters"] == {"temperature": 1}
        assert view.output["choices"] == [
            {"message": {"role": "assistant", "content": "yo"}, "finish_reason": "stop"}
        ]

    def test_unknown_spans_are_kept_as_span_steps(self) -> None:
        """A span of no known convention is a step of kind span with its attributes."""
        view = read_span(span({"http.method": "GET"}))
        assert (view.kind, view.input) == ("span", {"http.method": "GET"})

    def test_missing_content_is_marked_with_the_setting(self) -> None:
        """A chat span without message content is marked not captured, naming the setting."""
        _, events = build_run(
            decode_request(agent_trace(with_content=False).SerializeToString(), "")
        )
        llm = events[1]
        assert llm.meta["otel"]["content_captured"] is False
        assert (
            "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT" in llm.meta["otel"]["capture_hint"]
        )
        assert "messages" in llm.meta["otel"]["not_carried"]


class TestRun:
    def test_tree_timing_and_source(self) -> None:
        """Parent/child, start order, timing and the source convention are kept; chain verifies."""
        run, events = build_run(decode_request(agent_trace().SerializeToString(), ""))
        assert run.id.startswith("otlp-")
        assert run.name == "support"
        assert [e.parent_seq for e in events] == [None, 0, 0, 0]
        assert [e.address for e in events] == [
            "agent:support/0",
            "agent:support/0 > llm:gpt-4o-mini/0",
            "agent:support/0 > tool:refund/0",
            "agent:support/0 > llm:gpt-4o-mini/1",
        ]
        assert all(e.duration_ns > 0 and e.started_at >= run.started_at for e in events)
        assert [e.started_at for e in events] == sorted(e.started_at for e in events)
        (conv,) = run.metadata["source"]["conventions"]
        assert conv["convention"] == "gen_ai"
        assert conv["scope"] == "opentelemetry.instrumentation.openai_v2"
        assert conv["scope_version"] == "2.4b0"
        assert run.metadata["source"]["not_carried"] == {"llm": ["tools"]}
        assert run.environment["resource"]["service.name"] == "support"
        assert verify_run(run, events).ok

    def test_secrets_are_redacted_before_writing(self, store: Store) -> None:
        """A key in a traced prompt is not in the store, only its redaction marker."""
        path = Path("t.pb")
        path.write_bytes(agent_trace().SerializeToString())
        ((run, written),) = import_otlp(path, store)
        assert written
        dump = b"".join(
            b"".join(x for x in e.stored_fields() if x) for e in store.iter_events(run.id)
        )
        assert SECRET.encode() not in dump
        assert b"[REDACTED]" in dump

    def test_a_key_in_a_span_or_agent_or_tool_name_is_redacted(
        self, store: Store, tmp_path: Path
    ) -> None:
        """A key in a span's name, an agent's or a tool's name (which name the step and every
        address below it) is redacted before writing: only personal data was taken out of
        names, so keys reached the store in clear in boundaries and addresses."""
        agent = jspan(
            "00f067aa0ba902b7",
            **{"gen_ai.operation.name": "invoke_agent", "gen_ai.agent.name": f"bot {SECRET}"},
        )
        tool = jspan(
            "00f067aa0ba902b8",
            "00f067aa0ba902b7",
            **{"gen_ai.operation.name": "execute_tool", "gen_ai.tool.name": f"t {SECRET}"},
        )
        plain = {**jspan("00f067aa0ba902b9", "00f067aa0ba902b7"), "name": f"GET /x?k={SECRET}"}
        path = tmp_path / "t.json"
        path.write_bytes(orjson.dumps(otlp_json([agent, tool, plain])))
        ((run, _),) = import_otlp(path, store)
        rp.flush()
        events = list(store.iter_events(run.id))
        assert all(SECRET not in e.boundary and SECRET not in e.address for e in events)
        assert [e.kind for e in events] == ["agent", "tool", "span"]
        db = Path(store.url.removeprefix("sqlite:///"))
        for f in (db, db.with_name(db.name + "-wal")):
            assert not f.exists() or SECRET.encode() not in f.read_bytes()

    def test_error_status_is_kept_without_importing_its_type(self) -> None:
        """A failed root span makes an error run; its exception type is never imported."""
        run, _ = build_run(decode_request(agent_trace(fail=True).SerializeToString(), ""))
        assert run.status == "error"
        assert run.error is not None
        assert run.error["type"] == "replayable.errors:RecordedError"
        assert "refund service down" in run.error["message"]

    def test_orphans_and_resent_spans(self) -> None:
        """A span whose parent never arrived is top level; a span sent twice is kept once."""
        spans = decode_json(
            otlp_json([jspan("00000000000000a1", "00000000000000ff"), jspan("00000000000000a1")])
        )
        _, events = build_run(spans)
        assert len(events) == 1
        assert events[0].parent_seq is None


class TestFiles:
    def test_collector_file_exporter_round_trip(self, store: Store, tmp_path: Path) -> None:
        """The file exporter's JSON lines import as one run per trace, every span a step."""
        a, b = agent_trace(), agent_trace(prompt="Cancel order 9")
        path = tmp_path / "traces.jsonl"
        path.write_bytes(b"\n".join(orjson.dumps(to_json(r)) for r in (a, b)) + b"\n")
        spans = read_otlp_file(path)
        got = import_otlp(path, store)
        assert [w for _, w in got] == [True, True]
        for run, _ in got:
            events = list(store.iter_events(run.id))
            assert {e.meta["otel"]["span_id"] for e in events} == {
                s.span_id for s in spans if run.id == f"otlp-{s.trace_id}"
            }
        assert [w for _, w in import_otlp(path, store)] == [False, False]

    def test_a_bad_line_names_its_number_and_nothing_is_written(
        self, store: Store, tmp_path: Path
    ) -> None:
        """A damaged line fails the whole import with its line number."""
        path = tmp_path / "traces.jsonl"
        path.write_bytes(orjson.dumps(to_json(agent_trace())) + b'\n{"resourceSpans": 1}\n')
        with pytest.raises(rp.InvalidOtlp) as err:
            import_otlp(path, store)
        assert err.value.line == 2
        assert store.list_runs() == []

    @pytest.mark.parametrize(
        ("content", "says"),
        [
            (bytes(range(256)), "not an OTLP protobuf"),
            (b"[1, 2, 3]\n", "a JSON object, not an array"),
            (b"null\n", "a JSON object, not null"),
        ],
    )
    def test_an_unreadable_file_is_named_in_the_error(
        self, store: Store, tmp_path: Path, content: bytes, says: str
    ) -> None:
        """A file that is neither OTLP protobuf nor an OTLP/JSON object fails naming the file
        (several may be imported at once) and saying what it is, JSON read as JSON."""
        good, bad = tmp_path / "good.jsonl", tmp_path / "exported.bin"
        good.write_bytes(orjson.dumps(to_json(agent_trace())) + b"\n")
        bad.write_bytes(content)
        result = CliRunner().invoke(main, ["import", "--format", "otlp", str(good), str(bad)])
        assert result.exit_code == 2
        assert "exported.bin" in result.output
        assert says in result.output
        assert "Traceback" not in result.output
        assert store.list_runs() == []

    def test_a_json_file_with_a_byte_order_mark_imports(self, store: Store, tmp_path: Path) -> None:
        """A file-exporter file saved with a UTF-8 byte order mark (Windows editors and
        PowerShell write one) reads as the JSON it is, not as corrupt protobuf."""
        path = tmp_path / "traces.jsonl"
        path.write_bytes(b"\xef\xbb\xbf" + orjson.dumps(to_json(agent_trace())) + b"\n")
        ((run, written),) = import_otlp(path, store)
        assert written
        assert run.event_count == 4

    def test_protobuf_and_gzip_files(self, store: Store, tmp_path: Path) -> None:
        """One protobuf export request, gzipped, imports too."""
        path = tmp_path / "t.pb.gz"
        path.write_bytes(gzip.compress(agent_trace().SerializeToString()))
        ((run, _),) = import_otlp(path, store)
        assert run.event_count == 4


class TestImportCommand:
    def test_import_format_otlp(self, store: Store, tmp_path: Path) -> None:
        """replayable import --format otlp imports each trace and says so, once."""
        path = tmp_path / "traces.jsonl"
        path.write_bytes(orjson.dumps(to_json(agent_trace())) + b"\n")
        result = CliRunner().invoke(main, ["import", "--format", "otlp", str(path)])
        assert result.exit_code == 0, result.output
        assert "imported run otlp-" in result.output
        again = CliRunner().invoke(main, ["import", "--format", "otlp", str(path)])
        assert "skipped" in again.output

    def test_import_with_a_vault_reveals_with_the_key(
        self, store: Store, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """import --format otlp --pii-vault FILE pseudonymizes (it implies --pii) and keeps the
        real values in the vault, so show --reveal works for an imported run as for a
        recording (the commands had no way to name a vault)."""
        email = "dana.whitfield@acme.io"
        chat = jspan(
            "00f067aa0ba902b7",
            **{
                "openinference.span.kind": "LLM",
                "llm.model_name": "gpt-4o-mini",
                "llm.input_messages.0.message.role": "user",
                "llm.input_messages.0.message.content": f"Refund {email}",
            },
        )
        path = tmp_path / "trace.json"
        path.write_bytes(orjson.dumps(otlp_json([chat])))
        monkeypatch.setenv("REPLAYABLE_PII_KEY", "otlp-vault-key-" + "v" * 32)
        vault = tmp_path / "vault.db"
        env = {"NO_COLOR": "1", "COLUMNS": "200"}
        result = CliRunner().invoke(
            main, ["import", "--format", "otlp", "--pii-vault", str(vault), str(path)], env=env
        )
        assert result.exit_code == 0, result.output
        (run,) = store.list_runs()
        plain = CliRunner().invoke(main, ["show", run.id, "--step", "0"], env=env)
        assert email not in plain.output
        shown = CliRunner().invoke(main, ["show", run.id, "--step", "0", "--reveal"], env=env)
        assert shown.exit_code == 0, shown.output
        assert email in shown.output
        assert email.encode() not in vault.read_bytes()

    def test_import_is_all_or_nothing(self, store: Store, tmp_path: Path) -> None:
        """One bad file among good ones: exit 2, its line named, no run written."""
        good, bad = tmp_path / "good.jsonl", tmp_path / "bad.jsonl"
        good.write_bytes(orjson.dumps(to_json(agent_trace())) + b"\n")
        bad.write_bytes(orjson.dumps(to_json(agent_trace())) + b"\n{nope\n")
        result = CliRunner().invoke(main, ["import", "--format", "otlp", str(good), str(bad)])
        assert result.exit_code == 2
        assert "line 2" in result.output
        assert "nothing imported" in result.output
        assert store.list_runs() == []


def pb_request(spans: list[tuple[int, int | None]], attrs: dict[str, Any] | None = None) -> bytes:
    """A protobuf export request of bare spans of one trace, given as (span id, parent id); the
    first span carries ``attrs`` (AnyValue messages or plain strings)."""
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
    from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue

    request = ExportTraceServiceRequest()
    ss = request.resource_spans.add().scope_spans.add()
    trace_id = bytes.fromhex(TRACE)
    for i, (sid, parent) in enumerate(spans):
        s = ss.spans.add(trace_id=trace_id, span_id=sid.to_bytes(8, "big"), name="s")
        if parent is not None:
            s.parent_span_id = parent.to_bytes(8, "big")
        for key, value in (attrs or {}).items() if i == 0 else ():
            any_value = value if isinstance(value, AnyValue) else AnyValue(string_value=value)
            s.attributes.append(KeyValue(key=key, value=any_value))
    data: bytes = request.SerializeToString()
    return data


def _field(number: int, payload: bytes) -> bytes:
    """One length-delimited protobuf field, encoded by hand."""

    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    return varint(number << 3 | 2) + varint(len(payload)) + payload


def deep_any_value_request(levels: int) -> bytes:
    """An export request whose one span's attribute nests ``levels`` key lists, encoded by hand
    (the protobuf library refuses to build one past its own depth limit)."""
    value = _field(1, b"x")  # AnyValue.string_value
    for _ in range(levels):  # AnyValue.kvlist_value > KeyValueList.values > KeyValue
        value = _field(6, _field(1, _field(1, b"k") + _field(2, value)))
    span = (
        _field(1, bytes.fromhex(TRACE))
        + _field(2, (1).to_bytes(8, "big"))
        + _field(5, b"s")
        + _field(9, _field(1, b"a") + _field(2, value))
    )
    return _field(1, _field(2, _field(2, span)))  # resource_spans > scope_spans > spans


def chain(n: int) -> list[tuple[int, int | None]]:
    """``n`` spans, each the parent of the next."""
    return [(i + 1, i or None) for i in range(n)]


class TestHostileTraces:
    """A hostile trace file or request: a clear InvalidOtlp (4xx), no code run, bounded memory."""

    def test_a_huge_attribute_is_413_naming_it(self) -> None:
        """One attribute value past MAX_VALUE (string or bytes) is refused with 413, naming the
        attribute, before anything downstream copies it."""
        from opentelemetry.proto.common.v1.common_pb2 import AnyValue

        big = "x" * (decode_mod.MAX_VALUE + 1)
        for value in (big, AnyValue(bytes_value=big.encode())):
            with pytest.raises(rp.InvalidOtlp) as err:
                decode_request(pb_request([(1, None)], {"input.value": value}), "")
            assert err.value.status == 413
            assert "'input.value'" in str(err.value)
        ok = decode_request(pb_request([(1, None)], {"input.value": big[:-1]}), "")
        assert len(ok[0].attributes["input.value"]) == decode_mod.MAX_VALUE

    def test_a_huge_value_inside_an_array_is_413(self) -> None:
        """The bound holds at any depth of an AnyValue, not only at the top."""
        from opentelemetry.proto.common.v1.common_pb2 import AnyValue, ArrayValue

        inner = AnyValue(string_value="x" * (decode_mod.MAX_VALUE + 1))
        value = AnyValue(array_value=ArrayValue(values=[AnyValue(string_value="a"), inner]))
        with pytest.raises(rp.InvalidOtlp) as err:
            decode_request(pb_request([(1, None)], {"messages": value}), "")
        assert err.value.status == 413

    def test_spans_nested_past_the_bound_are_413(self) -> None:
        """A chain of spans deeper than MAX_NESTING is refused (its addresses would grow with
        the square of its length); one at the bound imports."""
        deep = decode_request(pb_request(chain(decode_mod.MAX_NESTING + 1)), "")
        with pytest.raises(rp.InvalidOtlp) as err:
            runs_of(deep)
        assert err.value.status == 413
        assert f"bound of {decode_mod.MAX_NESTING}" in str(err.value)
        ((run, events),) = runs_of(decode_request(pb_request(chain(decode_mod.MAX_NESTING)), ""))
        assert len(events) == decode_mod.MAX_NESTING
        assert verify_run(run, events).ok

    def test_a_long_chain_is_refused_quickly(self) -> None:
        """40,000 spans in one chain (under the span bound) are refused by the nesting bound,
        not built into runs."""
        with pytest.raises(rp.InvalidOtlp) as err:
            runs_of(decode_request(pb_request(chain(40_000)), ""))
        assert err.value.status == 413

    @pytest.mark.parametrize(
        "attrs",
        [
            {"gen_ai.operation.name": "chat", "gen_ai.usage.input_tokens": "\u00b2"},
            {"openinference.span.kind": "LLM", "llm.token_count.prompt": "\u00b3"},
            {"gen_ai.operation.name": "chat", "gen_ai.usage.output_tokens": "9" * 5000},
            {"openinference.span.kind": "LLM", f"llm.input_messages.{'9' * 5000}.x": "x"},
            {
                "langfuse.observation.type": "generation",
                "langfuse.observation.input": json.dumps([{"role": "user", "tool_calls": 5}]),
            },
            {
                "langfuse.observation.type": "generation",
                "langfuse.observation.output": json.dumps({"content": "hi", "tool_calls": True}),
            },
        ],
        ids=["sup", "oi-sup", "5000-digits", "5000-digit-index", "calls-int", "calls-bool"],
    )  # fmt: skip
    def test_odd_values_where_numbers_or_lists_belong_still_import(
        self, attrs: dict[str, str]
    ) -> None:
        """A token count that is a digit but no number ('\u00b2', 5,000 digits), a message index
        of 5,000 digits, tool calls that are no list: the span imports without that value (each
        escaped as a ValueError or TypeError, which stopped the collector keeping any trace)."""
        spans = decode_json(otlp_json([jspan("00f067aa0ba902b7", **attrs)]))
        ((run, events),) = runs_of(spans)
        assert verify_run(run, events).ok
        assert events[0].kind == "llm"

    def test_a_huge_span_name_is_clipped_in_addresses(self) -> None:
        """A span name of 100,000 characters names its step by its first 128: the addresses of
        the steps below it do not repeat it whole."""
        spans = decode_json(
            otlp_json(
                [
                    {**jspan("00f067aa0ba902b7"), "name": "n" * 100_000},
                    jspan("00f067aa0ba902b8", "00f067aa0ba902b7"),
                ]
            )
        )
        ((_, (top, child)),) = runs_of(spans)
        assert top.boundary == "span:" + "n" * 128
        assert len(child.address) < 300
        assert top.meta["otel"]["name"] == "n" * 100_000

    @pytest.mark.parametrize("levels", [decode_mod.MAX_DEPTH + 1, 900, 5000])
    def test_deeply_nested_json_text_is_400(self, levels: int) -> None:
        """JSON text in an attribute a convention parses, nested past MAX_DEPTH, is refused
        (900 levels used to escape as orjson's TypeError when the input was keyed); past
        orjson's own limit it stays text."""
        text = '{"a":' * levels + "1" + "}" * levels
        spans = decode_json(
            otlp_json(
                [
                    jspan(
                        "00f067aa0ba902b7",
                        **{"openinference.span.kind": "TOOL", "input.value": text},
                    )
                ]
            )
        )
        if levels > 1000:  # not JSON to orjson: kept as the text it is
            ((_, (event,)),) = runs_of(spans)
            assert event.input == text
            return
        with pytest.raises(rp.InvalidOtlp) as err:
            runs_of(spans)
        assert err.value.status == 400
        assert "nests deeper than" in str(err.value)

    @pytest.mark.parametrize("levels", [40, 500])
    def test_deeply_nested_any_values_are_400(self, levels: int) -> None:
        """An attribute of nested key lists (hand-encoded: the protobuf library will not build
        one this deep) is refused with 400; so is OTLP/JSON nested 5,000 deep."""
        with pytest.raises(rp.InvalidOtlp) as err:
            decode_request(deep_any_value_request(levels), "application/x-protobuf")
        assert err.value.status == 400
        body = b'{"resourceSpans":' + b"[" * 5000 + b"]" * 5000 + b"}"
        with pytest.raises(rp.InvalidOtlp):
            decode_request(body, "application/json")

    def test_a_file_with_no_end_is_refused_at_the_bound(self) -> None:
        """A path whose size stat cannot tell (/dev/zero, a pipe) is read only up to the bound,
        then refused with 413 (it was read whole: an endless source filled memory)."""
        with pytest.raises(rp.InvalidOtlp) as err:
            read_otlp_file("/dev/zero", limit=1 << 20)
        assert err.value.status == 413
        assert "/dev/zero" in str(err.value)

    def test_a_pickle_is_never_unpickled(self, tmp_path: Path, store: Store) -> None:
        """A file that would run code if unpickled is refused as not OTLP; the code never runs."""
        import pickle

        marker = tmp_path / "ran"

        class Boom:
            def __reduce__(self) -> tuple[Any, ...]:
                return (Path.touch, (marker,))

        path = tmp_path / "trace.pb"
        path.write_bytes(pickle.dumps(Boom()))
        with pytest.raises(rp.InvalidOtlp):
            import_otlp(path, store)
        assert not marker.exists()
        assert store.list_runs() == []

    def test_a_native_trace_file_is_not_otlp(self, tmp_path: Path, store: Store) -> None:
        """``import --format otlp`` of replayable's own JSONL export: exit 2 with a message,
        no traceback, nothing written."""
        path = tmp_path / "native.jsonl"
        path.write_text('{"run": {"id": "r1", "name": "agent"}}\n{"seq": 0, "kind": "llm"}\n')
        result = CliRunner().invoke(main, ["import", "--format", "otlp", str(path)])
        assert result.exit_code == 2, result.output
        assert "without --format otlp" in result.output
        assert "Traceback" not in result.output
        assert store.list_runs() == []

    @pytest.mark.parametrize(
        "trace_id", ["../../etc/passwd", "0af7651916cd43dd8448eb211c80319c" * 2, "otlp-1"]
    )
    def test_a_forged_trace_id_is_400(self, trace_id: str) -> None:
        """A trace id that is not 16 bytes of hex (a path, too long, a run id) names no run."""
        with pytest.raises(rp.InvalidOtlp) as err:
            decode_json(otlp_json([{**jspan("00f067aa0ba902b7"), "traceId": trace_id}]))
        assert err.value.status == 400

    def test_a_forged_copy_of_a_kept_trace_changes_nothing(
        self, tmp_path: Path, store: Store
    ) -> None:
        """Another trace claiming a kept run's trace id is skipped: the kept run's steps are as
        they were and its hash chain verifies."""
        first, forged = tmp_path / "first.json", tmp_path / "forged.json"
        first.write_bytes(orjson.dumps(otlp_json([jspan("00f067aa0ba902b7", **{"x": "real"})])))
        forged.write_bytes(orjson.dumps(otlp_json([jspan("00f067aa0ba902b7", **{"x": "forged"})])))
        ((run, written),) = import_otlp(first, store)
        assert written
        before = [e.stored_fields() for e in store.iter_events(run.id)]
        ((again, written),) = import_otlp(forged, store)
        assert (again.id, written) == (run.id, False)
        stored = list(store.iter_events(run.id))
        assert [e.stored_fields() for e in stored] == before
        assert verify_run(store.get_run(run.id), stored).ok
