"""``rp.replay``: run the agent's own code against a recording.

Boundaries of kind ``agent`` and those named in ``live`` execute; every other boundary is served
from the recording and its function is never called. A call is matched to an unconsumed recorded
call under the same parent with the same name and canonical key (so concurrent calls match in any
start order); failing that, the recorded call at the same address tells *what changed*.

The policy and its parts live in :mod:`replayable._replayer` (what-ifs in
:mod:`replayable._fork`); this module is the public entry point.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from contextlib import AbstractContextManager
from typing import Any

from replayable._exports import publish
from replayable._fork import build_whatif
from replayable._pii import PII, for_replay
from replayable._remote import register_recorded
from replayable._replayer import MatchMode, Replay, build_replay, check_version
from replayable._warn import warn
from replayable.cassette import Cassette
from replayable.store import Store, load_run, open_store
from replayable.trace import Run, check_recording

__all__ = ["Replay", "replay"]

Match = MatchMode
"""How a replay matches calls: by place in the call tree and key, or by key alone."""


def replay(
    source: str | os.PathLike[str] | Run,
    *,
    store: Store | str | os.PathLike[str] | None = None,
    live: Iterable[str] = (),
    allow_side_effects: bool = False,
    strict: bool = True,
    match: Match | str = "address",
    override: Mapping[str, Any] | None = None,
    live_from: str | None = None,
    live_kinds: Iterable[str] = (),
    fakes: Mapping[str, Callable[..., Any]] | None = None,
    fallback: Cassette | None = None,
    sandbox: AbstractContextManager[Any] | None = None,
    trust: bool = False,
    follow: bool = False,
    allow_network: bool | Iterable[str] = False,
    pii: PII | bool | None = None,
) -> Replay:
    """Replay a recorded run: a run id (or unique prefix), a :class:`Run`, or a trace file path.

    Boundaries of kind ``agent`` and those named in ``live`` (``"module:qualname"``, a bare
    function name, or ``"name#N"`` for the N-th recorded call only) run; all others are served
    from the recording. A side-effecting boundary in ``live`` is refused unless
    ``allow_side_effects=True``. With ``strict=True`` the first divergence raises
    :class:`Divergence`; with ``strict=False`` divergences collect in ``.divergences``.
    ``match="key"`` matches by canonical key alone, ignoring where the call sits.
    With ``$REPLAYABLE_SIGNING_KEY`` set, a recording that does not verify against it (edited,
    cut short, unsigned) raises :class:`TraceCorrupt` unless ``trust=True``; without a key an
    edited recording is replayed with a warning.

    What-ifs (see :mod:`replayable._fork`): ``override={"name#N": value}`` makes that recorded
    call return ``value`` (or raise it, for an exception); ``live_from="name#N"`` serves every
    call before that step and runs the ones without side effects live from it on;
    ``live_kinds=("llm",)`` runs calls of those kinds live when the recording cannot serve them
    (changed or new), instead of diverging. A side-effecting call after the fork point is served
    only when it matches the recording exactly, else it runs its fake (``fakes={"name": fn}``),
    or live with ``allow_side_effects=True``, or raises :class:`SideEffectRefused`.
    ``Replay.changes`` and ``report()`` say what the what-if changed.

    A run recorded with personal data pseudonymized (``record(pii=...)``) is replayed the
    same way: each live input is pseudonymized with the run's settings before it is keyed and
    compared, so unchanged code matches, and served values carry the pseudonyms. The key
    comes from ``pii=rp.PII(key=...)`` or the environment and must be the run's
    (:class:`PIIKeyError` otherwise). A run recorded without it replays without it.

    Testing a fix: ``fallback=rp.cassette(path)`` serves the calls the recording no longer
    matches (a fix changed the model's input) from a cassette, recorded by one live call the
    first time (``REPLAYABLE_MODE=replay`` makes a miss raise :class:`FixtureMiss`); side
    effects and agents never go to it. They are listed in ``Replay.fallback_calls``, not in
    ``divergences``. ``sandbox=`` is the world the side-effecting boundaries named in ``live``
    act on (a context manager entered for the replay: a scratch database, a fake client); with
    it they run live without ``allow_side_effects``.

    Cross-service (see :mod:`replayable.integrations.http`): a remote call (kind ``remote``) is
    served like any other step, so the other service is not contacted. ``follow=True`` with the
    remote call in ``live`` sends it to a running instance of the callee with replay context:
    the callee's middleware replays its own linked run (nothing re-fired there) and what
    diverged inside it is reported here, with the service's name and its step address.

    A replay is offline unless allowed: a connection no boundary served (a socket to anything
    but loopback, an HTTP request to a model API or to a model endpoint the recording talked
    to) raises :class:`~replayable.errors.NetworkRefused` naming the call and what is most
    likely not instrumented. ``allow_network=True`` lets everything out, a list of hosts
    (``"api.example.com"`` or ``"host:port"``) only those; boundaries that run live may always
    go out.

    >>> import replayable as rp
    >>> lookup = rp.boundary(kind="tool")(lambda name: {"name": name, "id": 7})
    >>> with rp.record() as run:
    ...     lookup("Bob")["id"]
    7
    >>> with replay(run.id) as r:
    ...     lookup("Bob")["id"]
    7
    >>> print(r.report().splitlines()[1])
    no divergence: the code took the recorded path
    """
    source_run, events = load_run(source, store)
    check_version(source_run)
    checked = check_recording(source_run, events, trust=trust)
    if not checked.ok:
        warn(
            f"run {source_run.id} does not verify ({checked.problem}): it was edited after it "
            "was recorded; replaying it anyway (`replayable verify` says more)",
        )
    target = open_store(store) if store is not None else (source_run.store or open_store(None))
    if fallback is not None and not isinstance(fallback, Cassette):
        raise TypeError(f"fallback must be a cassette (rp.cassette(path)), not {fallback!r}")
    whatif = bool(override or live_from is not None or live_kinds or fakes)
    if fallback is not None and whatif:
        raise TypeError(
            "fallback= does not combine with override/live_from/live_kinds/fakes: a what-if "
            "decides itself what runs live; use live_kinds=('llm',) there instead"
        )
    if sandbox is not None and not hasattr(sandbox, "__enter__"):
        raise TypeError(f"sandbox must be a context manager (the test's world), not {sandbox!r}")
    register_recorded(events)
    options: dict[str, Any] = {
        "follow": follow,
        "allow_network": allow_network,
        "live": live,
        "allow_side_effects": allow_side_effects,
        "strict": strict,
        "match": match,
        "fallback": fallback,
        "sandbox": sandbox,
        "pii": for_replay(source_run.id, source_run.metadata, pii),
    }
    if not whatif:
        return build_replay(source_run, events, target=target, **options)
    return build_whatif(
        source_run,
        events,
        target=target,
        override=dict(override or {}),
        live_from=live_from,
        live_kinds=tuple(live_kinds),
        fakes=dict(fakes or {}),
        **options,
    )


publish(globals())
