"""Re-running one recorded step alone: the engine policy that serves its nested calls from the
recording (and stops the step on any other), and the call of its boundary with the recorded input,
sync or async."""

from __future__ import annotations

import inspect
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import orjson

from replayable import _cut, canonical
from replayable._engine import Ending, Engine, Serve
from replayable._errors_codec import encode_error
from replayable.boundary import Boundary
from replayable.context import Frame
from replayable.errors import ReplayableError
from replayable.redact import redact
from replayable.trace import Event

if TYPE_CHECKING:
    from replayable._pii import Pseudonymizer


class NotRerunnable(ReplayableError):
    """The step cannot be re-run alone (its boundary is missing, or it needs a live call)."""


class StepSession:
    """The drift policy for one step: the step itself runs live, calls nested in it are served
    from its recorded subtree, clock and randomness run live (the model samples again), and any
    other call stops the step (it is reported as not re-run).

    ``pii``: the recorded run's pseudonymizer (a run recorded with ``pii=``): a nested call's
    input is pseudonymized before it is keyed, as the recording's was, and the live answer
    before it is compared or reported, so no report holds a personal value the run did not."""

    serves_recordings = True  # a side effect called outside the context is refused, not fired

    def __init__(self, top: Event, nested: list[Event], pii: Pseudonymizer | None = None) -> None:
        self.pii = pii
        self.engine = Engine(self)
        self.root = self.engine.root
        self.top = top
        self.pending = list(nested)
        self.lock = threading.Lock()
        self.blocked: NotRerunnable | None = None
        """Set when a nested call could not be served, even if the model code caught it."""
        self.live: _Live | None = None

    def at_start(self, frame: Frame) -> Serve | None:
        b = frame.b
        assert b is not None
        if frame.parent is self.root or b.kind == "clock":
            return None
        _, _, key = canonical.keyed_input(b, frame.data, self.pii)
        found: Event | None = None
        with self.lock:
            for ev in self.pending:
                if ev.boundary == b.name and ev.key == key:
                    self.pending.remove(ev)
                    found = ev
                    break
        if found is not None:
            if not _cut.was_cut(found, "output"):
                output = found.output
                if found.has_meta(canonical.TAGGED_META):  # colliding keys: rebuilt whole
                    output = canonical.untag(output)
                return Serve.recorded(output, found.error, found.meta)
            self.blocked = NotRerunnable(
                f"it calls {b.name}, whose recorded output was {_cut.describe(found.output)} "
                "(over the size cap)"
            )
            raise self.blocked
        self.blocked = NotRerunnable(
            f"it calls {b.name} with an input the recording does not have; drift re-runs only "
            f"the {self.top.kind} call itself"
        )
        raise self.blocked

    def at_end(self, frame: Frame, outcome: Ending) -> None:
        if frame.parent is not self.root:
            return
        output = None if outcome.output is None else redact(orjson.loads(outcome.output))
        error = None if outcome.error is None else encode_error(outcome.error)
        meta = dict(frame.meta)
        if self.pii is not None:
            output, error, meta = (
                self.pii.value(output),
                self.pii.value(error),
                self.pii.value(meta),
            )
        self.live = _Live(output=output, error=error, meta=meta)

    def function(self, frame: Frame) -> Callable[..., Any]:
        """The boundary's own function."""
        b = frame.b
        assert b is not None
        return b.fn


def recorded_arguments(b: Boundary, ev: Event) -> tuple[list[Any], dict[str, Any]]:
    """The recorded input as call arguments (``*args`` and positional-only ones restored)."""
    if _cut.was_cut(ev, "input"):
        raise NotRerunnable(
            f"its input was {_cut.describe(ev.input)} (over the size cap), so the recording "
            "cannot re-send it"
        )
    recorded = canonical.untag(ev.input)  # a dict whose keys collide goes back whole
    kwargs = dict(recorded) if isinstance(recorded, dict) else {}
    args: list[Any] = []
    if b.signature is not None:
        params = list(b.signature.parameters.values())
        if params and params[0].name in ("self", "cls"):
            raise NotRerunnable(
                f"{b.name} is a method; drift calls functions (instrument the client, or make "
                "the model call a function boundary)"
            )
        for p in params:
            if p.kind is inspect.Parameter.VAR_POSITIONAL:
                args = list(kwargs.pop(p.name, []))
            elif p.kind is inspect.Parameter.POSITIONAL_ONLY and p.name in kwargs:
                args.append(kwargs.pop(p.name))
    return args, kwargs


@dataclass(slots=True)
class _Live:
    output: Any = None
    error: dict[str, Any] | None = None
    meta: dict[str, Any] = field(default_factory=dict)


def run_sync(session: StepSession, b: Boundary, args: list[Any], kwargs: dict[str, Any]) -> None:
    session.engine.enter()
    try:
        result = b.wrapper(*args, **kwargs)
        if inspect.isgenerator(result):
            for _ in result:
                pass
    except Exception:
        pass  # the engine handed it to at_end: the live answer is an error
    finally:
        session.engine.leave()


async def run_async(
    session: StepSession, b: Boundary, args: list[Any], kwargs: dict[str, Any]
) -> None:
    session.engine.enter()
    try:
        result = b.wrapper(*args, **kwargs)
        if inspect.isasyncgen(result):
            async for _ in result:
                pass
        else:
            await result
    except Exception:
        pass  # the engine handed it to at_end: the live answer is an error
    finally:
        session.engine.leave()
