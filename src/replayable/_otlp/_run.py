"""The spans of one trace as one run: steps in parent-first start order, addressed, redacted,
pseudonymized (when personal data is) and hash-chained like a recorded run."""

from __future__ import annotations

import builtins
from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

from replayable._inert import visible
from replayable._otlp._conventions import CAPTURE_HINTS, StepView, read_span
from replayable._otlp._decode import MAX_NESTING, MAX_SPANS, Span
from replayable.canonical import key_of_json
from replayable.errors import InvalidOtlp
from replayable.redact import redact, redact_run, scrub
from replayable.trace import Event, Run, chain_events

if TYPE_CHECKING:
    from replayable._pii import Pseudonymizer

__all__ = ["build_run", "by_trace", "check_spans", "run_id_of", "source_line"]

_STATUS_ERROR = 2


def run_id_of(trace_id: str) -> str:
    """The run id of a trace: the same trace always becomes the same run (an import or a
    second collector writing it again is skipped, not duplicated)."""
    return f"otlp-{trace_id}"


def by_trace(spans: Iterable[Span]) -> dict[str, list[Span]]:
    """Spans grouped by trace id, in arrival order."""
    out: dict[str, list[Span]] = defaultdict(list)
    for s in spans:
        out[s.trace_id].append(s)
    return dict(out)


def check_spans(spans: list[Span]) -> list[Span]:
    """One trace's spans with re-sent duplicates dropped; :class:`InvalidOtlp` on a cycle, past
    the span bound or nested deeper than :data:`~replayable._otlp._decode.MAX_NESTING`."""
    seen: dict[str, Span] = {}
    for s in spans:
        seen.setdefault(s.span_id, s)  # an exporter's retry sends the same span again
    if len(seen) > MAX_SPANS:
        raise InvalidOtlp(
            f"trace {spans[0].trace_id} has {len(seen)} spans, over the bound of {MAX_SPANS}",
            status=413,
        )
    level: dict[str, int] = {}  # a span's nesting level (0 at the top), once its path is walked
    for start in seen:
        path: list[str] = []
        on_path: set[str] = set()
        node: str | None = start
        while node is not None and node in seen and node not in level:
            if node in on_path:
                raise InvalidOtlp(
                    f"trace {spans[0].trace_id} has a span cycle through span {node} "
                    "(a span is its own ancestor)"
                )
            on_path.add(node)
            path.append(node)
            node = seen[node].parent_id
        above = level[node] + 1 if node is not None and node in level else 0
        for i, n in enumerate(reversed(path)):
            level[n] = above + i
        if path and level[path[0]] >= MAX_NESTING:
            raise InvalidOtlp(
                f"trace {spans[0].trace_id} nests span {path[0]} {level[path[0]] + 1} levels "
                f"deep, over the bound of {MAX_NESTING}",
                status=413,
            )
    return list(seen.values())


def _order(spans: list[Span]) -> list[tuple[Span, Span | None]]:
    """Spans parent first, siblings in start order (span id breaks ties), each with its parent
    (None at the top, also for a span whose parent never arrived)."""
    ids = {s.span_id: s for s in spans}
    children: dict[str | None, list[Span]] = defaultdict(list)
    for s in spans:
        children[s.parent_id if s.parent_id in ids else None].append(s)
    for kids in children.values():
        kids.sort(key=lambda s: (s.start_ns, s.span_id), reverse=True)
    out: list[tuple[Span, Span | None]] = []
    stack: list[tuple[Span, Span | None]] = [(s, None) for s in children[None]]
    while stack:
        span, parent = stack.pop()
        out.append((span, parent))
        stack.extend((k, span) for k in children.get(span.span_id, ()))
    return out


def _error(span: Span) -> dict[str, Any] | None:
    """A span's error status as a recorded error. The type is never one to import: the trace
    came from outside, so it is rebuilt as a builtin exception or a ``RecordedError``."""
    if span.status_code != _STATUS_ERROR:
        return None
    exc_type, message = "", span.status_message
    for ev in span.events:
        if ev.name == "exception":
            exc_type = str(ev.attributes.get("exception.type") or "")
            message = str(ev.attributes.get("exception.message") or message)
    short = exc_type.rsplit(".", 1)[-1]
    builtin = getattr(builtins, short, None) if short == exc_type else None
    if isinstance(builtin, type) and issubclass(builtin, Exception):
        return {"type": f"builtins:{short}", "message": message, "args": [message]}
    type_name = exc_type or "SpanError"
    return {
        "type": "replayable.errors:RecordedError",
        "message": f"{type_name}: {message}",
        "args": [type_name, message],
    }


_NAME_CHARS = 128
"""Characters of a span's name a step's boundary (and every address below it) keeps."""


def _boundary(view: StepView, pii: Pseudonymizer | None = None) -> str:
    """The step's name: its kind and its span's name, its keys redacted and pseudonymized
    whole (with ``pii``) before it is clipped, so a value the clip cuts through is not left
    half in clear."""
    name = scrub(view.name)  # the name makes every address below it: no key in clear there
    name = name if pii is None else pii.text(name)
    return f"{view.kind}:{name[:_NAME_CHARS]}"


def _otel_meta(span: Span, view: StepView, trace_id: str) -> dict[str, Any]:
    """What an imported step keeps of its span under ``meta["otel"]``: ids, name, kind,
    convention and scope, whether content was captured (and how to turn it on), and a plain
    span's own events."""
    otel: dict[str, Any] = {
        "trace_id": trace_id,
        "span_id": span.span_id,
        "parent_span_id": span.parent_id,
        "name": span.name,
        "span_kind": span.kind,
        "convention": view.convention,
        "scope": span.scope,
        "content_captured": view.content,
        "not_carried": view.missing,
    }
    if not view.content and view.convention in CAPTURE_HINTS:
        otel["capture_hint"] = CAPTURE_HINTS[view.convention]
    if view.convention == "none" or view.kind == "span":
        otel["events"] = [
            {"name": e.name, "time_ns": e.time_ns, "attributes": e.attributes} for e in span.events
        ]
    return otel


def _run_of(
    run_id: str,
    trace_id: str,
    spans: list[Span],
    roots: list[Span],
    conventions: dict[tuple[str, str, str, str], None],
    missing: dict[str, set[str]],
    uncaptured: dict[str, set[str]],
) -> Run:
    """The imported run's header: named after its root span, its source (conventions seen,
    what the trace did not carry or capture), its span of time and status."""
    root = roots[0]
    resource = root.resource
    starts = [s.start_ns for s in spans if s.start_ns]
    ends = [s.end_ns for s in spans if s.end_ns]
    return Run(
        id=run_id,
        name=str(
            root.attributes.get("langfuse.trace.name")
            or root.attributes.get("gen_ai.agent.name")
            or root.name
            or trace_id
        ),
        tags={"source": "otlp"},
        metadata={
            "source": {
                "format": "otlp",
                "trace_id": trace_id,
                "service": resource.get("service.name"),
                "conventions": [
                    {"convention": c, "scope": sc, "scope_version": v, "schema_url": u}
                    for c, sc, v, u in conventions
                ],
                "not_carried": {k: sorted(v) for k, v in sorted(missing.items()) if v},
                "content_not_captured": {k: sorted(v) for k, v in sorted(uncaptured.items())},
            }
        },
        environment={"resource": resource},
        started_at=min(starts) / 1e9 if starts else 0.0,
        ended_at=max(ends) / 1e9 if ends else None,
        status="error" if any(s.status_code == _STATUS_ERROR for s in roots) else "ok",
        error=_error(root),
    )


def build_run(spans: list[Span], pii: Pseudonymizer | None = None) -> tuple[Run, list[Event]]:
    """One trace (``spans``, all of one trace id) as a run and its events, redacted and
    chained, ready for ``Store.put_run``. With ``pii`` (:mod:`replayable._pii`), personal data
    is pseudonymized in every value as a recording does, before the input is keyed."""

    def clean(value: Any) -> Any:
        out = redact(value)
        return out if pii is None else pii.value(out)

    spans = check_spans(spans)
    trace_id = spans[0].trace_id
    run_id = run_id_of(trace_id)
    ordered = _order(spans)
    seqs: dict[str, int] = {}
    addresses: dict[str, str] = {}
    counters: dict[tuple[str | None, str], int] = defaultdict(int)
    events: list[Event] = []
    conventions: dict[tuple[str, str, str, str], None] = {}
    missing: dict[str, set[str]] = defaultdict(set)
    uncaptured: dict[str, set[str]] = defaultdict(set)
    for seq, (span, parent) in enumerate(ordered):
        view = read_span(span)
        name = _boundary(view, pii)  # a span's name is the step's address: it can hold a value
        parent_key = parent.span_id if parent is not None else None
        ordinal = counters[(parent_key, name)]
        counters[(parent_key, name)] += 1
        base = addresses.get(parent_key or "", "")
        address = f"{base} > {name}/{ordinal}" if base else f"{name}/{ordinal}"
        seqs[span.span_id], addresses[span.span_id] = seq, address
        if view.convention != "none":
            conventions[(view.convention, span.scope, span.scope_version, span.schema_url)] = None
        missing[view.kind].update(view.missing)
        if not view.content and view.kind in ("llm", "tool"):
            uncaptured[view.kind].add(view.convention)
        otel = _otel_meta(span, view, trace_id)
        inp = clean(view.input)
        events.append(
            Event(
                run_id=run_id,
                seq=seq,
                address=address,
                parent_seq=seqs.get(parent_key) if parent_key is not None else None,
                boundary=name,
                kind=view.kind,
                key=key_of_json(inp),
                input=inp,
                output=clean(view.output),
                error=clean(_error(span)),
                meta=clean({**view.meta, "otel": otel}),
                started_at=span.start_ns / 1e9,
                duration_ns=max(0, span.end_ns - span.start_ns),
            )
        )
    roots = [s for s, p in ordered if p is None]
    run = _run_of(run_id, trace_id, spans, roots, conventions, missing, uncaptured)
    redact_run(run)
    if pii is not None:
        pii.run(run)
    chain_events(run, events)
    return run, events


def source_line(run: Run) -> str | None:
    """Where an imported run came from, in one line (None for a run replayable recorded):
    ``imported from OTLP: gen_ai (opentelemetry.instrumentation.openai_v2 2.4b0), service x``."""
    source = run.metadata.get("source") if isinstance(run.metadata, dict) else None
    if not isinstance(source, dict) or source.get("format") != "otlp":
        return None
    parts = []
    for c in source.get("conventions") or ():
        if isinstance(c, dict):
            scope = " ".join(str(x) for x in (c.get("scope"), c.get("scope_version")) if x)
            parts.append(f"{c.get('convention')} ({scope})" if scope else str(c.get("convention")))
    text = "imported from OTLP: " + (", ".join(dict.fromkeys(parts)) or "no known convention")
    if source.get("service"):
        text += f", service {source['service']}"
    return visible(text)  # one line: a traced name's line break or escape shows as \n, \x1b
