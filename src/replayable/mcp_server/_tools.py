"""What each MCP tool does, as plain functions over a store: JSON-ready dicts in, out.

The read-only tools reuse the library and the viewer's plain-data views (the same run list
query as ``replayable runs``, the viewer's step tree rows and step details, ``diff_runs``,
``verify_run``). The tools that run code (``replay_run``, ``fork_run``, ``check_runs``) run the
CLI's own command (``replayable replay|fork|check --json``) in a fresh process in the server's
working directory: the agent's code is imported as it is on disk at each call (an edit is
picked up by the next replay), its prints cannot break the MCP stream, and side effects are
refused exactly as the CLI refuses them (``--allow-side-effects`` is never passed). What they
return is read back from the store: every value is the redacted stored one.
"""

from __future__ import annotations

import datetime as _dt
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from replayable._check import CheckReport, load_check
from replayable._rundiff import RunDiff, StepPair, diff_runs
from replayable.cli._render import find_event
from replayable.errors import InvalidInput, ReplayableError
from replayable.mcp_server import _inputs as check
from replayable.redact import redact
from replayable.store.base import RunQuery, Store, verify_stored
from replayable.trace import Run
from replayable.viewer._data import (
    LoadedRun,
    RunCache,
    fork_command,
    pretty,
    preview,
    root_module,
    run_overview,
    step_data,
    tree_rows,
)

__all__ = ["DEFAULT_TIMEOUT", "Tools", "run_brief"]

DEFAULT_TIMEOUT = 300.0
"""Seconds a replay, fork or check may take before it is stopped."""
MAX_CHARS = 200_000
MAX_STEPS = 2_000
LISTED = 20
"""Failed and not replayable runs listed by ``check_runs`` (every run is in the kept check)."""


def _iso(epoch: float | None) -> str | None:
    if not epoch:
        return None
    return _dt.datetime.fromtimestamp(epoch, _dt.UTC).isoformat(timespec="seconds")


def run_brief(run: Run) -> dict[str, Any]:
    """A run as the tools list it: who, when, how it ended, and what it is a replay of."""
    fork = run.metadata.get("fork")
    divergences = run.metadata.get("divergences")
    return {
        "id": run.id,
        "name": run.name,
        "status": run.status,
        "started_at": _iso(run.started_at),
        "duration_s": None if run.duration_s is None else round(run.duration_s, 6),
        "steps": run.event_count,
        "tags": run.tags,
        "error": run.error,
        "replay_of": run.parent_run or run.metadata.get("replay_of"),
        "fork_at": fork.get("step") if isinstance(fork, dict) else None,
        "divergences": len(divergences) if isinstance(divergences, list) else None,
    }


def _cut(value: Any, max_chars: int) -> tuple[Any, bool]:
    """``value`` whole when its JSON fits in ``max_chars``, else a one-line preview."""
    text = value if isinstance(value, str) else orjson.dumps(value, default=repr).decode()
    if len(text) <= max_chars:
        return value, False
    return preview(value, max_chars), True


def _pair(p: StepPair, max_chars: int) -> dict[str, Any]:
    d = p.to_dict()
    for changes in d["changes"].values():
        for c in changes:
            for side in ("a", "b"):
                c[side], cut = _cut(c[side], max_chars)
                if cut:
                    c["cut"] = True
    return d


@dataclass(slots=True)
class Tools:
    """The tools over one store. ``store_url`` is what child processes open (None: the
    default, resolved the same way in the same directory); ``cwd`` is where they run and
    import the agent's modules from."""

    store: Store
    store_url: str | None = None
    cwd: Path = field(default_factory=Path.cwd)
    timeout: float = DEFAULT_TIMEOUT
    cache: RunCache = field(init=False)

    def __post_init__(self) -> None:
        self.cache = RunCache(self.store)

    # -- read-only ---------------------------------------------------------------------------

    def list_runs(
        self,
        *,
        name: str | None = None,
        tags: Mapping[str, str] | None = None,
        status: str | None = None,
        since: str | None = None,
        boundary: str | None = None,
        errors: bool | None = None,
        limit: int = 20,
    ) -> dict[str, Any]:
        """Runs, newest first, with the filters of ``replayable runs``."""
        query = RunQuery(
            name=check.text(name, "name"),
            tags=check.tags(tags),
            status=check.status(status),
            since=check.period(since),
            boundary=check.text(boundary, "boundary"),
            has_error=True if errors else None,
            limit=check.number(limit, "limit", 1, 1000),
        )
        runs = self.store.list_runs(query)
        return {"store": self.store.url, "runs": [run_brief(r) for r in runs]}

    def _loaded(self, ref: Any, name: str = "run_id") -> LoadedRun:
        return self.cache.get(check.run_id(ref, name))

    def show_run(
        self, run_id: str, *, offset: int = 0, limit: int = 200, max_chars: int = 120
    ) -> dict[str, Any]:
        """A run and a page of its step tree, depth first, each step's input and output cut
        to ``max_chars``."""
        loaded = self._loaded(run_id)
        offset = check.number(offset, "offset", 0, 10**9)
        limit = check.number(limit, "limit", 1, MAX_STEPS)
        max_chars = check.number(max_chars, "max_chars", 10, 10_000)
        rows = []
        for r in tree_rows(loaded, offset, limit, max_chars):
            rows.append(
                {
                    "run_id": r["run_id"],
                    "seq": r["seq"],
                    "depth": r["depth"],
                    "address": r["address"],
                    "kind": r["kind"],
                    "boundary": r["boundary"],
                    "served": r["served"],
                    "duration_ms": None
                    if r["duration_ns"] is None
                    else round(r["duration_ns"] / 1e6, 3),
                    "model": r["model"],
                    "tokens": r["tokens"],
                    "error": r["error"],
                    "incomplete": r["incomplete"],
                    "preview": r["preview"],
                }
            )
        total = len(loaded.rows)
        end = offset + len(rows)
        run = loaded.run
        return {
            "run": run_brief(run),
            "environment": {
                k: run.environment.get(k) for k in ("code_version", "python", "platform")
            },
            "overview": run_overview(loaded),
            "replay_modules": [root_module(loaded)],
            "steps": rows,
            "total_steps": total,
            "next_offset": end if end < total else None,
            "whole_value": "show_step(run_id, step=SEQ) shows one step; add field='output' "
            "(or input, error, meta) to read that value whole, page by page",
        }

    def show_step(
        self,
        run_id: str,
        step: int | str,
        *,
        field: str | None = None,
        offset: int = 0,
        max_chars: int = 4000,
    ) -> dict[str, Any]:
        """One step: its facts and values cut to ``max_chars``; with ``field``, that value's
        JSON text from ``offset``, ``max_chars`` at a time (``next_offset`` until the end)."""
        loaded = self._loaded(run_id)
        max_chars = check.number(max_chars, "max_chars", 100, MAX_CHARS)
        offset = check.number(offset, "offset", 0, 10**12)
        if isinstance(step, bool) or not isinstance(step, int | str) or len(str(step)) > 500:
            raise InvalidInput(f"step={check.shown(step)}: give a seq, an address or a name")
        ev = find_event(loaded.run, loaded.events, str(step))
        which = check.field_name(field)
        if which is not None:
            text, _, size = pretty(getattr(ev, which), 10**12)
            part = text[offset : offset + max_chars]
            end = offset + len(part)
            return {
                "run_id": loaded.run.id,
                "seq": ev.seq,
                "field": which,
                "chars": len(text),
                "bytes": size,
                "offset": offset,
                "text": part,
                "next_offset": end if end < len(text) else None,
            }
        data = step_data(loaded, ev.seq, max_chars)
        assert data is not None
        for key in ("chunks", "cards", "joined"):
            data.pop(key, None)
        data["run_id"] = loaded.run.id
        data["fork_command"] = fork_command(loaded, ev.seq, self.store.url)
        return data

    def diff_runs(
        self, run_a: str, run_b: str, *, max_pairs: int = 100, max_chars: int = 500
    ) -> dict[str, Any]:
        """Two runs aligned: counts, the first divergence with its field changes, and the
        steps that differ (``max_pairs`` of them)."""
        la, lb = self._loaded(run_a, "run_a"), self._loaded(run_b, "run_b")
        max_pairs = check.number(max_pairs, "max_pairs", 1, MAX_STEPS)
        max_chars = check.number(max_chars, "max_chars", 20, MAX_CHARS)
        d: RunDiff = diff_runs(la.run, la.events, lb.run, lb.events)
        first = d.first_divergence
        differing = [p for p in d.pairs if p.diverges]
        return {
            "a": run_brief(la.run),
            "b": run_brief(lb.run),
            "identical": first is None,
            "counts": d.counts(),
            "first_divergence": None if first is None else _pair(first, max_chars),
            "differing": [_pair(p, max_chars) for p in differing[:max_pairs]],
            "more_differing": max(0, len(differing) - max_pairs),
        }

    def verify_run(self, run_id: str) -> dict[str, Any]:
        """The run's hash chain and header recomputed (and its signature, with a key); for a
        replay, the runs it serves from too."""
        run = self.store.get_run(check.run_id(run_id))
        return {"source": run_id, **verify_stored(self.store, run).to_dict()}

    # -- running code (only with --allow-replay) ---------------------------------------------

    def replay_run(
        self,
        run_id: str,
        modules: Sequence[str],
        *,
        live: Sequence[str] = (),
        match: str = "address",
        max_chars: int = 2000,
    ) -> dict[str, Any]:
        """Replay a run against the code in the working directory (fresh import)."""
        run = self._resolve(run_id)
        mods = check.module_names(modules)
        args = ["replay", *self._imports(mods)]
        for name in check.boundary_names(live, "live"):
            args += ["--live", name]
        args += ["--match", check.choice(match, "match", ("address", "key")), "--json"]
        max_chars = check.number(max_chars, "max_chars", 20, MAX_CHARS)
        out = self._cli([*args, "--", run.id], ok_codes=(0, 1))
        replay = self.store.get_run(check.run_id(out["replay"], "replay"))
        divergences = replay.metadata.get("divergences") or []
        return {
            "source": run.id,
            "replay_id": replay.id,
            "ok": not divergences and not out.get("divergences"),
            "first_divergence": _divergence(divergences[0], max_chars) if divergences else None,
            "divergences": [_divergence(d, max_chars) for d in divergences],
            "agent_raised": _scrubbed(out.get("raised")),
            "next": f"diff_runs(run_a={run.id!r}, run_b={replay.id!r}) aligns the recording and "
            "the replay step by step",
        }

    def fork_run(
        self,
        run_id: str,
        modules: Sequence[str],
        at: str,
        *,
        set_output: Any = None,
        set_error: str | None = None,
        live_from: bool = False,
        live_kinds: Sequence[str] = (),
        live: Sequence[str] = (),
        fakes: Mapping[str, str] | None = None,
        max_chars: int = 2000,
    ) -> dict[str, Any]:
        """What if step ``at`` had returned ``set_output`` (or raised ``set_error``), or had
        run live with everything after it (``live_from``)?"""
        run = self._resolve(run_id)
        mods = check.module_names(modules)
        args = ["fork", *self._imports(mods), "--at", check.boundary_name(at, "at")]
        given = [x for x in (set_output, set_error, live_from or None) if x is not None]
        if len(given) != 1:
            raise InvalidInput(
                "say what changes at the step, one of: set_output (a JSON value), set_error "
                "(TYPE[:MESSAGE], e.g. TimeoutError:model timed out) or live_from=true"
            )
        stdin = None
        if set_output is not None:
            stdin = orjson.dumps(set_output)
            if len(stdin) > MAX_CHARS:
                raise InvalidInput(f"set_output: at most {MAX_CHARS} bytes of JSON")
            args += ["--set-output-file", "-"]
        if set_error is not None:
            args += ["--set-error", check.exception_spec(set_error)]
        if live_from:
            args.append("--live-from")
        for kind in check.kind_names(live_kinds):
            args += ["--live-kind", kind]
        for name in check.boundary_names(live, "live"):
            args += ["--live", name]
        for spec in check.fake_specs(fakes):
            args += ["--fake", spec]
        max_chars = check.number(max_chars, "max_chars", 20, MAX_CHARS)
        out = self._cli([*args, "--json", "--", run.id], ok_codes=(0, 1), stdin=stdin)
        fork = self.store.get_run(check.run_id(out["fork"], "fork"))
        meta = fork.metadata.get("fork")
        divergences = fork.metadata.get("divergences") or []
        return {
            "source": run.id,
            "fork_id": fork.id,
            "at": meta.get("step") if isinstance(meta, dict) else at,
            "changes": [
                {k: _cut(v, max_chars)[0] for k, v in c.items()}
                for c in (meta.get("changes") or [] if isinstance(meta, dict) else [])
                if isinstance(c, dict)
            ],
            "divergences": [_divergence(d, max_chars) for d in divergences],
            "stopped": _scrubbed(out.get("stopped")),
            "next": f"diff_runs(run_a={run.id!r}, run_b={fork.id!r}) compares the fork with "
            "the recording",
        }

    def check_runs(
        self,
        modules: Sequence[str],
        *,
        since: str | None = None,
        name: str | None = None,
        tags: Mapping[str, str] | None = None,
        status: str | None = None,
        limit: int | None = None,
        sample: int | None = None,
        seed: int | None = None,
        live: Sequence[str] = (),
    ) -> dict[str, Any]:
        """Replay many recorded runs against the code; sort and group them."""
        mods = check.module_names(modules)
        args = ["check", *self._imports(mods)]
        if check.period(since) is not None:
            args += ["--since", str(since)]
        if (text := check.text(name, "name")) is not None:
            args += ["--name", text]
        for k, v in (check.tags(tags) or {}).items():
            args += ["--tag", f"{k}={v}"]
        if (st := check.status(status)) is not None:
            args += ["--status", st]
        for label, value, high in (("limit", limit, 100_000), ("sample", sample, 100_000)):
            if value is not None:
                args += [f"--{label}", str(check.number(value, label, 1, high))]
        if seed is not None:
            args += ["--seed", str(check.number(seed, "seed", 0, 2**31))]
        for boundary in check.boundary_names(live, "live"):
            args += ["--live", boundary]
        out = self._cli([*args, "--json"], ok_codes=(0, 1))
        report: CheckReport = load_check(check.run_id(out["id"], "check"), self.store)
        return {
            "id": report.id,
            "ok": report.ok,
            "counts": report.counts,
            "groups": [g.to_dict() for g in report.groups],
            "failed": [o.to_dict() for o in report.runs("failed")[:LISTED]],
            "not_replayable": [o.to_dict() for o in report.runs("not_replayable")[:LISTED]],
            "next": "each group's examples pair a run with its kept replay: diff_runs them",
        }

    # -- plumbing ----------------------------------------------------------------------------

    def _resolve(self, ref: str) -> Run:
        run = self.store.get_run(check.run_id(ref))
        if (self.cwd / run.id).exists():  # the CLI would read a file of that name instead
            raise InvalidInput(
                f"a file named {run.id!r} is in the server's working directory: the CLI would "
                "read it instead of the run; move it away"
            )
        return run

    def _imports(self, modules: Sequence[str]) -> list[str]:
        return [part for m in modules for part in ("--import", m)]

    def _cli(
        self, args: list[str], *, ok_codes: tuple[int, ...], stdin: bytes | None = None
    ) -> dict[str, Any]:
        """Run ``replayable ARGS`` in a fresh process in the working directory; its last line
        of output is the JSON result. A refusal (exit 2) is a tool error with its message."""
        env = dict(os.environ)
        if self.store_url is not None:
            env["REPLAYABLE_STORE"] = self.store_url
        env["NO_COLOR"] = "1"
        try:
            done = subprocess.run(
                [sys.executable, "-m", "replayable.cli", *args],
                cwd=self.cwd,
                env=env,
                input=stdin if stdin is not None else b"",
                capture_output=True,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ReplayableError(
                f"`replayable {args[0]}` did not finish in {self.timeout:.0f} s and was stopped "
                "(start the server with a larger --timeout, or pick fewer runs)"
            ) from None
        stderr = done.stderr.decode("utf-8", "replace")
        if done.returncode not in ok_codes:
            lines = [ln for ln in stderr.splitlines() if ln.strip()]
            message = next((ln[7:] for ln in lines if ln.startswith("error: ")), None)
            if message is None:
                tail = "\n".join(lines[-5:])[-2000:]
                message = f"`replayable {args[0]}` failed (exit {done.returncode}): {tail}"
            raise ReplayableError(str(_scrubbed(message)))
        for line in reversed(done.stdout.splitlines()):
            if line.strip().startswith(b"{"):
                try:
                    result: dict[str, Any] = orjson.loads(line)
                    return result
                except orjson.JSONDecodeError:
                    break
        raise ReplayableError(
            f"`replayable {args[0]}` printed no result (exit {done.returncode}); its last "
            f"words: {_scrubbed(stderr[-1000:])!s}"
        )


def _divergence(d: Any, max_chars: int) -> Any:
    """A stored divergence with its recorded and actual values cut to ``max_chars``."""
    if not isinstance(d, dict):
        return d
    out = dict(d)
    changes = []
    for given in d.get("changes") or ():
        c = dict(given) if isinstance(given, dict) else given
        if isinstance(c, dict):
            for side in ("recorded", "actual"):
                if side in c:
                    c[side], cut = _cut(c[side], max_chars)
                    if cut:
                        c["cut"] = True
        changes.append(c)
    out["changes"] = changes
    return out


def _scrubbed(value: Any) -> Any:
    """Text a child process printed (not read back from the store): redacted like a stored
    value before it leaves."""
    return None if value is None else redact(value)
