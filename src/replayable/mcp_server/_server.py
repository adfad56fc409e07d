"""The MCP server: the tools, resources and prompt of ``replayable mcp`` on the official SDK.

Every answer is JSON text made inert (:func:`replayable._inert.inert_json`): it decodes to the
stored values exactly, and carries no raw control character, bidi override, ``<`` or ``&`` for
a terminal or a renderer to act on. A bad argument is a tool error saying what is wrong, never a
traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ResourceError, ToolError
from mcp.types import ToolAnnotations
from starlette.types import ASGIApp

from replayable._asgi_guard import Guard
from replayable._inert import inert_json
from replayable._version import __version__
from replayable.cli._common import LOCAL_HOSTS
from replayable.errors import InvalidInput, ReplayableError
from replayable.mcp_server._tools import DEFAULT_TIMEOUT, Tools
from replayable.store.base import Store

__all__ = ["INSTRUCTIONS", "create_http_app", "create_server", "investigation"]

INSTRUCTIONS = """\
replayable records LLM-agent runs at their boundaries (model calls, tools, retrieval) and \
replays them offline against the code as it is now. Find a run with list_runs (status='error' \
for failures), read it with show_run and show_step, compare two runs with diff_runs, check one \
was not edited with verify_run. When the server allows replays: after fixing the code, \
replay_run(run_id, modules=[...]) runs the fixed code against the recording (model and tool \
outputs served, side effects never re-fired) and returns the first divergence; fork_run asks \
'what if this step had returned X'; check_runs replays many runs and groups what changed."""

READ_ONLY = ToolAnnotations(read_only_hint=True, idempotent_hint=True, open_world_hint=False)
RUNS_CODE = ToolAnnotations(read_only_hint=False, destructive_hint=False, open_world_hint=False)


def _answer(fn: Callable[[], Any]) -> str:
    """Run a tool's body: its result as inert JSON, our errors and bad input as a tool error
    with their message, anything else as a tool error naming the exception (no traceback)."""
    try:
        return inert_json(fn(), indent=True)
    except (ReplayableError, ValueError) as exc:
        raise ToolError(inert_json(str(exc))[1:-1]) from None
    except Exception as exc:
        raise ToolError(inert_json(f"{type(exc).__name__}: {exc}")[1:-1]) from None


def create_server(
    store: Store,
    *,
    allow_replay: bool = False,
    store_url: str | None = None,
    cwd: str | Path | None = None,
    timeout: float = DEFAULT_TIMEOUT,
) -> MCPServer[Any]:
    """The MCP server over ``store``: read-only tools, resources for a run and a step, and the
    "investigate this incident" prompt; with ``allow_replay``, the tools that run the agent's
    code (``replay_run``, ``fork_run``, ``check_runs``) in a fresh process in ``cwd``, which
    open the store at ``store_url`` (default: the same default store)."""
    tools = Tools(store, store_url, Path(cwd) if cwd is not None else Path.cwd(), timeout)
    server: MCPServer[Any] = MCPServer(
        "replayable",
        title="replayable: recorded agent runs",
        instructions=INSTRUCTIONS,
        version=__version__,
        log_level="WARNING",
    )
    tool = _tool_adder(server)
    _add_read_tools(tool, tools)
    if allow_replay:
        _add_code_tools(tool, tools)
    _add_resources(server, tools, allow_replay)
    return server


_AddTool = Callable[[ToolAnnotations], Callable[[Callable[..., str]], Callable[..., str]]]


def _tool_adder(server: MCPServer[Any]) -> _AddTool:
    """A decorator adding a function to ``server`` as a tool with these annotations."""

    def tool(annotations: ToolAnnotations) -> Callable[[Callable[..., str]], Callable[..., str]]:
        def register(fn: Callable[..., str]) -> Callable[..., str]:
            server.add_tool(fn, annotations=annotations, structured_output=False)
            return fn

        return register

    return tool


def _add_read_tools(tool: _AddTool, tools: Tools) -> None:
    """The read-only tools: list, show, diff and verify runs."""

    @tool(READ_ONLY)
    def list_runs(
        status: str | None = None,
        since: str | None = None,
        name: str | None = None,
        tags: dict[str, str] | None = None,
        boundary: str | None = None,
        errors: bool = False,
        limit: int = 20,
    ) -> str:
        """Recorded runs, newest first: id, name, status, start, duration, steps, tags, error,
        and what a replay is a replay of. Filters as `replayable runs`: status (ok, error,
        diverged, running, incomplete), since (1h, 30m, 2d or an ISO date), name, tags
        ({"key": "value"}), boundary (runs that called it), errors (only runs with an error),
        limit (1-1000)."""
        return _answer(
            lambda: tools.list_runs(
                name=name,
                tags=tags,
                status=status,
                since=since,
                boundary=boundary,
                errors=errors,
                limit=limit,
            )
        )

    @tool(READ_ONLY)
    def show_run(run_id: str, offset: int = 0, limit: int = 200, max_chars: int = 120) -> str:
        """One run (id or unique prefix) as a tree of steps, depth first: each step's seq,
        address, kind, boundary, duration, model, tokens, error, and a preview of its input and
        output cut to max_chars. Pages with offset/limit (next_offset). replay_modules names
        the module to import to replay it. show_step reads one step, or one value whole."""
        return _answer(
            lambda: tools.show_run(run_id, offset=offset, limit=limit, max_chars=max_chars)
        )

    @tool(READ_ONLY)
    def show_step(
        run_id: str,
        step: int | str,
        field: str | None = None,
        offset: int = 0,
        max_chars: int = 4000,
    ) -> str:
        """One step of a run: step is its seq, its address or a boundary name called once.
        Without field: its facts, and input, output, error and meta as indented JSON cut to
        max_chars (truncated, size). With field (input, output, error or meta): that value's
        JSON text whole, max_chars at a time from offset; call again with next_offset until
        it is null."""
        return _answer(
            lambda: tools.show_step(run_id, step, field=field, offset=offset, max_chars=max_chars)
        )

    @tool(READ_ONLY)
    def diff_runs(run_a: str, run_b: str, max_pairs: int = 100, max_chars: int = 500) -> str:
        """Align two runs step by step (a recording and its replay, or two runs of one agent):
        counts of same/changed/only-in-A/only-in-B steps, the first divergence with the
        field-level changes of its input, output and error, and every step that differs."""
        return _answer(
            lambda: tools.diff_runs(run_a, run_b, max_pairs=max_pairs, max_chars=max_chars)
        )

    @tool(READ_ONLY)
    def verify_run(run_id: str) -> str:
        """Recompute a run's hash chain and header hash (and its signature when the server
        has $REPLAYABLE_SIGNING_KEY): ok, or the first event that does not check out."""
        return _answer(lambda: tools.verify_run(run_id))


def _add_code_tools(tool: _AddTool, tools: Tools) -> None:
    """The tools that run the agent's code (``allow_replay``): replay, fork, check."""

    @tool(RUNS_CODE)
    def replay_run(
        run_id: str,
        modules: list[str],
        live: list[str] | None = None,
        match: str = "address",
        max_chars: int = 2000,
    ) -> str:
        """Replay a recorded run against the code in the server's working directory, as
        it is on disk now (imported fresh in a new process): the root agent is called with
        its recorded arguments; model and tool outputs are served from the recording, side
        effects are never re-fired. modules: the module(s) defining the agent's
        boundaries (show_run's replay_modules). live: boundaries to run live instead
        (name or name#N; side-effecting ones are refused). Returns the replay's run id and
        its divergences, the first one first (empty: the code took the recorded path)."""
        return _answer(
            lambda: tools.replay_run(
                run_id, modules, live=live or (), match=match, max_chars=max_chars
            )
        )

    @tool(RUNS_CODE)
    def fork_run(
        run_id: str,
        modules: list[str],
        at: str,
        set_output: Any = None,
        set_error: str | None = None,
        live_from: bool = False,
        live_kinds: list[str] | None = None,
        live: list[str] | None = None,
        fakes: dict[str, str] | None = None,
        max_chars: int = 2000,
    ) -> str:
        """What if step `at` (name#N, the N-th recorded call of boundary name) had
        returned set_output (any JSON value), raised set_error (TYPE[:MESSAGE]), or run
        live with every later call (live_from=true)? Calls before it are served; a side
        effect that no longer matches the recording is refused unless faked (fakes:
        {"name": "module:function"}). Returns the fork's run id, what changed after the
        fork point, and what stopped it."""
        return _answer(
            lambda: tools.fork_run(
                run_id,
                modules,
                at,
                set_output=set_output,
                set_error=set_error,
                live_from=live_from,
                live_kinds=live_kinds or (),
                live=live or (),
                fakes=fakes,
                max_chars=max_chars,
            )
        )

    @tool(RUNS_CODE)
    def check_runs(
        modules: list[str],
        since: str | None = None,
        name: str | None = None,
        tags: dict[str, str] | None = None,
        status: str | None = None,
        limit: int | None = None,
        sample: int | None = None,
        seed: int | None = None,
        live: list[str] | None = None,
    ) -> str:
        """Replay many recorded runs (picked by since, name, tags, status, limit, sample)
        against the code as it is now and sort them: unchanged, diverged (grouped by first
        divergence, largest group first, with example run/replay pairs), failed, not
        replayable. The check is kept in the store."""
        return _answer(
            lambda: tools.check_runs(
                modules,
                since=since,
                name=name,
                tags=tags,
                status=status,
                limit=limit,
                sample=sample,
                seed=seed,
                live=live or (),
            )
        )


def _add_resources(server: MCPServer[Any], tools: Tools, allow_replay: bool) -> None:
    """The run and step resources, and the "investigate this incident" prompt."""

    def resource_answer(fn: Callable[[], Any]) -> str:
        try:
            return _answer(fn)
        except ToolError as exc:
            raise ResourceError(str(exc)) from None

    @server.resource(
        "replayable://runs",
        name="runs",
        description="The 50 newest recorded runs.",
        mime_type="application/json",
    )
    def runs_resource() -> str:
        return resource_answer(lambda: tools.list_runs(limit=50))

    @server.resource(
        "replayable://runs/{run_id}",
        name="run",
        description="One run and its step tree (values cut; the step resource has them).",
        mime_type="application/json",
    )
    def run_resource(run_id: str) -> str:
        return resource_answer(lambda: tools.show_run(run_id, limit=2000))

    @server.resource(
        "replayable://runs/{run_id}/steps/{seq}",
        name="step",
        description="One step of a run: input, output, error and metadata (cut at 1 MB each).",
        mime_type="application/json",
    )
    def step_resource(run_id: str, seq: str) -> str:
        return resource_answer(lambda: tools.show_step(run_id, seq, max_chars=200_000))

    @server.prompt(
        name="investigate_incident",
        title="Investigate this incident",
        description="Walk the loop: find the failing run, read it, fix the code, replay the fix "
        "against the recording, and report the first divergence.",
    )
    def investigate_incident(run_id: str = "") -> str:
        return investigation(run_id, allow_replay=allow_replay)


def investigation(run_id: str, *, allow_replay: bool) -> str:
    """The "investigate this incident" prompt's text."""
    if run_id:
        shown = inert_json(run_id)
        find = f"1. The incident is run {shown}. Call show_run(run_id={shown})."
    else:
        find = (
            "1. Find the incident: list_runs(status='error', since='7d') (or filter by name or "
            "tags; status='diverged' finds replays that took another path). Pick the run the "
            "user means, then call show_run on it."
        )
    steps = [
        find,
        "2. Read the step tree: which boundary raised (error), and which earlier step set it "
        "up (a model's choice, a tool's result). show_step(run_id, step=SEQ) shows one step; "
        "with field='output' (or input) it reads a value whole, page by page.",
        "3. Check the recording was not edited: verify_run(run_id).",
        "4. Find the agent's code for that step in this repository and explain the cause.",
    ]
    if allow_replay:
        steps += [
            "5. Fix the code on disk. Then replay_run(run_id, modules=<show_run's "
            "replay_modules>): the fixed code runs against the recording, model and tool outputs "
            "are served, side effects are never re-fired.",
            "6. Read first_divergence: where the fixed code now takes another path than the "
            "incident (e.g. a side effect that is no longer called shows as 'skipped'). "
            "diff_runs(run_a=run_id, run_b=replay_id) shows every step side by side.",
            "7. Optionally fork_run(run_id, modules, at='name#N', set_output=...) to ask 'what "
            "if this step had returned X', and check_runs(modules, since='7d') to see the fix "
            "against every recent run.",
            "8. Report: the cause, the fix, and the first divergence the replay showed (its "
            "boundary, address and reason), with the replay's run id.",
        ]
    else:
        steps.append(
            "5. Propose the fix. (This server is read-only: to replay the fix against the "
            "recording, restart it with --allow-replay, or run `replayable replay RUN --import "
            "MODULE`.) Report the cause and the step where it happened."
        )
    return "Investigate a recorded incident with the replayable tools.\n\n" + "\n".join(steps)


def create_http_app(server: MCPServer[Any], *, host: str, token: str | None) -> ASGIApp:
    """The server over streamable HTTP (at ``/mcp``) as an ASGI app for ``host``: bound to
    this machine it answers local Host headers only; any other bind needs ``token``, which
    every request must then carry as ``Authorization: Bearer TOKEN``."""
    if host not in LOCAL_HOSTS and not token:
        raise InvalidInput(
            f"binding to {host} exposes your traces to the network: pass a token "
            "(replayable mcp --auth-token, or $REPLAYABLE_MCP_TOKEN), or bind 127.0.0.1"
        )
    app = server.streamable_http_app(host=host)
    return Guard(app, token, local_only=host in LOCAL_HOSTS, url_token=False)
