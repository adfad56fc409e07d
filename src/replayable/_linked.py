"""Runs linked across services: start a callee's run from a request's context, find the runs a
caller's steps started, and replay a linked run when its caller asks to follow.

Used by the ASGI and WSGI middleware (:mod:`replayable.integrations.web`), by ``show``/the viewer
(one tree) and by ``diff``/``check --follow``. A linked run keeps its caller in
``metadata["parent"]`` (run, step, service; covered by the run's seal like all metadata) and the
caller's run id in the tag ``rp.parent`` (so a store finds a caller's callees with one query).
"""

from __future__ import annotations

import base64
import logging
import os
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Literal

import orjson

from replayable import _propagation as prop
from replayable._follow import LINKED_HEADER, PROBE_HEADER, PROBE_VALUE
from replayable._remote import FOLLOW_HEADER, MAX_FOLLOW_HEADER
from replayable.context import SESSION
from replayable.errors import Divergence
from replayable.record import record
from replayable.store import Store, open_store
from replayable.store.base import RunQuery
from replayable.trace import Run

__all__ = [
    "PARENT_TAG",
    "Callee",
    "Decision",
    "Policy",
    "Requests",
    "callees",
    "decide",
    "find_linked",
    "follow_header",
    "linked_header",
    "linked_tree",
    "merged_events",
    "run_metadata",
]

log = logging.getLogger("replayable")

PARENT_TAG = "rp.parent"
Requests = Literal["all", "with-context", "none"]
_REQUESTS = ("all", "with-context", "none")
_MAX_CALLEES = 10_000


@dataclass(frozen=True, slots=True)
class Decision:
    """What the middleware does with one request: ``record`` a run (linked to ``incoming``'s
    caller when there is one), ``follow`` (replay ``linked``), answer a follow ``probe`` (name
    ``linked``, run nothing), ``refuse`` a follow request it cannot honour (``reason``; the
    app never runs), or nothing (``None``)."""

    action: Literal["record", "follow", "probe", "refuse"]
    incoming: prop.Incoming | None
    linked: Run | None = None
    reason: str = ""

    @property
    def links(self) -> bool:
        """The request starts a run linked to a caller (the callee answers with its id)."""
        return self.incoming is not None and self.incoming.caller is not None


def check_requests(requests: str) -> Requests:
    """``requests`` if it is one of ``all``, ``with-context``, ``none``, else ``ValueError``."""
    if requests not in _REQUESTS:
        raise ValueError(f"requests must be one of {', '.join(_REQUESTS)}, not {requests!r}")
    return requests  # type: ignore[return-value]


def find_linked(store: Store, link: prop.Link) -> Run | None:
    """The recorded run (not a replay) that ``link``'s step started in ``store``, if any."""
    for run in callees(store, link.run):
        parent = run.parent
        if parent is not None and parent.step == link.step and run.parent_run is None:
            return run
    return None


def callees(store: Store, run_id: str) -> list[Run]:
    """The runs in ``store`` that steps of run ``run_id`` started, oldest first."""
    runs = store.list_runs(RunQuery(tags={PARENT_TAG: run_id}, limit=_MAX_CALLEES))
    found = [r for r in runs if r.parent is not None and r.parent.run == run_id]
    return sorted(found, key=lambda r: r.started_at)


@dataclass(slots=True)
class Callee:
    """A run that one step of another run started, with its events and its own callees."""

    run: Run
    events: list[Any]
    callees: dict[str, list[Callee]]


def linked_tree(
    run: Run, stores: Iterable[Store], *, depth: int = 8, seen: set[str] | None = None
) -> dict[str, list[Callee]]:
    """The runs ``run``'s steps started, found in ``stores``, by the calling step's address
    (nested: each callee with its own callees, ``depth`` levels at most; a run is never shown
    twice, so a forged loop of links ends)."""
    seen = {run.id} if seen is None else seen
    out: dict[str, list[Callee]] = {}
    if depth <= 0:
        return out
    for store in stores:
        for callee in callees(store, run.id):
            if callee.id in seen or callee.parent is None:
                continue
            seen.add(callee.id)
            nested = linked_tree(callee, stores, depth=depth - 1, seen=seen)
            entry = Callee(callee, list(store.iter_events(callee.id)), nested)
            out.setdefault(callee.parent.step, []).append(entry)
    return out


_SEQ_STRIDE = 1_000_000


def merged_events(events: Iterable[Any], linked: Mapping[str, list[Callee]]) -> list[Any]:
    """A run's events with its linked runs' events folded in, as if one run: a callee's step
    ``a/0`` under the caller's step ``s`` becomes ``s > service: a/0`` (the address a followed
    replay reports a callee's divergence at), its seq moved past the caller's. For
    ``diff --follow``."""
    from replayable.trace import Event

    out: list[Any] = list(events)
    by_address = {ev.address: ev for ev in out}
    block = 0

    def fold(step: str, callees: list[Callee]) -> None:
        nonlocal block
        caller = by_address.get(step)
        for callee in callees:
            block += 1
            service = callee.run.metadata.get("service") or "service"
            offset = block * _SEQ_STRIDE
            for ev in callee.events:
                copy = Event.from_dict(ev.to_dict())
                copy.address = f"{step} > {service}: {ev.address}"
                copy.seq = ev.seq + offset
                if ev.parent_seq is not None:
                    copy.parent_seq = ev.parent_seq + offset
                elif caller is not None:
                    copy.parent_seq = caller.seq
                out.append(copy)
                by_address[copy.address] = copy
            for sub, nested in callee.callees.items():
                fold(f"{step} > {service}: {sub}", nested)

    for step, callees in linked.items():
        fold(step, callees)
    return out


def decide(
    headers: Mapping[str, str],
    *,
    requests: Requests,
    follow: bool,
    store: Store,
    service: str | None,
) -> Decision | None:
    """What to do with a request whose (lower-case) headers are ``headers``.

    A follow request (a replay asking this service to replay its linked run) is honoured only
    by a middleware built with ``follow=True`` (a local replay instance) and only for a run of
    this store linked to exactly that caller step; any other well-formed follow request is
    refused with a warning and never handled live (handling it would do again what the replay
    means not to). A follow probe (``replayable-probe: follow``) is answered, never run.
    Malformed context is ignored with a warning and the request handled as one without it.
    """
    incoming = prop.parse(headers, service)
    caller = incoming.caller if incoming is not None else None
    if incoming is not None and incoming.mode == "follow" and incoming.source is not None:
        source = incoming.source
        if not follow:
            reason = "this service's middleware was not started with follow=True"
        else:
            linked = find_linked(store, source)
            if linked is not None:
                probe = headers.get(PROBE_HEADER) == PROBE_VALUE
                return Decision("probe" if probe else "follow", incoming, linked)
            reason = (
                f"no run of this store is linked to step {source.step[:200]!r} of run {source.run}"
            )
        log.warning(
            "replayable: refused a request asking to follow (replay) a linked run: %s", reason
        )
        return Decision("refuse", incoming, reason=f"cannot follow: {reason}")
    if requests == "all" or (requests == "with-context" and caller is not None):
        return Decision("record", incoming)
    return None


def run_metadata(
    incoming: prop.Incoming | None, service: str | None, method: str, path: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """The metadata and tags of a run a request starts."""
    metadata: dict[str, Any] = {"request": {"method": method, "path": path[: prop.MAX_STEP]}}
    tags: dict[str, str] = {}
    if service:
        metadata["service"] = service
    if incoming is not None and incoming.trace_id is not None:
        metadata["trace_id"] = incoming.trace_id
    if incoming is not None and incoming.caller is not None:
        metadata["parent"] = incoming.caller.to_dict()
        tags[PARENT_TAG] = incoming.caller.run
    return metadata, tags


def linked_header(run: Run) -> tuple[str, str]:
    """The ``replayable-linked`` answer naming ``run``: the run a request started (or, to a
    follow probe, the run the service will replay), so the caller's step keeps the evidence
    a ``follow`` replay needs."""
    return LINKED_HEADER, run.id


def follow_header(
    service: str | None, replay_run: Run, divergences: Iterable[Divergence]
) -> tuple[str, str]:
    """The ``replayable-follow`` response header: what diverged in the callee's replay."""
    found = [
        {
            "reason": d.reason,
            "address": d.address,
            "boundary": d.boundary,
            "detail": (d.detail or d.describe().splitlines()[0])[:1000],
        }
        for d in divergences
    ]
    body: dict[str, Any] = {"service": service, "run": replay_run.id, "divergences": found}
    value = base64.urlsafe_b64encode(orjson.dumps(body)).decode("ascii")
    while len(value) > MAX_FOLLOW_HEADER and found:
        found.pop()
        body["truncated"] = True
        value = base64.urlsafe_b64encode(orjson.dumps(body)).decode("ascii")
    return FOLLOW_HEADER, value


class Policy:
    """What every entry point of a service shares (ASGI and WSGI middleware, an MCP server):
    its store, its name, which requests record, whether it follows replays."""

    def __init__(
        self,
        store: Store | str | os.PathLike[str] | None,
        service: str | None,
        requests: str,
        follow: bool,
    ) -> None:
        self.store = open_store(store)
        self.service = service
        self.requests: Requests = check_requests(requests)
        self.follow = follow

    def decide(self, headers: dict[str, str]) -> Decision | None:
        if SESSION.get() is not None:  # called in-process from inside a run: that run records
            return None
        return decide(
            headers,
            requests=self.requests,
            follow=self.follow,
            store=self.store,
            service=self.service,
        )

    def recording(self, decision: Decision, method: str, path: str) -> Any:
        metadata, tags = run_metadata(decision.incoming, self.service, method, path)
        name = f"{self.service + ': ' if self.service else ''}{method} {path}"[:200]
        return record(self.store, name=name, tags=tags, metadata=metadata)

    def replaying(self, decision: Decision) -> Any:
        from replayable.replay import replay

        assert decision.linked is not None
        r = replay(decision.linked, store=self.store, strict=False)
        # Before it starts: the tags are in the run's genesis hash, the metadata in its seal.
        replay_run = r.run
        incoming = decision.incoming
        if incoming is not None and incoming.caller is not None:
            replay_run.metadata["parent"] = incoming.caller.to_dict()
            replay_run.tags[PARENT_TAG] = incoming.caller.run
        if self.service:
            replay_run.metadata["service"] = self.service
        return r
