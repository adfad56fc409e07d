"""``promote``: a recorded run becomes a trace file and a ready-to-run pytest test.

The test replays the trace around a call of the run's root agent with its recorded arguments,
then asserts structure. Three flavours:

- *regression* (default): the path must stay the recorded one. It passes on the unchanged code
  and fails, showing the divergence, once the path changes.
- *incident* (``forbid=["delete_record"]``): the recorded path is the bug. The test asserts that
  the calls leading up to it still happen and that the forbidden boundary is not called; it fails
  on the code that produced the incident and passes once the fix (in the agent, or the prompt
  that steers the model away from the call) stops the bad call.
- *incident, tool live* (``live=["issue_refund"]``): the fix may be inside the tool. The tool
  runs live in a world the test provides (``world``: a scratch database, a fake client; a marked
  stub until filled in, or ``"module:function"``), and the test asserts that it no longer does
  what it did in the incident: called with the incident's arguments, returning the incident's
  outcome. Fixes in the agent or the prompt pass too.

Both incident flavours replay with a fallback cassette (``cassettes/NAME.jsonl``): a fix that
changes what the model is asked is served from the cassette, recorded by one live call the first
time (``REPLAYABLE_MODE=replay`` in CI makes a miss fail instead).
"""

from __future__ import annotations

import importlib
import keyword
import os
import re
import sys
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson

from replayable._otlp._replay import CODE_KINDS, is_imported
from replayable._rootcall import root_call, root_event
from replayable.boundary import Boundary, bare_name, registry, resolve_name
from replayable.errors import ReplayableError
from replayable.trace import Event, Run, write_trace

__all__ = ["Promoted", "default_name", "promote", "render_test"]

_SCALARS = (str, int, float, bool, type(None))
_MAX_LITERAL = 80


@dataclass(frozen=True, slots=True)
class Promoted:
    """What :func:`promote` wrote."""

    trace: Path
    test: Path
    test_name: str
    calls: int


def _slug(text: str) -> str:
    """``text`` reduced to ASCII letters, digits and ``_``: safe in a file name and in a Python
    identifier, whatever a recording holds."""
    return re.sub(r"[^A-Za-z0-9_]+", "_", text).strip("_")


def default_name(run: Run) -> str:
    """A file-and-function-friendly name: the run's name and the start of its id."""
    base = _slug((run.name or "run").lower()) or "run"
    return f"{base}_{_slug(run.id[:8]) or 'run'}"


_MODULE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def _root(run: Run, events: Sequence[Event]) -> Event:
    return root_event(run, events, purpose="promote")


def _root_and_boundary(
    run: Run, events: Sequence[Event]
) -> tuple[Event, str, str, Boundary | None]:
    """The root call the test makes and the function it imports for it. An imported run's root
    is a traced span: it stands for the one registered agent of its name, resolved as ``check``
    resolves it (:func:`~replayable._rootcall.root_call`, which says which function to decorate
    when there is none, and refuses a root whose input the trace did not carry)."""
    if is_imported(run):
        b, root = root_call(run, events)
        return (root, *_root_boundary(b.name))
    root = _root(run, events)
    return (root, *_root_boundary(root.boundary))


def _root_boundary(name: str) -> tuple[str, str, Boundary | None]:
    module, _, qualname = name.partition(":")
    if (
        not _MODULE.fullmatch(module)
        or not qualname.isidentifier()
        or keyword.iskeyword(qualname)
        or any(keyword.iskeyword(part) for part in module.split("."))
        or module == "__main__"
    ):
        raise ReplayableError(
            f"the run's root call {name!r} is not a module-level function that a test "
            "can import; promote needs one (wrap the agent in a module-level "
            "@boundary(kind='agent'))"
        )
    if "." not in sys.path and "" not in sys.path:
        sys.path.insert(0, ".")
    try:
        importlib.import_module(module)
    except ImportError as exc:
        raise ReplayableError(
            f"cannot import {module!r} to write its test ({exc}); run promote from the project "
            "root, where the test will import it"
        ) from None
    b = registry().get(name)
    if b is None:
        # The test will call this function with recorded arguments: only a function the
        # project itself declared a boundary (not any importable callable a trace names).
        raise ReplayableError(
            f"{module}:{qualname} is not a registered @boundary once {module!r} is imported; "
            "promote only writes tests that call the project's own boundaries"
        )
    return module, qualname, b


def _literal(value: Any) -> str:
    """A Python literal for a recorded value: JSON types only (a round trip through JSON
    first), so ``repr`` can only give a literal, never code."""
    return repr(orjson.loads(orjson.dumps(value)))


def _short_pattern(value: Any) -> str:
    """A partial argument pattern: short scalar fields only (long texts and lists left out)."""
    if not isinstance(value, dict):
        return "rt.ANY"
    fields = {
        k: v for k, v in value.items() if isinstance(v, _SCALARS) and len(repr(v)) <= _MAX_LITERAL
    }
    return _literal(fields) if fields else "rt.ANY"


def _call_expr(fn: str, value: Any) -> str:
    if value is not None and not isinstance(value, dict):
        # An imported agent step's input, traced as one value: its one argument (as check
        # calls it, replayable._rootcall.call_recorded).
        return f"{fn}({_literal(value)})"
    if isinstance(value, dict) and all(
        isinstance(k, str) and k.isidentifier() and not keyword.iskeyword(k) for k in value
    ):
        if not value:
            return f"{fn}()"
        args = ",\n        ".join(f"{k}={_literal(v)}" for k, v in value.items())
        return f"{fn}(\n        {args},\n    )"
    return f"{fn}(**{_literal(value if isinstance(value, dict) else {})})"


def _ident(name: str) -> str:
    """``name`` as part of a Python identifier (ASCII letters, digits, ``_``)."""
    return _slug(name) or "boundary"


_OUTCOME_FIELDS = (
    "status",
    "state",
    "outcome",
    "result",
    "ok",
    "success",
    "succeeded",
    "blocked",
    "approved",
    "error",
)


def _outcome_pattern(value: Any) -> str:
    """The part of a recorded output that says what happened: its status-like scalar fields
    when it has any, else every short scalar field."""
    if not isinstance(value, dict):
        return _literal(value) if isinstance(value, _SCALARS) else "rt.ANY"
    named = {k: v for k, v in value.items() if k in _OUTCOME_FIELDS and isinstance(v, _SCALARS)}
    return _literal(named) if named else _short_pattern(value)


def _world_spec(world: str) -> tuple[str, str]:
    """``module:function`` checked as two identifiers (it is written into the test as code)."""
    module, _, fn = world.partition(":")
    if (
        not _MODULE.fullmatch(module)
        or not fn.isidentifier()
        or keyword.iskeyword(fn)
        or any(keyword.iskeyword(part) for part in module.split("."))
    ):
        raise ReplayableError(
            f"world {world!r}: use MODULE:FUNCTION, a context manager factory taking the test's "
            "tmp_path (e.g. myapp.testing:scratch_db)"
        )
    return module, fn


def _led_up(before: Sequence[Event]) -> list[str]:
    """Generated lines asserting that the steps before the incident's call still happen, in
    order, others allowed between them."""
    return [
        "    # The steps that led up to the incident still happen...",
        "    rt.assert_calls(",
        "        replay,",
        "        [",
        *(f"            ({bare_name(e.boundary)!r}, {_short_pattern(e.input)})," for e in before),
        "        ],",
        "        exact=False,",
        "    )",
    ]


def _live_body(
    steps: Sequence[Event],
    live_tools: Sequence[str],
    forbidden: Sequence[str],
    *,
    prefix: str,
    call: str,
    name: str,
    world: str | None,
) -> list[str]:
    """The incident test whose tools run live in the test's world (``promote --live``)."""
    first = min((i for i, e in enumerate(steps) if e.boundary in live_tools), default=len(steps))
    # Recorded names reach comments and strings slugged (_ident), code only through repr().
    tools = ", ".join(_ident(bare_name(t)) for t in live_tools)
    stub = [
        "@contextmanager",
        "def world(tmp_path: Path) -> Iterator[None]:",
        f"    # STUB written by `replayable promote --live`: the world {tools} act(s) on in",
        "    # this test. Replace this body: point the tool at a scratch database under",
        "    # tmp_path or at a fake client, then yield. Until then the test fails here.",
        "    pytest.fail(",
        f'        "world() is a stub: give {tools} a world of its own (see its comment)",',
        "        pytrace=False,",
        "    )",
        "    yield",
        "",
        "",
    ]
    enter = "async with" if prefix == "async def" else "with"
    tool_id = _ident(bare_name(live_tools[0]))
    lines = [
        *([] if world else stub),
        f"{prefix} test_{name}_does_not_repeat_{tool_id}(replayable, tmp_path):",
        f'    """The incident: {tools} run(s) live in a world of the test\'s own and must not',
        '    do again what it did in the incident (fixes in the tool, agent or prompt pass)."""',
        "    here = Path(__file__).parent",
        f"    {enter} replayable.replay(",
        "        here / TRACE,",
        f"        live={[bare_name(t) for t in live_tools]!r},",
        "        sandbox=world(tmp_path),",
        "        fallback=rp.cassette(here / CASSETTE),",
        "        strict=False,",
        "    ) as replay:",
        f"        {call.replace(chr(10), chr(10) + '    ')}",
        *_led_up(steps[:first]),
        "    # ...but not the incident: the call with its arguments that did what it did.",
    ]
    for e in steps:
        if e.boundary in live_tools:
            lines += [
                "    rt.assert_not_called(",
                "        replay,",
                f"        {bare_name(e.boundary)!r},",
                f"        {_short_pattern(e.input)},",
                f"        output={_outcome_pattern(e.output)},",
                "    )",
            ]
    lines += [f"    rt.assert_not_called(replay, {bare_name(f)!r})" for f in forbidden]
    return lines


def _call_shape(fn: str, root: Event, b: Boundary | None) -> tuple[str, str]:
    """How the test calls the root agent: ``def`` or ``async def``, and the call expression
    (awaited, or its chunks collected for a generator)."""
    call = _call_expr(fn, root.input)
    if b is not None and b.is_agen:
        prefix, call = "async def", f"[chunk async for chunk in {call}]"
    elif b is not None and b.is_async:
        prefix, call = "async def", f"await {call}"
    elif b is not None and b.is_gen:
        prefix, call = "def", f"list({call})"
    else:
        prefix = "def"
    return prefix, call


def _module_head(
    run: Run,
    module: str,
    fn: str,
    trace_rel: str,
    cassette_rel: str | None,
    *,
    live_tools: list[str],
    forbidden: list[str],
    world: str | None,
) -> list[str]:
    """The test module's docstring, imports and constants."""
    when = datetime.fromtimestamp(run.started_at, UTC).strftime("%Y-%m-%d %H:%M UTC")
    # Recorded text (run id and name, boundary names, arguments) reaches this source only as
    # repr() literals; identifiers are checked (module, function) or slugged (test names).
    std = ["from pathlib import Path"] if live_tools else []
    if live_tools and world is None:
        std[:0] = ["from collections.abc import Iterator", "from contextlib import contextmanager"]
    third = [] if live_tools and world else ["import pytest"]
    ours = [*(["import replayable as rp"] if live_tools else []), "import replayable.testing as rt"]
    ours.append(f"from {module} import {fn}")
    if world is not None:
        world_module, world_fn = _world_spec(world)
        ours.append(f"from {world_module} import {world_fn} as world")
    how = (
        [
            "re-runs the agent's own code against it: model outputs are served from the trace",
            "(or the cassette, for calls a fix changed); the tools named in live= run in the",
            "test's own world; nothing else is fired, no network is used.",
        ]
        if live_tools
        else [
            "re-runs the agent's own code against it: model and tool outputs are served from the",
            "trace, side effects are not fired again, no network is used.",
        ]
    )
    constants = [f"TRACE = {trace_rel!r}  # relative to this file"]
    if cassette_rel is not None and (forbidden or live_tools):
        constants.append(f"CASSETTE = {cassette_rel!r}  # model calls a fix changed: live once")
    return [
        f'"""Promoted from a run recorded {when} (RUN_ID and RUN_NAME below).',
        "",
        "Written by `replayable promote`. The trace file holds every recorded call; the test",
        *how,
        '"""',
        "",
        "from __future__ import annotations",
        "",
        *([*std, ""] if std else []),
        *([*third, ""] if third else []),
        *ours,
        "",
        *constants,
        f"RUN_ID = {run.id!r}",
        f"RUN_NAME = {run.name!r}",
        "",
        "",
    ]


def _forbid_body(
    steps: list[Event], forbidden: list[str], *, prefix: str, call: str, name: str
) -> list[str]:
    """The test of an incident: the steps up to the forbidden call still happen, it does not."""
    first = min((i for i, e in enumerate(steps) if e.boundary in forbidden), default=len(steps))
    recorded = [(bare_name(e.boundary), e.input) for e in steps if e.boundary in forbidden]
    return [
        "@pytest.mark.replay(TRACE, strict=False, fallback=CASSETTE)",
        f"{prefix} test_{name}_never_calls_{_ident(bare_name(forbidden[0]))}(replayable):",
        '    """The incident: on this input the agent must not call the forbidden steps."""',
        f"    {call}",
        "    replay = replayable.replay_session",
        *_led_up(steps[:first]),
        "    # ...but not the bad call. Recorded:",
        *(f"    #   {name!r}: {_short_pattern(value)}" for name, value in recorded),
        *(f"    rt.assert_not_called(replay, {bare_name(f)!r})" for f in forbidden),
    ]


def _path_body(
    steps: list[Event], *, prefix: str, call: str, name: str, imported: bool = False
) -> list[str]:
    """The test that the agent takes the recorded path: the same calls, the same arguments."""
    if imported:
        return _traced_path_body(steps, prefix=prefix, call=call, name=name)
    return [
        "@pytest.mark.replay(TRACE, strict=False)",
        f"{prefix} test_{name}(replayable):",
        '    """The agent takes the recorded path: the same calls with the same arguments."""',
        f"    {call}",
        "    replay = replayable.replay_session",
        "    rt.assert_no_divergence(replay)",
        "    # The structure, as recorded. Edit it down to what must hold (an invariant",
        '    # such as rt.assert_not_called(replay, "delete_record")) if the path may change.',
        "    rt.assert_calls(",
        "        replay,",
        "        [",
        *(f"            ({bare_name(e.boundary)!r}, {_short_pattern(e.input)})," for e in steps),
        "        ],",
        "    )",
    ]


def _traced_path_body(steps: list[Event], *, prefix: str, call: str, name: str) -> list[str]:
    """The path test of an imported run. A traced model call is named by its model and the
    code's by its SDK method, so the structure is the kinds of the calls in order, then the
    other calls (tools) by name with their arguments, as the replay matched them."""
    named = [e for e in steps if e.kind != "llm"]
    return [
        "@pytest.mark.replay(TRACE, strict=False)",
        f"{prefix} test_{name}(replayable):",
        '    """The agent takes the traced path: the same calls with the same arguments."""',
        f"    {call}",
        "    replay = replayable.replay_session",
        "    rt.assert_no_divergence(replay)",
        "    # The structure, as traced: the kinds of the calls in order, then the tools with",
        "    # their arguments. Edit it down to what must hold if the path may change.",
        f"    assert [c.kind for c in rt.calls(replay)] == {[e.kind for e in steps]!r}",
        "    rt.assert_calls(",
        "        replay,",
        "        [",
        *(f"            ({bare_name(e.boundary)!r}, {_short_pattern(e.input)})," for e in named),
        "        ],",
        "        exact=False,",
        "    )",
    ]


def render_test(
    run: Run,
    events: Sequence[Event],
    *,
    trace_rel: str,
    test_name: str,
    forbid: Iterable[str] = (),
    live: Iterable[str] = (),
    world: str | None = None,
    cassette_rel: str | None = None,
) -> str:
    """The source of a pytest module that replays ``trace_rel`` (relative to the test file).

    ``forbid`` / ``live`` choose the incident flavours (see the module doc); ``cassette_rel`` is
    their fallback cassette, ``world`` the ``module:function`` giving live tools their world.
    """
    test_name = _slug(test_name) or "run"
    root, module, fn, b = _root_and_boundary(run, events)
    ordered = sorted(events, key=lambda e: e.seq)
    imported = is_imported(run)
    skipped = ("clock", "agent", *(CODE_KINDS if imported else ()))
    steps = [e for e in ordered if e.kind not in skipped]
    recorded_names = {e.boundary for e in ordered}
    live_tools = list(dict.fromkeys(resolve_name(t, recorded_names) for t in live))
    forbidden = [
        f
        for f in dict.fromkeys(resolve_name(f, recorded_names) for f in forbid)
        if f not in live_tools
    ]
    if world is not None and not live_tools:
        raise ReplayableError("a world is for the tools that run live: pass live= as well")
    if (forbidden or live_tools) and cassette_rel is None:
        cassette_rel = f"cassettes/{test_name}.jsonl"
    prefix, call = _call_shape(fn, root, b)
    # A traced model call is named by its model, not by the code's SDK method: the incident
    # flavours of an imported run list the other calls (tools) that lead up to it.
    named = [e for e in steps if not (imported and e.kind == "llm")]
    head = _module_head(
        run,
        module,
        fn,
        trace_rel,
        cassette_rel,
        live_tools=live_tools,
        forbidden=forbidden,
        world=world,
    )
    if live_tools:
        body = _live_body(
            named, live_tools, forbidden, prefix=prefix, call=call, name=test_name, world=world
        )
    elif forbidden:
        body = _forbid_body(named, forbidden, prefix=prefix, call=call, name=test_name)
    else:
        body = _path_body(steps, prefix=prefix, call=call, name=test_name, imported=imported)
    return "\n".join([*head, *body, ""])


def promote(
    run: Run,
    events: Sequence[Event],
    *,
    trace: str | os.PathLike[str] | None = None,
    test: str | os.PathLike[str] | None = None,
    name: str | None = None,
    forbid: Iterable[str] = (),
    live: Iterable[str] = (),
    world: str | None = None,
    overwrite: bool = False,
) -> Promoted:
    """Write ``run`` as a trace file and a pytest test replaying it; returns the paths.

    Defaults: ``tests/traces/NAME.jsonl`` and ``tests/test_NAME.py``, NAME from the run's name
    and id; incident tests (``forbid``, ``live``) fall back on ``tests/cassettes/NAME.jsonl``.
    An existing test file is kept unless ``overwrite=True``.

    For example (a sketch, not run as a doctest)::

        promote(run, list(run.events()), forbid=["delete_record"])
        # -> Promoted(trace=PosixPath('tests/traces/support_agent_0190ab12.jsonl'), ...)
    """
    if world is not None:
        module, fn = _world_spec(world)
        try:
            factory = getattr(importlib.import_module(module), fn, None)
        except ImportError as exc:
            raise ReplayableError(f"cannot import the world's module {module!r}: {exc}") from None
        if not callable(factory):
            raise ReplayableError(f"world {world!r} is not a function in {module!r}")
    stem = (_slug(name) or "run") if name else default_name(run)
    trace_path = Path(trace) if trace is not None else Path("tests/traces") / f"{stem}.jsonl"
    test_path = Path(test) if test is not None else Path("tests") / f"test_{stem}.py"
    if test_path.exists() and not overwrite:
        raise ReplayableError(f"{test_path} exists; pass --force to overwrite it")
    rel = os.path.relpath(trace_path.resolve(), test_path.resolve().parent)
    cassette = test_path.parent / "cassettes" / f"{stem}.jsonl"
    cassette_rel = os.path.relpath(cassette.resolve(), test_path.resolve().parent)
    source = render_test(
        run,
        events,
        trace_rel=Path(rel).as_posix(),
        test_name=stem,
        forbid=forbid,
        live=live,
        world=world,
        cassette_rel=Path(cassette_rel).as_posix(),
    )
    write_trace(run, events, trace_path)
    test_path.parent.mkdir(parents=True, exist_ok=True)
    test_path.write_text(source, encoding="utf-8")
    return Promoted(trace_path, test_path, stem, len(events))
