"""What the process sends out while a run is active: the replay's offline guard and the
recording's watch for model calls no boundary recorded.

While a replay is active, an outbound connection that no boundary served is refused with
:class:`~replayable.errors.NetworkRefused` instead of going live:

- a socket ``connect`` to anything but loopback, or to an address the recording saw as a model
  endpoint (loopback included: a local model server is a model too);
- an HTTP request (httpx, httpx2, requests, DSPy's bundled transport) to a known model API path
  (:data:`MODEL_PATHS`) or to a host the recording saw as a model endpoint.

Calls made inside a boundary that runs live (``live=``, a what-if's live calls, a fallback
cassette's misses; anything but an ``agent``) may go out; so may everything with
``allow_network=True``, or the hosts it lists. A refused model call is kept on the replay and
raised again at its exit when the code swallowed it (SDKs turn connection errors into their
own); a refused socket to elsewhere that the code handled (a library's optional download
falling back to a bundled copy) is not.

While a recording is active, the addresses that boundaries of kind ``llm`` connect to, and the
hosts HTTP requests to model API paths go to, are kept in the run's metadata
(``model_endpoints``); a request to a model API path made outside every boundary warns once
per run: the model call is not in the recording, so its replay would have nothing to serve.

The hooks are process-wide, installed by the first active run and removed by the last (see
:mod:`replayable._patching`); a thread running without a run's context is judged by the replay
active in the process, if any.
"""

from __future__ import annotations

import ipaddress
import socket
import sys
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from replayable._patching import Patches
from replayable._warn import warn
from replayable.context import FRAME, SESSION, Frame
from replayable.errors import NetworkRefused

__all__ = ["ENDPOINTS_KEY", "MODEL_PATHS", "Guard", "enter", "is_model_path", "leave"]

MODEL_PATHS = ("/chat/completions", "/completions", "/responses", "/messages", "/embeddings")
"""Path endings of model APIs (OpenAI and compatible servers, Anthropic)."""

ENDPOINTS_KEY = "model_endpoints"
"""The run metadata key listing the ``host:port`` model endpoints a recording talked to."""

# Where a refused call most likely came from, by the module that made it: what to instrument.
_HINTS = (
    ("dspy", "the dspy.LM (rp.instrument(lm))"),
    ("autogen_ext", "the AutoGen model client (rp.instrument(model_client))"),
    ("autogen_agentchat", "the AutoGen agent (rp.instrument(agent))"),
    ("google.adk", "the ADK agent or its LiteLlm model (rp.instrument(agent))"),
    ("instructor", "the Instructor client (rp.instrument(client))"),
    ("llama_index", "the LlamaIndex LLM or agent (rp.instrument(llm))"),
    ("smolagents", "the smolagents model or agent (rp.instrument(model))"),
    ("langchain", "the LangChain chat model (rp.instrument(model))"),
    ("pydantic_ai", "the Pydantic AI agent (rp.instrument(agent))"),
    ("agents", "the OpenAI Agents SDK agent (rp.instrument(agent))"),
    ("litellm", "LiteLLM (rp.instrument(litellm))"),
    ("openai", "the OpenAI client (rp.instrument(client))"),
    ("anthropic", "the Anthropic client (rp.instrument(client))"),
)


def is_model_path(path: str) -> bool:
    """Does an HTTP path (query ignored) end like a model API call?

    >>> is_model_path("/v1/chat/completions"), is_model_path("/v1/models")
    (True, False)
    """
    path = path.partition("?")[0].rstrip("/")
    return path.endswith(MODEL_PATHS)


@dataclass
class Guard:
    """One active run's view of the network: a replay's refusals, a recording's watch."""

    session: Any
    replay: bool
    allow: bool | frozenset[str] = False
    endpoints: set[str] = field(default_factory=set)
    refused: list[NetworkRefused] = field(default_factory=list)
    warned: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)

    def allows(self, host: str, port: int | None) -> bool:
        if self.allow is True:
            return True
        if not self.allow:
            return False
        return host in self.allow or f"{host}:{port}" in self.allow

    def saw(self, endpoint: str) -> None:
        """A recording talked to a model at ``endpoint``: keep it in the run's metadata."""
        with self.lock:
            if endpoint in self.endpoints:
                return
            self.endpoints.add(endpoint)
            run = getattr(self.session, "run", None)
            if run is not None:
                run.metadata[ENDPOINTS_KEY] = sorted(self.endpoints)


_GUARDS: dict[int, Guard] = {}
_LOCK = threading.Lock()


def enter(
    session: Any,
    *,
    replay: bool,
    allow: bool | Iterable[str] = False,
    endpoints: Iterable[str] = (),
) -> None:
    """Start watching the network for ``session`` (a replay refuses, a recording watches)."""
    allowed: bool | frozenset[str] = allow if isinstance(allow, bool) else frozenset(allow)
    guard = Guard(session, replay, allowed, set(endpoints))
    with _LOCK:
        _GUARDS[id(session)] = guard
    _HOOKS.acquire()


def leave(session: Any) -> NetworkRefused | None:
    """Stop watching for ``session``; returns the first call a replay refused, if any."""
    with _LOCK:
        guard = _GUARDS.pop(id(session), None)
    if guard is None:
        return None
    _HOOKS.release()
    return guard.refused[0] if guard.refused else None


# -- judging one outbound call ----------------------------------------------------------------


def _current() -> tuple[Guard | None, Frame | None]:
    """The guard of the run in this context, else (a thread without context) of a replay active
    in the process; and the step executing here."""
    session = SESSION.get()
    if session is not None:
        return _GUARDS.get(id(session)), FRAME.get()
    for guard in list(_GUARDS.values()):
        if guard.replay:
            return guard, None
    return None, None


def _inside_boundary(frame: Frame | None) -> Frame | None:
    """The innermost step running a boundary other than an agent (in a replay: one running
    live, since served steps run no code), if any."""
    while frame is not None:
        b = frame.b
        if b is not None and b.kind != "agent":
            return frame
        frame = frame.parent
    return None


def _in_llm_boundary(frame: Frame | None) -> bool:
    inner = _inside_boundary(frame)
    return inner is not None and inner.b is not None and inner.b.kind == "llm"


def _hint() -> str:
    """What is most likely not instrumented: the first known library on the calling stack."""
    f: Any = sys._getframe(2)
    while f is not None:
        mod = str(f.f_globals.get("__name__", ""))
        for prefix, what in _HINTS:
            if mod == prefix or mod.startswith(prefix + "."):
                return f"{what}, called from {mod}"
        f = f.f_back
    return "the client making it (rp.instrument(client), or rp.instrument() for every library)"


def _refuse(guard: Guard, frame: Frame | None, target: str, why: str, *, keep: bool) -> None:
    run = getattr(getattr(guard.session, "source", None), "id", "?")
    step = frame.address if frame is not None else ""
    where = f" under step {step}" if step else ""
    err = NetworkRefused(
        f"replay of run {run}: {target}{where} would go out to {why}, and no boundary served "
        f"it. The recording has no step for this call: most likely {_hint()} was not "
        "instrumented when the run was recorded. Instrument it and record again, name the "
        "boundary in live=[...] to run it, or pass allow_network=True (or a list of hosts) to "
        "rp.replay to let it out",
        target=target,
        step=step,
    )
    if keep:
        with guard.lock:
            guard.refused.append(err)
    raise err


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _on_connect(address: Any) -> None:
    if not isinstance(address, tuple) or len(address) < 2:
        return  # a Unix socket or anything not IP
    host, port = str(address[0]), address[1]
    guard, frame = _current()
    if guard is None:
        return
    endpoint = f"{host}:{port}"
    if not guard.replay:
        if _in_llm_boundary(frame):
            guard.saw(endpoint)
        return
    if _inside_boundary(frame) is not None or guard.allows(host, port):
        return
    if not _loopback(host):
        _refuse(guard, frame, f"connect to {endpoint}", "the network", keep=False)
    elif endpoint in guard.endpoints:
        _refuse(
            guard, frame, f"connect to {endpoint}", "the model endpoint the run recorded", keep=True
        )


def _on_http(method: str, url: str) -> None:
    guard, frame = _current()
    if guard is None:
        return
    parts = urlsplit(url)
    host = parts.hostname or ""
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        port = None
    endpoint = f"{host}:{port}"
    model = is_model_path(parts.path)
    if not guard.replay:
        if model:
            guard.saw(endpoint)
            if _inside_boundary(frame) is None:
                _warn_unrecorded(guard, method, _shown(url))
        return
    if _inside_boundary(frame) is not None or guard.allows(host, port):
        return
    if model or endpoint in guard.endpoints:
        _refuse(guard, frame, f"{method} {_shown(url)}", "a model endpoint", keep=True)


def _shown(url: str) -> str:
    """``url`` without its query and fragment, for a message: a query may carry a key."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return url.split("?", 1)[0]
    return parts._replace(query="", fragment="").geturl()


def _warn_unrecorded(guard: Guard, method: str, url: str) -> None:
    with guard.lock:
        if guard.warned:
            return
        guard.warned = True
    run = getattr(getattr(guard.session, "run", None), "id", "?")
    warn(
        f"run {run}: {method} {url} called a model API and no boundary recorded it: most "
        f"likely {_hint()} is not instrumented, so a replay of this run has nothing to serve "
        "for it (and refuses to call out). Instrument it before recording (rp.instrument(obj), "
        "or rp.instrument() for every supported library)",
    )


# -- the hooks --------------------------------------------------------------------------------


def _sync_request(original: Callable[..., Any]) -> Callable[..., Any]:
    def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        _on_http(str(request.method), str(request.url))
        return original(self, request, *args, **kwargs)

    return send


def _async_request(original: Callable[..., Any]) -> Callable[..., Any]:
    async def send(self: Any, request: Any, *args: Any, **kwargs: Any) -> Any:
        _on_http(str(request.method), str(request.url))
        return await original(self, request, *args, **kwargs)

    return send


def _connect(original: Callable[..., Any]) -> Callable[..., Any]:
    def connect(self: Any, address: Any) -> Any:
        try:
            _on_connect(address)
        except NetworkRefused:
            self.close()  # never usable for this call; socket.create_connection would leak it
            raise
        return original(self, address)

    return connect


# (module, class, method, wrapper factory): installed for the modules imported by then.
_HTTP = (
    ("httpx", "Client", "send", _sync_request),
    ("httpx", "AsyncClient", "send", _async_request),
    ("httpx2", "Client", "send", _sync_request),
    ("httpx2", "AsyncClient", "send", _async_request),
    ("requests", "Session", "send", _sync_request),
    ("dspy._vendor.lm15.transports", "StdlibTransport", "stream", _sync_request),
    ("dspy._vendor.lm15.transports", "StdlibAsyncTransport", "stream", _sync_request),
)


def _make() -> list[tuple[Any, str, Any]]:
    out: list[tuple[Any, str, Any]] = [
        (socket.socket, name, _connect(getattr(socket.socket, name)))
        for name in ("connect", "connect_ex")
    ]
    for module, cls_name, method, wrap in _HTTP:
        cls = getattr(sys.modules.get(module), cls_name, None)
        original = getattr(cls, method, None)
        if cls is not None and callable(original):
            out.append((cls, method, wrap(original)))
    return out


_HOOKS = Patches(_make)
