"""Replay of an imported run: the matcher and the server a replay policy holds when its source
was traced by another tool (OpenTelemetry GenAI, OpenInference, Logfire, Langfuse).

A trace carries less than a recording: often no tool schemas, no sampling parameters, sometimes
no message content, and its span tree is the tracer's, not the instrumented code's (an SDK's
span nests under framework spans replayable never sees). So an imported step answers a call by
what the trace has:

- an ``llm`` call takes the next imported ``llm`` step (in start order) and is compared on the
  model and the messages, each message on the fields the trace kept (role, content, tool calls
  with their arguments, the tool call it answers);
- a ``tool`` call (or any other kind) takes the next imported step of its kind whose name is the
  tool function's bare name (``refund`` answers ``myapp.tools:refund``,
  ``langchain:tool.refund``...), compared on its arguments;
- the steps that stand for the agent's own code (``agent``, ``chain``, plain spans) answer no call:
  that code runs.

A changed call is a divergence, as in a native replay. An ``llm`` step is served as the SDK's own
answer through the integration's :class:`~replayable.integrations._steps.ChatShape` and its codec;
a tool step as its recorded result. A step whose content the trace did not capture cannot be
served: :class:`~replayable.errors.NotCaptured` names the setting that captures it.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import TYPE_CHECKING, Any

import orjson

from replayable import canonical
from replayable._diff import diff_values
from replayable._engine import Match, Serve
from replayable._otlp._conventions import CAPTURE_HINTS, openai_message, parse_json
from replayable.boundary import bare_name, registry, resolve_name
from replayable.errors import Divergence, NotCaptured, SideEffectRefused, UnknownBoundary

if TYPE_CHECKING:
    from replayable._pii import Pseudonymizer
    from replayable._replayer import RecordedRun
    from replayable.boundary import Boundary
    from replayable.context import Frame
    from replayable.trace import Event, Run

__all__ = [
    "CODE_KINDS",
    "COMPARED",
    "ImportedMatcher",
    "ImportedServer",
    "chat_view",
    "compared",
    "coverage",
    "is_imported",
    "is_imported_step",
    "live_view",
    "root_not_captured",
]

COMPARED = {"llm": ("model", "messages"), "tool": ("arguments",)}
"""What an imported step of each kind is compared on, when the trace carries it."""
_NEVER = {"llm": ("tools", "parameters")}
"""What an imported step carries but a replay does not compare: tool schemas and sampling
parameters are spelled differently by every SDK and tracer."""
CODE_KINDS = frozenset({"agent", "chain", "span"})
"""Kinds of imported steps that stand for the agent's own code: it runs, they answer no call."""


def is_imported(run: Run) -> bool:
    """Whether ``run`` was imported from OTLP (and so replays with these parts)."""
    source = run.metadata.get("source") if isinstance(run.metadata, dict) else None
    return isinstance(source, dict) and source.get("format") == "otlp"


def is_imported_step(ev: Event) -> bool:
    """Whether ``ev`` is a step imported from a trace (it keeps its span under ``otel``)."""
    return isinstance(ev.meta, dict) and "otel" in ev.meta


def root_not_captured(run: Run, ev: Event) -> NotCaptured:
    """The error for an imported run whose root agent step the trace kept without its input:
    ``check`` and ``fork`` have no arguments to call the agent with."""
    otel = ev.meta.get("otel") if isinstance(ev.meta, dict) else None
    convention = str(otel.get("convention") or "") if isinstance(otel, dict) else ""
    hint = CAPTURE_HINTS.get(convention) if convention != "gen_ai" else None
    how = (
        f"To trace it, {hint}; then trace the incident again, or"
        if hint
        else "GenAI invoke_agent spans carry no agent input:"
    )
    return NotCaptured(
        f"run {run.id} was imported from a trace that did not carry the input of its root "
        f"agent step {_step_name(ev)!r} ({ev.address}), so there are no arguments to call the "
        f"agent with. {how} replay it from Python, calling the agent yourself inside "
        f"rp.replay({run.id!r})",
        run_id=run.id,
        address=ev.address,
        setting=hint or "",
    )


def _step_name(ev: Event) -> str:
    return ev.boundary.split(":", 1)[1] if ":" in ev.boundary else ev.boundary


# -- comparing a live call with an imported step ------------------------------------------------


def _content(value: Any) -> Any:
    """Message content as compared: JSON text parsed (a tool result traced as text or as an
    object is the same result), empty as absent."""
    if value in ("", None, []):
        return None
    return parse_json(value) if isinstance(value, str) else value


def _message(m: dict[str, Any]) -> dict[str, Any]:
    """A common-shape message as compared: a message answering a tool call is a ``tool``
    message whatever role its SDK gives it."""
    out: dict[str, Any] = {"role": "tool" if m.get("tool_call_id") else m.get("role")}
    content = _content(m.get("content"))
    if content is not None:
        out["content"] = content
    calls = [
        {k: c[k] for k in ("id", "name", "arguments") if k in c}
        for c in m.get("tool_calls") or ()
        if isinstance(c, dict)
    ]
    if calls:
        out["tool_calls"] = calls
    if m.get("tool_call_id") is not None:
        out["tool_call_id"] = m["tool_call_id"]
    return out


def _project(recorded: Any, live: Any) -> Any:
    """``live`` reduced to the fields ``recorded`` carries, at every depth (lists compared item
    by item; extra live items kept, so an added message shows)."""
    if isinstance(recorded, dict) and isinstance(live, dict):
        return {k: _project(recorded[k], live[k]) for k in recorded if k in live}
    if isinstance(recorded, list) and isinstance(live, list):
        head = [_project(r, v) for r, v in zip(recorded, live, strict=False)]
        return head + live[len(recorded) :]
    return live


def chat_view(request: Any) -> dict[str, Any]:
    """A chat request (common shape) as compared: the model and the messages."""
    request = request if isinstance(request, dict) else {}
    view: dict[str, Any] = {}
    if isinstance(request.get("model"), str) and request["model"]:
        view["model"] = request["model"]
    messages = request.get("messages")
    if isinstance(messages, list):
        view["messages"] = [_message(openai_message(m)) for m in messages]
    return view


def live_view(boundary: str, live: Any) -> dict[str, Any]:
    """A live model call's input (as its boundary records it) as compared with an imported
    step: through its integration's chat shape, else read as an OpenAI-style request."""
    from replayable.integrations._steps import shape_of

    shape = shape_of(boundary)
    return chat_view(shape.request(live) if shape is not None else live)


def compared(ev: Event, boundary: str, live: Any) -> tuple[Any, Any]:
    """(the imported step ``ev``'s input, a live call's input) as a replay compares them: what
    ``replayable diff`` shows for a replayed step beside the step it was served from."""
    return _compare(ev, live_view(boundary, live) if ev.kind == "llm" else live)


def _compare(ev: Event, live: Any) -> tuple[Any, Any]:
    """(recorded, live) as compared. A model call: ``live`` reduced to what the trace kept of
    the messages; a tool call: its arguments whole (a trace keeps them whole)."""
    if ev.kind != "llm":
        if ev.input is None:
            return None, None
        if not isinstance(ev.input, dict) and isinstance(live, dict) and len(live) == 1:
            live = next(iter(live.values()))  # a trace keeps a one-argument call as its value
        return ev.input, live
    recorded = chat_view(ev.input)
    return recorded, _project(recorded, live)


# -- the matcher --------------------------------------------------------------------------------


class ImportedMatcher:
    """Matches live calls to an imported run's steps by what the trace carries (see the module
    docstring); takes the steps it matches from ``recording``. ``pii``: the pseudonymizer the
    run was imported with, applied to live inputs before they are compared (as a recording's
    matcher does)."""

    def __init__(self, recording: RecordedRun, pii: Pseudonymizer | None = None) -> None:
        self.recording = recording
        self.pii = pii
        self.steps: dict[str, list[Event]] = defaultdict(list)
        """Imported steps that answer calls, by kind, in start order."""
        with recording.lock:
            for seq in sorted(recording.events):
                ev = recording.events[seq]
                if ev.kind in CODE_KINDS:
                    recording.consumed.add(seq)  # the agent's code runs; nothing to report
                else:
                    self.steps[ev.kind].append(ev)
        self.kinds_met: set[str] = set()

    def match(self, frame: Frame) -> Match:
        """Take the imported step that answers ``frame``'s call, with what differs."""
        b = frame.b
        assert b is not None
        data, value, key = canonical.keyed_input(b, frame.data, self.pii)
        frame.data = data
        frame.key = key
        live = value if value is not None else orjson.loads(data)
        if b.kind == "agent":  # it runs; the imported agent step of its name stands for it
            agents = self.recording.events.values()
            ev = next(
                (e for e in agents if e.kind == "agent" and _step_name(e) == bare_name(b.name)),
                None,
            )
            return Match(ev, None, False, live)
        llm = b.kind == "llm"
        actual = self._view(b, live) if llm else live
        rec = self.recording
        with rec.lock:
            cands = [
                e
                for e in self.steps.get(b.kind, ())
                if e.seq not in rec.consumed
                and (llm or _step_name(e) in (b.name, bare_name(b.name)))
            ]
            if not cands:
                if llm or b.kind == "tool" or b.side_effects or self.steps.get(b.kind):
                    return Match(None, self._unexpected(b, frame, actual), False, live)
                return Match(None, None, False, live)  # a kind the trace never has: it runs
            self.kinds_met.add(b.kind)
            for ev in cands:
                recorded, projected = _compare(ev, actual)
                if recorded == projected:
                    return Match(rec.take(ev), None, False, live)
            ev = rec.take(cands[0])
        recorded, projected = _compare(ev, actual)
        frame.meta["source_seq"] = ev.seq  # the step it stands for, even though it diverged
        return Match(
            ev,
            Divergence(
                reason="changed",
                address=ev.address,
                boundary=b.name,
                recorded_input=recorded,
                actual_input=projected,
                changes=diff_values(recorded, projected),
                run_id=rec.source.id,
            ),
            False,
            live,
        )

    @staticmethod
    def _view(b: Boundary, live: Any) -> dict[str, Any]:
        return live_view(b.name, live)

    def _unexpected(self, b: Boundary, frame: Frame, actual: Any) -> Divergence:
        return Divergence(
            reason="unexpected",
            address=frame.address,
            boundary=b.name,
            actual_input=actual,
            run_id=self.recording.source.id,
            detail=f"the imported trace has no {b.kind} step left"
            + ("" if b.kind == "llm" else f" named {bare_name(b.name)!r}"),
        )

    def resolve_live(self, live: Iterable[str], allow_side_effects: bool) -> set[str]:
        """The boundaries ``live=`` names (full names of registered boundaries: an imported
        run's steps are named by its tracer). Refuses one that would fire a side effect again:
        a boundary marked so, or a tool whose imported steps are side effects (every imported
        tool step is one unless the import marked it safe)."""
        registered = registry()
        names: set[str] = set()
        for entry in live:
            name, _, nth = entry.partition("#")
            if nth:
                raise UnknownBoundary(
                    f"live={entry!r}: an imported run's steps are not numbered by boundary; "
                    f"name the boundary (live=[{name!r}])"
                )
            full = resolve_name(name, set(registered))
            b = registered[full]
            fires = b.side_effects or (
                b.kind == "tool"
                and any(
                    e.meta.get("side_effects", True)
                    for e in self.steps.get("tool", ())
                    if _step_name(e) in (b.name, bare_name(b.name))
                )
            )
            if fires and not allow_side_effects:
                raise SideEffectRefused(
                    f"{full} stands for a side effect of imported run {self.recording.source.id} "
                    "(a tool step the trace recorded: served, never re-fired); running it live "
                    "would fire it again. Give it a world of its own (sandbox=...) or pass "
                    "allow_side_effects=True (CLI: --allow-side-effects) if you mean it"
                )
            names.add(full)
        return names

    def report_lines(self) -> list[str]:
        """Once per step kind the replay met: what its steps were compared on, and what the
        trace did not carry and so was not compared."""
        return coverage(self.recording.source, self.kinds_met)


def coverage(source: Run, kinds: set[str] | None = None) -> list[str]:
    """Per step kind (those in ``kinds``, else every kind compared), what imported steps are
    compared on and what the trace did not carry."""
    meta = source.metadata.get("source") if isinstance(source.metadata, dict) else None
    missing = meta.get("not_carried") if isinstance(meta, dict) else None
    missing = missing if isinstance(missing, dict) else {}
    lines = []
    for kind, fields in COMPARED.items():
        if kinds is not None and kind not in kinds:
            continue
        absent = [str(f) for f in missing.get(kind) or ()]
        absent = ["arguments" if f == "input" else f for f in absent]
        compared = [f for f in fields if f not in absent]
        never = [f for f in _NEVER.get(kind, ()) if f not in absent]
        line = f"imported {kind} steps compared on: {', '.join(compared) or 'nothing'}"
        if absent:
            line += f"; not carried by the trace, so not compared: {', '.join(absent)}"
        if never:
            line += f"; not compared for imported steps: {', '.join(never)}"
        lines.append(line)
    return lines


# -- the server ---------------------------------------------------------------------------------


class ImportedServer:
    """Serves an imported step: an ``llm`` step as the SDK's own answer (the integration's
    :class:`~replayable.integrations._steps.ChatShape`), any other as its recorded result."""

    def __init__(self, recording: RecordedRun) -> None:
        self.source = recording.source

    def serve(self, frame: Frame, ev: Event) -> Serve:
        """Serve the imported step ``ev`` to ``frame``'s call, or raise :class:`NotCaptured`."""
        b = frame.b
        assert b is not None
        otel = ev.meta.get("otel") if isinstance(ev.meta, dict) else None
        otel = otel if isinstance(otel, dict) else {}
        if ev.error is not None:
            return Serve(None, ev.error)
        if otel.get("content_captured") is False or ev.output is None:
            raise self._not_captured(b, ev, otel)
        if ev.kind != "llm":
            return Serve(ev.output)
        from replayable.integrations._steps import reply_of, shape_of

        shape = shape_of(b.name)
        if shape is None:
            raise NotCaptured(
                f"cannot serve {b.name} at {ev.address} of imported run {self.source.id}: "
                "imported model answers are rebuilt for the OpenAI, Anthropic and LangChain "
                "integrations; make the model call through an instrumented client "
                "(rp.instrument(client)) or name the boundary in live=[...]"
            )
        answer = shape.answer(reply_of(ev.output), orjson.loads(frame.data))
        if b.is_gen or b.is_agen:
            return Serve(answer if isinstance(answer, list) else [answer])
        return Serve(answer)

    def _not_captured(self, b: Boundary, ev: Event, otel: dict[str, Any]) -> NotCaptured:
        convention = str(otel.get("convention") or "")
        hint = otel.get("capture_hint") or CAPTURE_HINTS.get(convention)
        what = "messages and answer" if ev.kind == "llm" else "arguments and result"
        by = f" ({convention})" if convention else ""
        return NotCaptured(
            f"cannot serve {b.name} at {ev.address} of imported run {self.source.id}: the "
            f"trace{by} did not capture this {ev.kind} step's {what}. "
            + (
                f"To capture them, {hint}; then "
                if hint
                else "Capture content where the app runs; then "
            )
            + "trace the incident again (or name the boundary in live=[...])",
            run_id=self.source.id,
            address=ev.address,
            setting=str(hint or ""),
        )
