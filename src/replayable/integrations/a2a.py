"""A2A (the Agent2Agent protocol, ``a2a-sdk``): a message to a remote agent as a ``remote`` step,
and an agent executor whose runs link to the callers that messaged it.

For example (a sketch, not run as a doctest)::

    from a2a.client import ClientConfig, create_client
    from replayable.integrations.a2a import serve

    # the caller: every send_message inside a run is a remote step
    client = rp.instrument(await create_client(card, client_config=ClientConfig()))
    async for event in client.send_message(SendMessageRequest(message=msg)): ...

    # the remote agent: its executor's runs link to the caller's step
    handler = DefaultRequestHandler(agent_executor=serve(MyExecutor(), service="booking"), ...)

Client side: ``rp.instrument(client)`` (an ``a2a.client.Client`` from ``create_client`` or
``ClientFactory``) makes each ``send_message`` made inside a run the boundary
``a2a:message/send <agent>`` (the agent card's name, or ``service=``), kind ``remote``, keyed by
the message's role, parts and extensions and the request's configuration and metadata (the
message, context and task ids are stored but not keyed: a client makes new ones every time).
The events it yields are recorded one by one as a stream and served back in replay as the SDK's
own ``StreamResponse`` objects; the remote agent is not contacted. A message is a side effect
(the remote agent may act) unless ``read_only=True``. Create the client from the agent card you
hold (``create_client(card)``), or resolve the card outside the replayed code: fetching the
card is not a step.

The run's context travels in the message's ``metadata`` (``traceparent`` and replayable's
``baggage`` member), as it does in HTTP headers and MCP ``_meta``.

Server side: :func:`serve` wraps an ``AgentExecutor`` in place (as :func:`replayable.integrations.
mcp.serve` wraps an MCP server): a message carrying a caller's context runs the executor inside
a run linked to the calling step, and the events it publishes name that run
(``replayable-linked`` in their metadata: the evidence a ``follow`` replay needs, see
:mod:`replayable._follow`). With ``follow=True`` (a local instance started for a replay) a
follow request replays the linked run and its events carry the divergences found
(``replayable-follow``); they are held until the replay ends. A follow request the executor
cannot honour is refused (an error, the executor never runs). The caller strips both entries
from the events before the agent or the recording sees them, and reads the report only on the
answer to a request that asked to follow.
"""

from __future__ import annotations

import contextlib
import contextvars
import importlib
import threading
from collections.abc import AsyncIterator, Iterable
from dataclasses import dataclass
from typing import Any

from replayable import _follow
from replayable._linked import Policy
from replayable._propagation import BAGGAGE, TRACEPARENT, merge_baggage
from replayable._remote import FOLLOW_HEADER, KIND, note_linked, outgoing, take_follow_report
from replayable.boundary import Boundary, boundary
from replayable.context import FRAME, SESSION
from replayable.errors import ReplayableError, UnsupportedClient

__all__ = ["boundary_name", "instrument", "serve"]

_MARK = "__replayable_a2a__"
_IDS = ("message_id", "context_id", "task_id")
_PAYLOADS = ("task", "message", "status_update", "artifact_update")
_MARKERS = (FOLLOW_HEADER, _follow.LINKED_HEADER)


def boundary_name(agent: str) -> str:
    """The boundary name of messages sent to one remote agent: ``a2a:message/send <agent>``."""
    return f"a2a:message/send {agent}"


def _json_format() -> Any:
    return importlib.import_module("google.protobuf.json_format")


def _types() -> Any:
    return importlib.import_module("a2a.types")


@dataclass(slots=True)
class _Pending:
    """A real ``send_message`` waiting for its boundary's live function."""

    original: Any
    request: Any
    context: Any
    service: str
    ids: dict[str, Any]


_CALL: contextvars.ContextVar[_Pending | None] = contextvars.ContextVar(
    "replayable_a2a_call", default=None
)
_LOCK = threading.Lock()
_BOUNDARIES: dict[tuple[str, bool], Boundary] = {}


async def _live_send(
    agent: str, message: Any, configuration: Any, metadata: Any
) -> AsyncIterator[Any]:
    pending = _CALL.get()
    if pending is None:
        raise UnsupportedClient(f"{boundary_name(agent)} was called outside its A2A client")
    frame = FRAME.get()
    if frame is not None:
        # The ids a client makes anew for every message: kept with the step, never keyed.
        frame.meta["a2a"] = pending.ids
    if frame is not None and frame.b is not None:
        # Followed: safe only where the remote agent recorded a linked run (it refuses a
        # follow request it cannot replay, without running the executor).
        _follow.gate(frame.b.name, frame.b.side_effects)
    context, follow = outgoing(pending.service)
    request = pending.request
    if context:
        request = type(request)()
        request.CopyFrom(pending.request)
        meta = request.message.metadata
        existing = meta[BAGGAGE] if BAGGAGE in meta else None  # noqa: SIM401 (a Struct)
        mine = existing if isinstance(existing, str) else None
        meta[BAGGAGE] = merge_baggage(mine, context[BAGGAGE])
        meta[TRACEPARENT] = context[TRACEPARENT]
    to_dict = _json_format().MessageToDict
    async for event in pending.original(request, context=pending.context):
        data = to_dict(event)
        _take_markers(data, follow, pending.service)
        yield data


def _take_markers(event: dict[str, Any], follow: bool, service: str) -> None:
    """Strip the callee's ``replayable-linked`` / ``replayable-follow`` entries from an event's
    metadata (every payload kind), keeping the link on the step and reading the report."""
    report = linked = None
    for kind in _PAYLOADS:
        payload = event.get(_camel(kind))
        if not isinstance(payload, dict) or not isinstance(meta := payload.get("metadata"), dict):
            continue
        report = meta.pop(FOLLOW_HEADER, report)
        linked = meta.pop(_follow.LINKED_HEADER, linked)
        if not meta:
            payload.pop("metadata")
    if isinstance(report, str):
        take_follow_report(report, follow, service)
    if linked is not None:
        note_linked(linked, service)


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(p.title() for p in rest)


def a2a_boundary(name: str, side_effects: bool = True) -> Boundary:
    """The boundary for messages named ``name`` (defined, and so registered, on first use)."""
    k = (name, side_effects)
    b = _BOUNDARIES.get(k)
    if b is None:
        with _LOCK:
            b = _BOUNDARIES.get(k)
            if b is None:
                wrapped = boundary(name=name, kind=KIND, side_effects=side_effects)(_live_send)
                b = _BOUNDARIES[k] = wrapped.__replayable__  # type: ignore[attr-defined]
    return b


def _step_input(request: Any, agent: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """The step's input (what identifies the message) and the message's ids (kept in the
    step's metadata: a client makes new ones for every message)."""
    to_dict = _json_format().MessageToDict
    message = to_dict(request.message) if request.HasField("message") else {}
    ids = {k: v for k in _IDS if (v := message.pop(_camel(k), None)) is not None}
    meta = message.get("metadata")
    if isinstance(meta, dict):
        for k in (TRACEPARENT, BAGGAGE):
            meta.pop(k, None)
        if not meta:
            del message["metadata"]
    configuration = request.configuration if request.HasField("configuration") else None
    metadata = request.metadata if request.HasField("metadata") else None
    step = {
        "agent": agent,
        "message": message,
        "configuration": to_dict(configuration) if configuration is not None else None,
        "metadata": to_dict(metadata) if metadata is not None else None,
    }
    return step, ids


def _agent_name(client: Any, service: str | None) -> str:
    if service:
        return service
    card = getattr(client, "_card", None)  # BaseClient keeps the card it was built from
    name = getattr(card, "name", None)
    return str(name) if name else "agent"


def instrument(
    obj: Any,
    *,
    side_effects: Iterable[str] = (),
    service: str | None = None,
    read_only: bool = False,
    **options: Any,
) -> Any:
    """Make an ``a2a.client.Client`` record each ``send_message`` made inside a run as a remote
    step (in place; returns it). ``service`` names the agent in step names (default: its card's
    name); ``read_only=True`` says messages to it change nothing (a ``follow`` replay then needs
    no linked run to send them live).

    For example (a sketch, not run as a doctest)::

        client = instrument(await create_client(card), service="booking")
    """
    if options:
        raise TypeError(f"unexpected option(s) for A2A: {', '.join(sorted(options))}")
    if tuple(side_effects):
        raise TypeError(
            "A2A has no named operations: a message to a remote agent is a side effect unless "
            "instrument(client, read_only=True)"
        )
    client_mod = importlib.import_module("a2a.client")
    if not isinstance(obj, client_mod.Client):
        raise UnsupportedClient(
            f"cannot instrument {type(obj).__module__}.{type(obj).__qualname__}: "
            "replayable.integrations.a2a supports a2a.client.Client (create_client, ClientFactory)"
        )
    if getattr(obj, _MARK, False):
        raise UnsupportedClient("this A2A client is instrumented already")
    agent = _agent_name(obj, service)
    b = a2a_boundary(boundary_name(agent), not read_only)
    original = obj.send_message
    stream_response = _types().StreamResponse
    parse = _json_format().ParseDict

    async def send_message(request: Any, *, context: Any = None) -> AsyncIterator[Any]:
        if SESSION.get() is None:
            async for event in original(request, context=context):
                yield event
            return
        step, ids = _step_input(request, agent)
        # Read by the live function when the step starts; a stream spans the caller's awaits,
        # so the reset may come from another context (a stream closed by the collector).
        token = _CALL.set(_Pending(original, request, context, agent, ids))
        try:
            async for data in b.wrapper(**step):
                yield parse(data, stream_response(), ignore_unknown_fields=True)
        finally:
            with contextlib.suppress(ValueError):
                _CALL.reset(token)

    obj.send_message = send_message
    setattr(obj, _MARK, True)
    return obj


def register_recorded(name: str) -> None:
    """Define the boundary a recorded A2A step names, so ``live=`` can name it."""
    if not any(k[0] == name for k in _BOUNDARIES):
        a2a_boundary(name)


# -- the remote agent ------------------------------------------------------------------------------


def _incoming(context: Any) -> dict[str, str]:
    """The caller's context from a request's message metadata (strings only)."""
    message = getattr(context, "message", None)
    meta = getattr(message, "metadata", None)
    if meta is None:
        return {}
    return {k: v for k in (TRACEPARENT, BAGGAGE) if k in meta and isinstance(v := meta[k], str)}


class _Stamping:
    """An event queue that adds replayable's entries to each event's metadata, holding the
    events when ``hold`` (a followed replay's answer waits for its divergences)."""

    def __init__(self, queue: Any, entries: dict[str, str], hold: bool) -> None:
        self.queue = queue
        self.entries = entries
        self.hold = hold
        self.held: list[Any] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self.queue, name)

    async def enqueue_event(self, event: Any) -> None:
        if self.hold:
            self.held.append(event)
            return
        await self.queue.enqueue_event(_stamped(event, self.entries))

    async def release(self, entries: dict[str, str]) -> None:
        for event in self.held:
            await self.queue.enqueue_event(_stamped(event, {**self.entries, **entries}))
        self.held = []


def _stamped(event: Any, entries: dict[str, str]) -> Any:
    meta = getattr(event, "metadata", None)
    if meta is not None:
        for k, v in entries.items():
            meta[k] = v
    return event


def serve(
    executor: Any,
    *,
    store: Any = None,
    service: str | None = None,
    requests: str = "with-context",
    follow: bool = False,
) -> Any:
    """Make an A2A ``AgentExecutor`` link its runs to the callers that messaged it (in place;
    returns it): see the module docstring. ``requests`` and ``follow`` as for the HTTP
    middleware (:mod:`replayable.integrations.web`).

    For example (a sketch, not run as a doctest)::

        handler = DefaultRequestHandler(agent_executor=serve(BookingExecutor(), service="booking"),
                                        task_store=InMemoryTaskStore(), agent_card=card)
    """
    policy = Policy(store, service, requests, follow)
    original = executor.execute

    async def execute(context: Any, event_queue: Any) -> None:
        headers = _incoming(context)
        decision = policy.decide(headers) if headers or policy.requests == "all" else None
        if decision is None:
            await original(context, event_queue)
            return
        if decision.action == "record":
            async with policy.recording(decision, "message/send", service or "agent") as run:
                entries = {_follow.LINKED_HEADER: run.id} if decision.links else {}
                await original(context, _Stamping(event_queue, entries, hold=False))
            return
        if decision.action != "follow":  # a follow request this agent cannot honour
            raise ReplayableError(f"A2A message not handled: {decision.reason}")
        from replayable._linked import follow_header

        r = policy.replaying(decision)
        queue = _Stamping(event_queue, {}, hold=True)
        failed: Exception | None = None
        try:
            async with r:
                await original(context, queue)
        except Exception as exc:  # the executor failed in replay: still answer the caller
            failed = exc
        _, report = follow_header(policy.service, r.run, r.divergences)
        if failed is not None:
            helpers = importlib.import_module("a2a.helpers")
            queue.held = [
                helpers.new_text_message(
                    f"replay failed: {failed}",
                    context_id=context.context_id,
                    task_id=context.task_id,
                )
            ]
        await queue.release({FOLLOW_HEADER: report, _follow.LINKED_HEADER: r.run.id})

    executor.execute = execute
    return executor
