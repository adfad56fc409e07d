"""The viewer's Starlette app: server-rendered pages, a JSON API under ``/api/``, local assets.

Security: every value from a trace goes through Jinja2 autoescaping (never ``|safe``); scripts
come only from ``/static/`` (the Content-Security-Policy forbids inline script); a token, when
set, is checked on every request; bound locally, requests naming another host are refused (so a
web page cannot reach the viewer by DNS rebinding).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import orjson
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.staticfiles import StaticFiles
from starlette.templating import Jinja2Templates

from replayable import _sampling as sampling
from replayable._asgi_guard import Guard
from replayable._check import CheckReport, list_checks, load_check
from replayable._rundiff import diff_runs
from replayable.errors import ReplayableError, RunNotFound
from replayable.store.base import RUN_STATUSES, RunQuery, RunStatus, Store, parse_since
from replayable.viewer._data import (
    MAX_INLINE_BYTES,
    RunCache,
    fork_changes,
    fork_command,
    root_module,
    run_overview,
    run_summary,
    step_data,
    tree_rows,
)
from replayable.viewer._html import template_env

__all__ = ["create_app"]

HERE = Path(__file__).parent
PAGE_SIZE = 500
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'; "
    "form-action 'self'"
)
API_DOCS = [
    (
        "GET",
        "/api/runs",
        "Runs, newest first. Query: q (search id/name/tags), name, status, "
        "tag=k=v (repeatable), since (1h, 2d or ISO date), boundary, errors=1, limit.",
    ),
    (
        "GET",
        "/api/runs/{run}",
        "One run (id or unique prefix): its fields, totals (steps by "
        "kind, errors, tokens by model), its replays and the replay command.",
    ),
    (
        "GET",
        "/api/runs/{run}/steps",
        "A page of the step tree, depth first. Query: offset, "
        "limit (max 2000). Each row has seq, depth, kind, name, preview, error and its timeline "
        "bar (left and width in percent of the run).",
    ),
    (
        "GET",
        "/api/runs/{run}/steps/{seq}",
        "One step in full: input, output, error, meta as "
        "indented JSON text (values over 1 MB cut, with truncated=true), model, sampling, tokens, "
        "retrieval cards and stream chunks.",
    ),
    (
        "GET",
        "/api/runs/{run}/steps/{seq}/{field}",
        "The full value of input, output, error or meta, as JSON, never cut.",
    ),
    (
        "GET",
        "/api/checks",
        "Kept checks (replayable check), newest first: counts, passed, groups. Query: limit.",
    ),
    (
        "GET",
        "/api/checks/{check}",
        "One check (id or unique prefix): selection, counts, groups of diverged runs with "
        "examples (run_id, replay_id), and every run's outcome.",
    ),
    (
        "GET",
        "/api/diff?a={run}&b={run}",
        "Two runs aligned step by step: counts, the index of "
        "the first divergence and every pair with its field-level changes.",
    ),
]


def _templates() -> Jinja2Templates:
    return Jinja2Templates(env=template_env())


def _json(data: Any, status_code: int = 200) -> Response:
    return Response(orjson.dumps(data), status_code=status_code, media_type="application/json")


def _since(text: str | None) -> float | None:
    if not text:
        return None
    try:
        return parse_since(text)
    except ValueError as exc:
        raise HTTPException(400, f"since={exc}")


def _status(text: str | None) -> RunStatus | None:
    if not text:
        return None
    for status in RUN_STATUSES:
        if text == status:
            return status
    raise HTTPException(400, f"status={text!r}: use one of {', '.join(RUN_STATUSES)}")


def _int(request: Request, name: str, default: int, top: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        return max(0, min(int(raw), top))
    except ValueError:
        raise HTTPException(400, f"{name}={raw!r}: expected a number")


def check_summary(report: CheckReport) -> dict[str, Any]:
    """A kept check as the pages and ``/api/checks`` show it (without per-run outcomes)."""
    d = report.to_dict()
    d.pop("runs")
    d["total"] = sum(report.counts.values())
    return d


class _Pages:
    """The viewer's pages, API and error handlers over one store (what :func:`create_app` routes
    to)."""

    def __init__(self, store: Store, cache: RunCache, max_inline_bytes: int) -> None:
        self.store = store
        self.cache = cache
        self.max_inline_bytes = max_inline_bytes
        self.templates = _templates()

    def page(self, request: Request, name: str, status_code: int = 200, **context: Any) -> Response:
        context.setdefault("title", "replayable")
        return self.templates.TemplateResponse(request, name, context, status_code=status_code)

    def list_runs(self, request: Request) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        p = request.query_params
        tags: dict[str, str] = {}
        for tag in p.getlist("tag"):
            if tag:
                k, _, v = tag.partition("=")
                tags[k] = v
        limit = _int(request, "limit", 100, 1000)
        q = (p.get("q") or "").strip().lower()
        query = RunQuery(
            name=p.get("name") or None,
            tags=tags or None,
            status=_status(p.get("status")),
            since=_since(p.get("since")),
            boundary=p.get("boundary") or None,
            has_error=True if p.get("errors") in ("1", "true", "on") else None,
            limit=max(limit, 1000) if q else limit,
        )
        runs = self.store.list_runs(query)
        if q:
            runs = [
                r
                for r in runs
                if q in r.id.lower()
                or q in (r.name or "").lower()
                or any(q in f"{k}={v}".lower() for k, v in r.tags.items())
            ][:limit]
        filters = {
            "q": p.get("q") or "",
            "name": p.get("name") or "",
            "status": p.get("status") or "",
            "tag": p.get("tag") or "",
            "since": p.get("since") or "",
            "boundary": p.get("boundary") or "",
            "errors": bool(query.has_error),
        }
        return [run_summary(r) for r in runs], filters

    def run_info(self, run_id: str) -> dict[str, Any]:
        loaded = self.cache.get(run_id)
        run = loaded.run
        replays = [
            run_summary(r)
            for r in self.store.list_runs(RunQuery(limit=500))
            if r.parent_run == run.id or r.metadata.get("replay_of") == run.id
        ]
        module = root_module(loaded)
        return {
            "run": run_summary(run),
            "environment": run.environment,
            "overview": run_overview(loaded),
            "replays": replays,
            "replay_command": (
                f"replayable replay {run.id} --import {module} --store {self.store.url}"
            ),
            "fork_changes": fork_changes(loaded),
        }

    async def index(self, request: Request) -> Response:
        runs, filters = self.list_runs(request)
        return self.page(
            request,
            "runs.html",
            title="runs",
            runs=runs,
            filters=filters,
            store_url=self.store.url,
            sampling=sampling.describe(sampling.summary(self.store)),
        )

    async def run_page(self, request: Request) -> Response:
        info = self.run_info(request.path_params["run_id"])
        loaded = self.cache.get(info["run"]["id"])
        rows = tree_rows(loaded, 0, PAGE_SIZE)
        return self.page(
            request,
            "run.html",
            title=f"run {info['run']['id']}",
            rows=rows,
            total=len(loaded.rows),
            page_size=PAGE_SIZE,
            **info,
        )

    async def step_page(self, request: Request) -> Response:
        loaded = self.cache.get(request.path_params["run_id"])
        step = step_data(loaded, int(request.path_params["seq"]), self.max_inline_bytes)
        if step is None:
            raise HTTPException(404, "no such step in this run")
        partial = request.query_params.get("partial") == "1"
        return self.page(
            request,
            "_step.html" if partial else "step.html",
            title=f"{step['name']} · run {loaded.run.id}",
            run=run_summary(loaded.run),
            step=step,
            fork_command=fork_command(loaded, step["seq"], self.store.url),
        )

    async def diff_page(self, request: Request) -> Response:
        a, b = request.query_params.get("a"), request.query_params.get("b")
        if not a or not b:
            runs, _ = self.list_runs(request)
            return self.page(request, "diff_pick.html", title="diff two runs", runs=runs)
        la, lb = self.cache.get(a), self.cache.get(b)
        d = diff_runs(la.run, la.events, lb.run, lb.events)
        first = d.first_divergence
        return self.page(
            request,
            "diff.html",
            title=f"diff {la.run.id} · {lb.run.id}",
            a=run_summary(la.run),
            b=run_summary(lb.run),
            pairs=d.pairs[:5000],
            total=len(d.pairs),
            first=first,
            counts=d.counts(),
        )

    async def checks_page(self, request: Request) -> Response:
        checks = list_checks(self.store, _int(request, "limit", 100, 1000))
        return self.page(
            request,
            "checks.html",
            title="checks",
            checks=[check_summary(c) for c in checks],
            store_url=self.store.url,
        )

    async def check_page(self, request: Request) -> Response:
        report = load_check(request.path_params["check_id"], self.store)
        runs: dict[str, list[dict[str, Any]]] = {"failed": [], "not_replayable": []}
        for o in report.outcomes:
            if o.outcome in runs:
                runs[o.outcome].append(o.to_dict())
        summary = check_summary(report)
        return self.page(
            request,
            "check.html",
            title=f"check {report.id}",
            check=summary,
            total=summary["total"],
            runs=runs,
        )

    async def api_checks(self, request: Request) -> Response:
        checks = list_checks(self.store, _int(request, "limit", 100, 1000))
        return _json({"checks": [check_summary(c) for c in checks]})

    async def api_check(self, request: Request) -> Response:
        return _json(load_check(request.path_params["check_id"], self.store).to_dict())

    async def api_runs(self, request: Request) -> Response:
        runs, _ = self.list_runs(request)
        return _json({"runs": runs})

    async def api_run(self, request: Request) -> Response:
        return _json(self.run_info(request.path_params["run_id"]))

    async def api_steps(self, request: Request) -> Response:
        loaded = self.cache.get(request.path_params["run_id"])
        offset = _int(request, "offset", 0, 10**9)
        limit = _int(request, "limit", PAGE_SIZE, 2000)
        return _json(
            {
                "run": loaded.run.id,
                "total": len(loaded.rows),
                "offset": offset,
                "rows": tree_rows(loaded, offset, limit),
            }
        )

    async def api_step(self, request: Request) -> Response:
        loaded = self.cache.get(request.path_params["run_id"])
        step = step_data(loaded, int(request.path_params["seq"]), self.max_inline_bytes)
        if step is None:
            raise HTTPException(404, "no such step in this run")
        return _json({**step, "fork_command": fork_command(loaded, step["seq"], self.store.url)})

    async def api_field(self, request: Request) -> Response:
        loaded = self.cache.get(request.path_params["run_id"])
        ev = loaded.by_seq.get(int(request.path_params["seq"]))
        field = request.path_params["field"].removesuffix(".json")
        if ev is None or field not in ("input", "output", "error", "meta"):
            raise HTTPException(404, "no such step or field (input, output, error, meta)")
        return _json(getattr(ev, field))

    async def api_diff(self, request: Request) -> Response:
        a, b = request.query_params.get("a"), request.query_params.get("b")
        if not a or not b:
            raise HTTPException(400, "pass two runs: /api/diff?a=RUN&b=RUN")
        la, lb = self.cache.get(a), self.cache.get(b)
        return _json(diff_runs(la.run, la.events, lb.run, lb.events).to_dict())

    async def api_docs(self, request: Request) -> Response:
        if "application/json" in request.headers.get("accept", ""):
            return _json([{"method": m, "path": p, "doc": d} for m, p, d in API_DOCS])
        return self.page(request, "api_docs.html", title="API", endpoints=API_DOCS)

    def wants_json(self, request: Request) -> bool:
        return request.url.path.startswith("/api/")

    async def not_found(self, request: Request, exc: Exception) -> Response:
        message = str(exc).splitlines()[0]
        if self.wants_json(request):
            return _json({"error": message}, 404)
        return self.page(request, "error.html", status_code=404, title="not found", message=message)

    async def bad_request(self, request: Request, exc: Exception) -> Response:
        message = str(exc).splitlines()[0]
        if self.wants_json(request):
            return _json({"error": message}, 400)
        return self.page(request, "error.html", status_code=400, title="error", message=message)

    async def http_error(self, request: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        if self.wants_json(request):
            return _json({"error": exc.detail}, exc.status_code)
        return self.page(
            request, "error.html", status_code=exc.status_code, title="error", message=exc.detail
        )


def create_app(
    store: Store,
    *,
    token: str | None = None,
    local_only: bool = True,
    max_inline_bytes: int = MAX_INLINE_BYTES,
    linked: Sequence[Store] = (),
    reveal: bool = False,
) -> Starlette:
    """The viewer as an ASGI app over ``store``.

    ``linked``: further stores (other services') searched for the runs recorded for a
    run's remote steps, nested under them; ``store`` is always searched.
    ``token``: required on every request (``Authorization: Bearer``, a cookie set by visiting
    ``/?token=...``). ``local_only``: refuse requests whose Host is not 127.0.0.1/localhost.
    ``reveal``: a run's pages show the real values behind personal-data pseudonyms, from its
    vault, with the key in the environment (a wrong key is a 400 naming both key ids).

    For example (a sketch, not run as a doctest)::

        import uvicorn
        uvicorn.run(create_app(open_store("traces.db")), host="127.0.0.1", port=8765)
    """
    pages = _Pages(store, RunCache(store, linked=linked, reveal=reveal), max_inline_bytes)
    routes = [
        Route("/", pages.index),
        Route("/runs/{run_id}", pages.run_page),
        Route("/runs/{run_id}/steps/{seq:int}", pages.step_page),
        Route("/diff", pages.diff_page),
        Route("/checks", pages.checks_page),
        Route("/checks/{check_id}", pages.check_page),
        Route("/api/docs", pages.api_docs),
        Route("/api/runs", pages.api_runs),
        Route("/api/runs/{run_id}", pages.api_run),
        Route("/api/runs/{run_id}/steps", pages.api_steps),
        Route("/api/runs/{run_id}/steps/{seq:int}", pages.api_step),
        Route("/api/runs/{run_id}/steps/{seq:int}/{field}", pages.api_field),
        Route("/api/diff", pages.api_diff),
        Route("/api/checks", pages.api_checks),
        Route("/api/checks/{check_id}", pages.api_check),
        Mount("/static", StaticFiles(directory=HERE / "static"), name="static"),
    ]
    app = Starlette(
        routes=routes,
        exception_handlers={
            RunNotFound: pages.not_found,
            ReplayableError: pages.bad_request,
            HTTPException: pages.http_error,
        },
    )
    security = [
        (b"content-security-policy", CSP.encode()),
        (b"x-content-type-options", b"nosniff"),
        (b"referrer-policy", b"no-referrer"),
        (b"x-frame-options", b"DENY"),
    ]
    app.add_middleware(Guard, token=token, local_only=local_only, headers=security)
    return app
