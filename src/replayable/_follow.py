"""When a replay may send a side-effecting remote call live: the ``follow`` safety rule.

``rp.replay(run, live=[remote], follow=True)`` sends the named remote call to a running
instance of the callee and asks it to replay its own linked run instead of acting. That is
only safe when the callee *will* replay. A side-effecting remote call (a POST to billing, an
MCP tool that writes, an A2A message) therefore goes live under ``follow`` without
``allow_side_effects=True`` only when both hold:

1. **The recording shows the callee recorded a linked run for that very step.** A callee
   running replayable's middleware (or ``mcp.serve``, or the A2A executor wrapper) answers a
   request that carried a caller's context with the id of the run it started
   (``replayable-linked``: a response header over HTTP, a ``_meta`` / metadata entry over MCP and
   A2A); the caller keeps it in the step's metadata (``meta["linked"]``). A step without it was
   answered by a service that records nothing, which would simply do it again. This is checked
   when the replay starts, for every recorded call ``live=`` names, before anything runs.
2. **The callee acknowledges replay context, before the request is sent.** Over HTTP a probe
   (``OPTIONS`` on the same URL, carrying the follow context and ``replayable-probe: follow``,
   a safe method with no body) must be answered 2xx with ``replayable-linked`` naming the run
   the recording names: only a middleware built with ``follow=True`` that holds that run does
   so, and it runs none of the app's code for a probe. Over MCP the probe is a ``tools/list``
   request whose ``_meta`` carries the same (no tool runs): only ``mcp.serve(follow=True)``
   holding that run names it in the listing's ``_meta``. Over A2A the follow message itself is
   the probe: a replayable agent that cannot replay the linked run refuses it without running
   the agent (rule 1 makes sure the callee is a replayable one).

Otherwise the call is refused with :class:`~replayable.errors.SideEffectRefused` naming the
step, before a byte of it is sent; the two ways out are to serve it from the recording (leave it
out of ``live=``) or to pass ``allow_side_effects=True`` (the callee then acts: its own effects
happen again). A call the recording cannot match (a new or changed request with no recorded
counterpart) has no linked run to replay and is refused the same way.

The callee's side of the rule lives with the middleware (:mod:`replayable._linked`): a follow
request it cannot honour is refused (HTTP 409, an MCP/A2A error), never handled live.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable, Mapping
from typing import Any

from replayable.errors import SideEffectRefused

__all__ = [
    "LINKED_HEADER",
    "PROBE_HEADER",
    "PROBE_VALUE",
    "Follow",
    "check_ack",
    "gate",
    "linked_run",
    "parse_linked",
    "refusal",
]

log = logging.getLogger("replayable")

LINKED_HEADER = "replayable-linked"
"""A callee's answer naming the run it started (or, to a probe, the run it will replay)."""
PROBE_HEADER = "replayable-probe"
PROBE_VALUE = "follow"
_RUN_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")


def parse_linked(value: Any) -> str | None:
    """The run id in a callee's ``replayable-linked`` answer, or ``None`` when it is not one
    (malformed, oversized or forged values are ignored with a warning)."""
    if value is None:
        return None
    if isinstance(value, str):
        run = value.strip()
        if len(run) <= 128 and _RUN_ID.fullmatch(run) and ".." not in run:
            return run
    log.warning("replayable: ignored a malformed %s answer from a callee", LINKED_HEADER)
    return None


def linked_run(event: Any) -> str | None:
    """The callee run the recorded step ``event`` started (``meta["linked"]["run"]``), if the
    recording shows one."""
    if event is None:
        return None
    meta = getattr(event, "meta", None)
    linked = meta.get("linked") if isinstance(meta, Mapping) else None
    run = linked.get("run") if isinstance(linked, Mapping) else None
    return run if isinstance(run, str) and _RUN_ID.fullmatch(run) else None


def refusal(name: str, address: str | None, why: str) -> SideEffectRefused:
    """The error for a side-effecting remote call that ``follow`` cannot make safe."""
    where = f"{name} at {address}" if address else name
    return SideEffectRefused(
        f"{where} has side effects and follow=True cannot make sending it live safe: {why}. "
        "Nothing was sent. Either serve it from the recording (leave it out of live=) or pass "
        "allow_side_effects=True (CLI: --allow-side-effects) if you mean the callee to act "
        "again; to replay the callee instead, run it with replayable's middleware "
        "(follow=True, its own store) and record the incident through it"
    )


class Follow:
    """The replay policy's follow part: it holds the rule above for one replay.

    A :class:`~replayable._replayer.ReplayPolicy` built with ``follow=True`` holds one (as it
    holds its matcher and server) and the session exposes it as ``follow``: remote calls named
    in ``live=`` then carry the follow context, and a side-effecting one goes live only as the
    rule allows. ``events``: the recorded run's events by seq; ``allow_side_effects``: the
    replay lets side effects act (``allow_side_effects=True`` or a sandbox), so nothing is gated.
    """

    __slots__ = ("allow_side_effects", "events")

    def __init__(self, events: Mapping[int, Any], *, allow_side_effects: bool) -> None:
        self.events = events
        self.allow_side_effects = allow_side_effects

    def check_live(self, name: str, events: Iterable[Any]) -> None:
        """Refuse, before the replay starts, a side-effecting remote boundary ``name`` named in
        ``live=`` whose recorded calls (``events``: the ones that will run live) show no linked
        run in the callee."""
        for ev in events:
            if linked_run(ev) is None:
                raise refusal(
                    name,
                    getattr(ev, "address", None),
                    "the recording shows no run linked to this step in the callee (the service "
                    "that answered it did not run replayable's middleware), so it would act again",
                )

    def expected(self, frame: Any, name: str, side_effects: bool) -> str | None:
        """The callee run the live call at ``frame`` must have acknowledged before it is sent
        (``None``: no acknowledgement needed: not a side effect, or side effects allowed).
        Raises :func:`refusal` when the call has no recorded step linked to a callee run."""
        if not side_effects or self.allow_side_effects:
            return None
        rec = frame.rec_seq if frame is not None else None
        expected = linked_run(self.events.get(rec) if rec is not None else None)
        if expected is None:
            raise refusal(
                name,
                frame.address if frame is not None else None,
                "it has no recorded counterpart linked to a run in the callee (a new or changed "
                "request, or one the callee did not record), so the callee has nothing to "
                "replay and would act",
            )
        return expected


def gate(name: str, side_effects: bool) -> str | None:
    """Called by a remote call about to go live: the callee run the call's recorded step is
    linked to, when the active replay follows and the call is a side effect (the caller must
    then have the callee acknowledge it before sending); ``None`` when no acknowledgement is
    needed. Raises :func:`refusal` (see :meth:`Follow.expected`)."""
    from replayable.context import FRAME, SESSION

    session = SESSION.get()
    follow = session.follow if session is not None and session.serves_recordings else None
    if follow is None:
        return None
    return follow.expected(FRAME.get(), name, side_effects)


def check_ack(name: str, status: int | None, answer: str | None, expected: str) -> None:
    """Refuse unless a follow probe was answered (2xx over HTTP: ``status``; ``None`` where
    the protocol has no status) naming ``expected`` (the callee run the recording names) in
    ``replayable-linked``."""
    from replayable.context import FRAME

    frame = FRAME.get()
    got = parse_linked(answer) if answer is not None else None
    if (status is None or 200 <= status < 300) and got == expected:
        return
    said = f"naming run {got}" if got else f"without {LINKED_HEADER}"
    code = "" if status is None else f" {status}"
    raise refusal(
        name,
        frame.address if frame is not None else None,
        f"the callee did not acknowledge replay context (it answered the follow probe"
        f"{code} {said}; run {expected} expected): it is not running replayable's "
        "middleware with follow=True over the store that holds that run",
    )
