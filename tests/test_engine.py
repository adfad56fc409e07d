"""One engine, four modes: stream and call semantics are the same whether a call is recorded,
replayed, served from a cassette or re-run by fuzz.

Each case runs an agent live once (recording it the way the mode records), then serves it the
way the mode serves, and asserts the agent saw exactly the same thing both times, without the
boundary's function running the second time.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

import replayable as rp
from replayable.testing._fuzz import run_perturbed
from replayable.trace import Event

CALLS: list[str] = []


@rp.boundary(kind="tool")
def plain(n: int) -> dict[str, Any]:
    """Returns a dict out of key order; raises for a negative n."""
    CALLS.append("plain")
    if n < 0:
        raise ValueError(f"bad n {n}")
    return {"n": n, "b": 1, "a": 2}


@rp.boundary(kind="tool")
async def aplain(n: int) -> dict[str, Any]:
    """The async twin of plain; n=999 hangs until cancelled."""
    CALLS.append("aplain")
    if n == 999:
        await asyncio.sleep(30)
    if n < 0:
        raise ValueError(f"bad n {n}")
    return {"n": n, "b": 1, "a": 2}


@rp.boundary(kind="llm")
def stream(n: int) -> Iterator[str]:
    """Yields n chunks (a sent value is echoed; a thrown KeyError is handled); n<0 fails."""
    CALLS.append("stream")
    for i in range(abs(n)):
        try:
            got = yield f"chunk {i}"
            if got is not None:
                yield f"got {got}"
        except KeyError:
            yield "handled"
        if n < 0:
            raise ValueError("stream broke")


@rp.boundary(kind="llm")
async def astream(n: int) -> AsyncIterator[str]:
    """The async twin of stream; n=999 hangs before its second chunk."""
    CALLS.append("astream")
    for i in range(abs(n)):
        if n == 999 and i == 1:
            await asyncio.sleep(30)
        try:
            got = yield f"chunk {i}"
            if got is not None:
                yield f"got {got}"
        except KeyError:
            yield "handled"
        if n < 0:
            raise ValueError("stream broke")


def _note(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


@rp.boundary(kind="agent")
def sync_agent(scenario: str) -> list[Any]:
    """Calls plain the way the scenario says; returns what it saw."""
    try:
        return [plain(-1 if scenario == "exception" else 2)]
    except ValueError as exc:
        return [_note(exc)]


@rp.boundary(kind="agent")
async def async_agent(scenario: str) -> list[Any]:
    """Calls aplain the way the scenario says."""
    try:
        if scenario == "cancellation":
            return [await asyncio.wait_for(aplain(999), 0.05)]
        return [await aplain(-1 if scenario == "exception" else 2)]
    except (ValueError, TimeoutError) as exc:
        return [_note(exc)]


@rp.boundary(kind="agent")
def gen_agent(scenario: str) -> list[Any]:
    """Consumes stream the way the scenario says."""
    seen: list[Any] = []
    g = stream(-3 if scenario == "exception" else 3)
    if scenario == "never_iterated":
        return ["created only"]
    try:
        if scenario == "early_close":
            seen.append(next(g))
            g.close()
        elif scenario == "send_throw":
            seen.append(next(g))
            seen.append(g.send("hi"))
            seen.append(g.throw(KeyError("k")))
            seen.extend(g)
        else:
            for x in g:
                seen.append(x)
    except ValueError as exc:
        seen.append(_note(exc))
    return seen


@rp.boundary(kind="agent")
async def agen_agent(scenario: str) -> list[Any]:
    """Consumes astream the way the scenario says."""
    seen: list[Any] = []
    n = {"exception": -3, "cancellation": 999}.get(scenario, 3)
    g = astream(n)
    if scenario == "never_iterated":
        return ["created only"]
    try:
        if scenario == "early_close":
            seen.append(await anext(g))
            await g.aclose()
        elif scenario == "send_throw":
            seen.append(await anext(g))
            seen.append(await g.asend("hi"))
            seen.append(await g.athrow(KeyError("k")))
            seen.extend([x async for x in g])
        elif scenario == "cancellation":
            seen.append(await anext(g))
            seen.append(await asyncio.wait_for(anext(g), 0.05))
        else:
            async for x in g:
                seen.append(x)
    except (ValueError, TimeoutError) as exc:
        seen.append(_note(exc))
    return seen


AGENTS = {"sync": sync_agent, "async": async_agent, "gen": gen_agent, "agen": agen_agent}
SCENARIOS = {
    "sync": ["normal", "exception"],
    "async": ["normal", "exception", "cancellation"],
    "gen": ["normal", "exception", "early_close", "never_iterated", "send_throw"],
    "agen": ["normal", "exception", "early_close", "never_iterated", "send_throw", "cancellation"],
}
CASES = [(shape, scenario) for shape, names in SCENARIOS.items() for scenario in names]
MODES = ["record", "replay", "cassette", "fuzz"]


def run_agent(shape: str, scenario: str) -> Any:
    result = AGENTS[shape](scenario)
    if asyncio.iscoroutine(result):
        return asyncio.run(result)
    return result


def inner(events: list[Event]) -> Event:
    (ev,) = [e for e in events if e.kind != "agent"]
    return ev


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(("shape", "scenario"), CASES)
def test_stream_and_call_semantics_are_the_same_in_every_mode(
    tmp_path: Path, shape: str, scenario: str, mode: str
) -> None:
    """Served, the agent sees what it saw live, and the boundary's function does not run."""
    CALLS.clear()
    ran = 0 if scenario == "never_iterated" else 1  # a generator's body runs when iterated
    if mode == "cassette":
        tape = tmp_path / "tape.jsonl"
        with rp.cassette(tape, mode="record"):
            live = run_agent(shape, scenario)
        assert len(CALLS) == ran
        CALLS.clear()
        with rp.cassette(tape, mode="replay") as served_tape:
            served = run_agent(shape, scenario)
        assert served_tape.misses == 0
        assert served == live
        assert CALLS == []
        return
    with rp.record() as run:
        live = run_agent(shape, scenario)
    assert len(CALLS) == ran
    CALLS.clear()
    events = list(run.events())
    ev = inner(events)
    if mode == "record":
        assert ev.meta.get("closed_early", False) == (scenario == "early_close")
        assert ev.meta.get("never_started", False) == (scenario == "never_iterated")
        failed = scenario in ("exception", "cancellation")
        assert (ev.error is not None) == failed
        if shape in ("gen", "agen") and scenario in ("normal", "early_close", "send_throw"):
            assert ev.output == live
        if shape in ("gen", "agen") and scenario == "exception":
            assert ev.output == live[:-1]  # the chunks yielded before the error
        return
    if mode == "replay":
        with rp.replay(run.id) as r:
            served = run_agent(shape, scenario)
        assert r.ok, r.report()
    else:
        outcome = run_perturbed(run, events)
        assert outcome.off_record is None
        assert outcome.error is None
        served = outcome.result
        assert inner(outcome.calls).meta.get("closed_early", False) == (scenario == "early_close")
    assert served == live
    assert CALLS == []


class TestDriftBugs:
    """The three ways the modes had drifted apart, each pinned."""

    def test_fuzz_streams_a_live_generator_instead_of_draining_it(self) -> None:
        """A live generator under fuzz yields as it is consumed (not drained up front)."""
        with rp.record() as run:
            gen_agent("early_close")
        CALLS.clear()
        events = list(run.events())
        outcome = run_perturbed(run, events, live=frozenset({"tests.test_engine:stream"}))
        assert outcome.result == ["chunk 0"]
        (call,) = outcome.calls_to("stream")
        assert call.meta.get("closed_early") is True
        assert call.output == ["chunk 0"]

    def test_fuzz_records_a_live_async_generator(self) -> None:
        """A live async generator under fuzz is kept among the outcome's calls."""
        with rp.record() as run:
            asyncio.run(agen_agent("normal"))
        outcome = run_perturbed(
            run, list(run.events()), live=frozenset({"tests.test_engine:astream"})
        )
        (call,) = outcome.calls_to("astream")
        assert call.output == ["chunk 0", "chunk 1", "chunk 2"]

    def test_cassette_streams_hand_send_and_throw_to_the_function(self, tmp_path: Path) -> None:
        """Recording through a cassette, send() and throw() reach the live generator."""
        CALLS.clear()
        with rp.cassette(tmp_path / "t.jsonl", mode="record"):
            seen = gen_agent("send_throw")
        assert seen == ["chunk 0", "got hi", "handled", "chunk 1", "chunk 2"]

    def test_cassette_resolves_live_names_like_replay(self, tmp_path: Path) -> None:
        """live= in a cassette takes name#N: only that call runs live, the others are served."""
        tape = tmp_path / "t.jsonl"
        with rp.cassette(tape, mode="record"):
            plain(1)
            plain(1)
        CALLS.clear()
        with rp.cassette(tape, mode="replay", live=["plain#2"]) as t:
            plain(1)
            plain(1)
        assert CALLS == ["plain"]
        assert (t.hits, t.misses) == (1, 0)

    def test_cassette_refuses_an_unknown_live_name(self, tmp_path: Path) -> None:
        """A live= name that no boundary carries is an error, as in a replay."""
        with (
            pytest.raises(rp.UnknownBoundary, match="no boundary named 'nope'"),
            rp.cassette(tmp_path / "t.jsonl", live=["nope"]),
        ):
            pass


READ = {"n": 1}


@rp.boundary(kind="agent")
def reader() -> list[str]:
    """Reads READ["n"] chunks of a stream, then closes it."""
    g = stream(3)
    seen = [x for _, x in zip(range(READ["n"]), g, strict=False)]
    g.close()
    return seen


class TestPartialStreams:
    def test_reading_past_a_stream_closed_early_when_recorded_is_an_error(self) -> None:
        """A recording that stopped early cannot serve chunks it never saw."""
        READ["n"] = 1
        with rp.record() as run:
            reader()
        READ["n"] = 3
        with pytest.raises(rp.ReplayableError, match="closed after 1 chunk"), rp.replay(run.id):
            reader()
