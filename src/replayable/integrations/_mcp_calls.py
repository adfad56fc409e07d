"""What MCP recording shares between :mod:`replayable.integrations.mcp` (``mcp.Client`` and
``ClientSession``) and :mod:`replayable.integrations.openai_agents` (the Agents SDK's MCP
servers): the boundaries of MCP requests and tools, the real call in flight, and what an
instrumented client knows."""

from __future__ import annotations

import contextvars
import importlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from replayable import _follow
from replayable._propagation import BAGGAGE, merge_baggage
from replayable._remote import FOLLOW_HEADER, note_linked, outgoing, take_follow_report
from replayable.boundary import Boundary, boundary
from replayable.context import FRAME
from replayable.errors import UnsupportedClient

__all__ = [
    "CALL",
    "METHODS",
    "ClientState",
    "RealCall",
    "ResultCodec",
    "request_boundary",
    "tool_boundary",
    "tool_boundary_name",
]


class ResultCodec:
    """MCP results as their wire JSON, rebuilt as the SDK's own pydantic types."""

    def __init__(self, type_name: str) -> None:
        self.type_name = type_name

    def encode(self, value: Any) -> Any:
        dump = getattr(value, "model_dump", None)
        if dump is None:
            return value
        return dump(mode="json", by_alias=True, exclude_none=True)

    def decode(self, data: Any) -> Any:
        types = importlib.import_module("mcp.types")
        return getattr(types, self.type_name).model_validate(data)


@dataclass
class RealCall:
    """The real call in flight; the boundary sees only its JSON arguments."""

    state: ClientState
    method: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


CALL: contextvars.ContextVar[RealCall | None] = contextvars.ContextVar(
    "replayable_mcp_call", default=None
)


async def _live() -> Any:
    real = CALL.get()
    if real is None:
        raise UnsupportedClient("an MCP boundary was called outside its instrumented client")
    await real.state.connect()
    if real.method != "call_tool":
        return await real.state.originals[real.method](*real.args, **real.kwargs)
    # The run's context travels in the request's _meta, as traceparent/baggage do over HTTP.
    # A followed side effect needs a recorded linked run and the server's acknowledgement of a
    # probe (a tools/list carrying the follow context) before the tool call is sent.
    frame = FRAME.get()
    expected = None
    if frame is not None and frame.b is not None:
        expected = _follow.gate(frame.b.name, frame.b.side_effects)
    context, follow = outgoing("mcp")
    if expected is not None and frame is not None and frame.b is not None:
        await _probe(real.state, frame.b.name, context, expected)
    kwargs = real.kwargs
    if context:
        meta = dict(kwargs.get("meta") or {})
        meta[BAGGAGE] = merge_baggage(meta.get(BAGGAGE), context.pop(BAGGAGE))
        meta.update(context)
        kwargs = {**kwargs, "meta": meta}
    result = await real.state.originals["call_tool"](*real.args, **kwargs)
    meta = getattr(result, "meta", None) or {}
    report = meta.pop(FOLLOW_HEADER, None)
    if isinstance(report, str):
        take_follow_report(report, follow, "mcp")
    linked = meta.pop(_follow.LINKED_HEADER, None)
    if linked is not None:
        note_linked(linked, "mcp")
    return result


async def _probe(state: ClientState, name: str, context: dict[str, str], expected: str) -> None:
    """The follow probe over MCP: a ``tools/list`` (it changes nothing) whose ``_meta`` carries
    the follow context and ``replayable-probe: follow``, sent as a bare request on the client's
    session (no cached listing answers it, none is updated by it). Only
    ``replayable.integrations.mcp.serve`` built with ``follow=True`` over the store that holds
    run ``expected`` answers naming that run; any other server answers a plain listing (or an
    error), and the tool call is refused unsent."""
    mcp = importlib.import_module("mcp")
    types = importlib.import_module("mcp.types")
    probe = {**context, _follow.PROBE_HEADER: _follow.PROBE_VALUE}
    frame = FRAME.get()
    where = frame.address if frame is not None else None
    client = state.client
    # The session itself (an instrumented ClientSession), or the one an mcp.Client or an Agents
    # SDK MCP server holds; the request is sent as is, so the session's own tool listing (and
    # what its calls fetch because of it) stays as it was.
    session = client if isinstance(client, mcp.ClientSession) else getattr(client, "session", None)
    if not isinstance(session, mcp.ClientSession):
        raise _follow.refusal(name, where, "this client has no MCP session to probe the callee")
    request = types.ListToolsRequest(params=types.PaginatedRequestParams(_meta=probe))
    try:
        answer = await session.send_request(request, types.ListToolsResult)
    except Exception as exc:  # the server's error, whatever the transport raised
        raise _follow.refusal(
            name,
            where,
            "the callee did not acknowledge replay context (the follow probe, an MCP "
            f"tools/list, failed: {type(exc).__name__})",
        ) from exc
    linked = (getattr(answer, "meta", None) or {}).get(_follow.LINKED_HEADER)
    _follow.check_ack(name, None, linked if isinstance(linked, str) else None, expected)


def _make(name: str, kind: str, result: str, side_effects: bool = False) -> Boundary:
    codec = ResultCodec(result)

    @boundary(name=name, kind=kind, side_effects=side_effects, codec=codec)
    async def call(**params: Any) -> Any:
        return await _live()

    return call.__replayable__  # type: ignore[attr-defined,no-any-return]


_REQUESTS: dict[str, Boundary] = {}
_TOOLS: dict[str, Boundary] = {}


def _page(cursor: str | None = None, **_: Any) -> dict[str, Any]:
    return {"cursor": cursor}


def _resource(uri: Any, **_: Any) -> dict[str, Any]:
    return {"uri": str(uri)}


def _prompt(name: str, arguments: dict[str, Any] | None = None, **_: Any) -> dict[str, Any]:
    return {"name": name, "arguments": arguments or {}}


# method -> (boundary name, result type, the call's parameters as keyed)
METHODS: dict[str, tuple[str, str, Callable[..., dict[str, Any]]]] = {
    "list_tools": ("mcp:tools/list", "ListToolsResult", _page),
    "read_resource": ("mcp:resources/read", "ReadResourceResult", _resource),
    "list_resources": ("mcp:resources/list", "ListResourcesResult", _page),
    "get_prompt": ("mcp:prompts/get", "GetPromptResult", _prompt),
    "list_prompts": ("mcp:prompts/list", "ListPromptsResult", _page),
}


def request_boundary(method: str) -> Boundary:
    b = _REQUESTS.get(method)
    if b is None:
        name, result, _ = METHODS[method]
        b = _REQUESTS[method] = _make(name, "retrieval", result)
    return b


def tool_boundary_name(tool: str) -> str:
    """The boundary name of calls to one MCP tool: ``mcp:tools/call.<tool>``."""
    return f"mcp:tools/call.{tool}"


def tool_boundary(tool: str, side_effects: bool) -> Boundary:
    b = _TOOLS.get(tool)
    if b is None or b.side_effects is not side_effects:
        # Defining it registers it: live= is answered with the latest flags known for the tool.
        b = _TOOLS[tool] = _make(tool_boundary_name(tool), "tool", "CallToolResult", side_effects)
    return b


@dataclass
class ClientState:
    """What an instrumented client knows: its original methods, tool flags, connection."""

    client: Any
    originals: dict[str, Callable[..., Awaitable[Any]]]
    side_effects: frozenset[str]
    safe: frozenset[str]
    read_only: dict[str, bool] = field(default_factory=dict)
    offline: bool = False
    connected: bool = False
    enter: Callable[[], Awaitable[Any]] | None = None

    def changes_world(self, tool: str) -> bool:
        if tool in self.side_effects:
            return True
        if tool in self.safe:
            return False
        return not self.read_only.get(tool, False)

    def learn(self, listing: Any) -> None:
        """Note each listed tool's ``readOnlyHint`` (a served listing counts too)."""
        for tool in getattr(listing, "tools", None) or ():
            hints = getattr(tool, "annotations", None)
            self.read_only[tool.name] = bool(getattr(hints, "read_only_hint", None))

    async def connect(self) -> None:
        """Open the real connection of a client entered offline (a live call in a replay)."""
        if self.offline and not self.connected and self.enter is not None:
            await self.enter()
            self.connected = True
