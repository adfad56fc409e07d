"""Send runs to OpenTelemetry: after the fact (:func:`export`) or while recording (:func:`live`).

Spans follow the GenAI semantic conventions (``gen_ai.operation.name``, ``gen_ai.provider.name``,
``gen_ai.request.model``, ``gen_ai.response.model``, ``gen_ai.usage.input_tokens``,
``gen_ai.usage.output_tokens``, ``gen_ai.tool.name``...) and carry OpenInference span kinds
(``openinference.span.kind`` = ``LLM`` / ``TOOL`` / ``AGENT`` / ``CHAIN`` / ``RETRIEVER``), so a
run shows up in Phoenix, Jaeger or any OTLP backend.

For example (a sketch, not run as a doctest)::

    from replayable.integrations import otel
    otel.export(run, tracer_provider)               # a recorded run, one span per step
    with otel.live(tracer_provider), rp.record():   # spans emitted as steps finish
        agent("delete Bob's record")
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import orjson

from replayable.boundary import bare_name
from replayable.record import OBSERVERS
from replayable.redact import redact, scrub

if TYPE_CHECKING:
    from replayable.boundary import Boundary
    from replayable.context import Frame
    from replayable.trace import Event, Run

__all__ = ["attributes", "export", "live"]

log = logging.getLogger("replayable")

SPAN_KINDS = {
    "llm": "LLM",
    "tool": "TOOL",
    "agent": "AGENT",
    "retrieval": "RETRIEVER",
    "embedding": "EMBEDDING",
    "node": "CHAIN",
}
_OPERATIONS = {"llm": "chat", "tool": "execute_tool", "agent": "invoke_agent"}
_REQUEST_PARAMS = {
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "seed": "gen_ai.request.seed",
    "max_tokens": "gen_ai.request.max_tokens",
    "max_completion_tokens": "gen_ai.request.max_tokens",
    "max_output_tokens": "gen_ai.request.max_tokens",
    "frequency_penalty": "gen_ai.request.frequency_penalty",
    "presence_penalty": "gen_ai.request.presence_penalty",
}
_MAX_VALUE = 8192


def _json(value: Any) -> str:
    text = orjson.dumps(value, default=str).decode()
    return text if len(text) <= _MAX_VALUE else text[: _MAX_VALUE - 3] + "..."


def span_name(kind: str, boundary: str, meta: dict[str, Any], inp: Any) -> str:
    """``chat gpt-4o`` for a model call, ``execute_tool get_weather`` for a tool, else the name."""
    if kind == "llm":
        model = meta.get("request_model") or (inp.get("model") if isinstance(inp, dict) else None)
        op = meta.get("operation") or "chat"
        return f"{op} {model}" if model else op
    if kind == "tool":
        return f"execute_tool {bare_name(boundary)}"
    if kind == "agent":
        return f"invoke_agent {bare_name(boundary)}"
    return boundary


def attributes(
    *,
    kind: str,
    boundary: str,
    address: str,
    run_id: str,
    meta: dict[str, Any],
    inp: Any = None,
    output: Any = None,
    error: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The span attributes of one step (GenAI conventions plus OpenInference)."""
    attrs: dict[str, Any] = {
        "openinference.span.kind": SPAN_KINDS.get(kind, "CHAIN"),
        "replayable.run_id": run_id,
        "replayable.boundary": boundary,
        "replayable.kind": kind,
        "replayable.address": address,
    }
    op = meta.get("operation") or _OPERATIONS.get(kind)
    if op:
        attrs["gen_ai.operation.name"] = op
    if inp is not None:
        attrs["input.value"] = _json(inp)
        attrs["input.mime_type"] = "application/json"
    if output is not None:
        attrs["output.value"] = _json(output)
        attrs["output.mime_type"] = "application/json"
    if kind == "llm":
        _llm(attrs, meta, inp)
    elif kind == "tool":
        attrs["gen_ai.tool.name"] = attrs["tool.name"] = bare_name(boundary)
        attrs["gen_ai.tool.type"] = "function"
    elif kind == "agent":
        attrs["gen_ai.agent.name"] = bare_name(boundary)
    if error is not None:
        attrs["error.type"] = str(error.get("type", "Exception")).replace(":", ".")
    return {k: v for k, v in attrs.items() if v is not None}


def _llm(attrs: dict[str, Any], meta: dict[str, Any], inp: Any) -> None:
    params = inp if isinstance(inp, dict) else {}
    model = meta.get("request_model") or params.get("model")
    attrs["gen_ai.provider.name"] = meta.get("provider")
    attrs["gen_ai.request.model"] = model
    attrs["llm.model_name"] = meta.get("response_model") or model
    attrs["llm.provider"] = meta.get("provider")
    attrs["gen_ai.response.model"] = meta.get("response_model")
    attrs["gen_ai.response.id"] = meta.get("response_id")
    if meta.get("finish_reasons"):
        attrs["gen_ai.response.finish_reasons"] = [str(r) for r in meta["finish_reasons"]]
    if meta.get("system_fingerprint"):
        attrs["openai.response.system_fingerprint"] = meta["system_fingerprint"]
    if meta.get("request_id"):
        attrs["replayable.provider_request_id"] = meta["request_id"]
    usage = meta.get("usage") or {}
    for ours, theirs, oi in (
        ("input_tokens", "gen_ai.usage.input_tokens", "llm.token_count.prompt"),
        ("output_tokens", "gen_ai.usage.output_tokens", "llm.token_count.completion"),
    ):
        if isinstance(usage.get(ours), int):
            attrs[theirs] = attrs[oi] = usage[ours]
    for name, attr in _REQUEST_PARAMS.items():
        value = params.get(name)
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            attrs[attr] = value


def _tracer(tracer_provider: Any) -> Any:
    from opentelemetry import trace

    from replayable._version import __version__

    provider = tracer_provider or trace.get_tracer_provider()
    return provider.get_tracer("replayable", __version__)


def export(run: Run | str, tracer_provider: Any = None, *, store: Any = None) -> int:
    """Emit one span per recorded step of ``run`` (plus a root span for the run).

    Returns how many spans were emitted. Times are the recorded ones.

    For example (a sketch, not run as a doctest)::

        export(run, TracerProvider())
    """
    from opentelemetry import trace
    from opentelemetry.trace import Status, StatusCode

    from replayable.store import load_run

    source, events = load_run(run, store)
    tracer = _tracer(tracer_provider)
    start = int(source.started_at * 1e9)
    ended = source.ended_at or max(
        (e.started_at + e.duration_ns / 1e9 for e in events), default=source.started_at
    )
    root = tracer.start_span(
        f"run {source.name or source.id}",
        start_time=start,
        attributes={
            "openinference.span.kind": "CHAIN",
            "replayable.run_id": source.id,
            "replayable.status": source.status or "",
        },
    )
    spans: dict[int, Any] = {}
    ordered = sorted(events, key=lambda e: e.seq)
    for ev in ordered:
        parent = spans.get(ev.parent_seq) if ev.parent_seq is not None else root
        ctx = trace.set_span_in_context(parent or root)
        span = tracer.start_span(
            span_name(ev.kind, ev.boundary, ev.meta or {}, ev.input),
            context=ctx,
            kind=trace.SpanKind.CLIENT if ev.kind == "llm" else trace.SpanKind.INTERNAL,
            start_time=int(ev.started_at * 1e9),
            attributes=_event_attrs(ev),
        )
        if ev.error is not None:
            span.set_status(Status(StatusCode.ERROR, str(ev.error.get("message", ""))))
        spans[ev.seq] = span
    for ev in reversed(ordered):
        spans[ev.seq].end(end_time=int(ev.started_at * 1e9) + ev.duration_ns)
    if source.status == "error":
        root.set_status(Status(StatusCode.ERROR))
    root.end(end_time=int(ended * 1e9))
    return len(spans) + 1


def _event_attrs(ev: Event) -> dict[str, Any]:
    return attributes(
        kind=ev.kind,
        boundary=ev.boundary,
        address=ev.address,
        run_id=ev.run_id,
        meta=ev.meta or {},
        inp=ev.input,
        output=ev.output,
        error=ev.error,
    )


class _LiveExporter:
    """A recorder observer: a span opens when a step begins and closes when it finishes."""

    def __init__(self, tracer_provider: Any) -> None:
        self.tracer = _tracer(tracer_provider)
        self.spans: dict[int, Any] = {}
        self.lock = threading.Lock()
        self.failed = False

    def on_begin(self, session: Any, b: Boundary, frame: Frame) -> None:
        try:
            from opentelemetry import trace

            parent = self.spans.get(id(frame.parent)) if frame.parent is not None else None
            ctx = trace.set_span_in_context(parent) if parent is not None else None
            span = self.tracer.start_span(
                b.name,
                context=ctx,
                kind=trace.SpanKind.CLIENT if b.kind == "llm" else trace.SpanKind.INTERNAL,
                start_time=int(frame.started_at * 1e9),
            )
            with self.lock:
                self.spans[id(frame)] = span
        except Exception:
            self._fail()

    def on_finish(
        self, session: Any, b: Boundary, frame: Frame, error: BaseException | None, duration: int
    ) -> None:
        with self.lock:
            span = self.spans.pop(id(frame), None)
        if span is None:
            return
        try:
            from opentelemetry.trace import Status, StatusCode

            inp = redact(orjson.loads(frame.data))
            meta = redact(dict(frame.meta))  # annotate() values leave the process here
            pii = getattr(session, "pii", None)
            if pii is not None:  # personal data leaves the process as pseudonyms too
                inp, meta = pii.value(inp), pii.value(meta)
            err = None if error is None else {"type": type(error).__qualname__}
            span.update_name(span_name(b.kind, b.name, meta, inp))
            span.set_attributes(
                attributes(
                    kind=b.kind,
                    boundary=b.name,
                    address=frame.address,
                    run_id=session.run.id,
                    meta=meta,
                    inp=inp,
                    error=err,
                )
            )
            if error is not None:
                message = scrub(str(error))
                span.set_status(
                    Status(StatusCode.ERROR, message if pii is None else pii.text(message))
                )
            span.end(end_time=int(frame.started_at * 1e9) + duration)
        except Exception:
            self._fail()

    def _fail(self) -> None:
        if not self.failed:
            self.failed = True
            log.warning("replayable: OpenTelemetry live export failed; recording continues")


@contextlib.contextmanager
def live(tracer_provider: Any = None) -> Iterator[None]:
    """Emit a span per boundary call while recording (or replaying) inside the block.

    For example (a sketch, not run as a doctest)::

        with live(tracer_provider), rp.record(name="support"):
            agent("delete Bob's record")
    """
    exporter = _LiveExporter(tracer_provider)
    OBSERVERS.append(exporter)
    try:
        yield
    finally:
        OBSERVERS.remove(exporter)
