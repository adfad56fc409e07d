"""``replayable collect``: an OTLP/HTTP trace receiver that keeps each trace as a run.

Spans are held per trace until the trace ends: when its root span (no parent) has arrived and
``settle`` seconds passed with nothing more for it (spans a slower service exports late), or
after ``idle`` seconds without a span for a trace whose root never arrives. Then the trace is
mapped, redacted, pseudonymized (with ``pii``), chained and written in one transaction; a run
already in the store (another collector wrote it, or the same trace was sent twice) is
skipped, so several collectors can write one PostgreSQL store.

A request is checked whole before any of its spans is held: a body that is not OTLP, a span
cycle, or more spans than the bounds allow gets a 4xx and changes nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import orjson
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from replayable._asgi_guard import Guard
from replayable._otlp._decode import MAX_BODY, MAX_SPANS, Span, decode_request
from replayable._otlp._run import build_run, by_trace, check_spans
from replayable.errors import InvalidOtlp, ReplayableError
from replayable.store.base import Store, event_to_row
from replayable.trace import Run

if TYPE_CHECKING:
    from replayable._pii import Pseudonymizer

__all__ = ["TRACE_PATHS", "Collector", "Kept", "create_collector_app"]

TRACE_PATHS = ("/v1/traces", "/api/public/otel/v1/traces")
"""Where exporters POST traces: the OTLP/HTTP default, and the path Langfuse's SDK uses."""

log = logging.getLogger("replayable")

MAX_PENDING_SPANS = MAX_SPANS * 4
"""Spans held across all unfinished traces; past it, requests get 503 until traces end."""


@dataclass(slots=True)
class Kept:
    """What became of one finished trace: its run (None when it could not be kept), whether it
    was written (False: already in the store), why it ended, and the problem if any."""

    trace_id: str
    run: Run | None
    steps: int
    written: bool
    ended: str
    problem: str | None = None


@dataclass(slots=True)
class _Pending:
    spans: list[Span] = field(default_factory=list)
    last: float = 0.0
    root_at: float | None = None


class Collector:
    """Holds spans per trace and keeps each finished trace as a run in ``store``.

    Thread-safe: :meth:`add` is called per request, :meth:`sweep` by a timer.
    """

    def __init__(
        self,
        store: Store,
        *,
        idle: float = 30.0,
        settle: float = 0.5,
        on_kept: Callable[[Kept], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        pii: Pseudonymizer | None = None,
    ) -> None:
        self.store = store
        self.pii = pii
        """Personal data pseudonymized in each trace before it is written (``record(pii=)``)."""
        self.idle = idle
        self.settle = settle
        self.on_kept = on_kept
        self.clock = clock
        self._pending: dict[str, _Pending] = {}
        self._held = 0
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()

    def add(self, spans: list[Span]) -> None:
        """Hold ``spans``; :class:`InvalidOtlp` (holding none of them) when a trace they
        belong to would then have a cycle or too many spans, or the collector is full."""
        now = self.clock()
        with self._lock:
            if self._held + len(spans) > MAX_PENDING_SPANS:
                raise InvalidOtlp(
                    f"the collector holds {self._held} spans of unfinished traces; retry later",
                    status=503,
                )
            grouped = by_trace(spans)
            for trace_id, new in grouped.items():
                held = self._pending.get(trace_id)
                check_spans([*(held.spans if held else ()), *new])
            for trace_id, new in grouped.items():
                p = self._pending.setdefault(trace_id, _Pending())
                p.spans.extend(new)
                p.last = now
                if p.root_at is None and any(s.parent_id is None for s in new):
                    p.root_at = now
                self._held += len(new)

    def due(self) -> list[str]:
        """Trace ids that have ended by now."""
        now = self.clock()
        with self._lock:
            return [
                t
                for t, p in self._pending.items()
                if (p.root_at is not None and now - p.last >= self.settle)
                or now - p.last >= self.idle
            ]

    def sweep(self, everything: bool = False) -> list[Kept]:
        """Keep every trace that has ended (``everything``: every trace held, as at shutdown)."""
        with self._lock:
            ids = list(self._pending) if everything else None
        out = [self._keep(t) for t in (ids if ids is not None else self.due())]
        return [k for k in out if k is not None]

    def _keep(self, trace_id: str) -> Kept | None:
        with self._lock:
            p = self._pending.pop(trace_id, None)
            if p is None:
                return None
            self._held -= len(p.spans)
        ended = "root span ended" if p.root_at is not None else "idle, no root span"
        try:
            run, events = build_run(p.spans, self.pii)
            with self._write_lock:
                written = self.store.put_run(run, [event_to_row(e) for e in events])
            kept = Kept(trace_id, run, len(events), written, ended)
        except ReplayableError as exc:
            kept = Kept(trace_id, None, 0, False, ended, str(exc))
        except Exception as exc:  # a trace the mapping cannot read must not stop the others
            log.exception("replayable collect: trace %s could not be mapped", trace_id)
            problem = f"it could not be mapped ({type(exc).__name__}: {exc}); please report this"
            kept = Kept(trace_id, None, 0, False, ended, problem)
        if self.on_kept is not None:
            self.on_kept(kept)
        return kept


async def _body(request: Request) -> bytes:
    """The request body, refused (413) past :data:`MAX_BODY` before reading it all."""
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > MAX_BODY:
        raise InvalidOtlp(f"the body is {length} bytes, over the bound of {MAX_BODY}", status=413)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > MAX_BODY:
            raise InvalidOtlp(f"the body is over the bound of {MAX_BODY} bytes", status=413)
        chunks.append(chunk)
    return b"".join(chunks)


def create_collector_app(
    collector: Collector,
    *,
    token: str | None = None,
    local_only: bool = True,
    tick: float = 0.1,
) -> Starlette:
    """The OTLP/HTTP receiver as an ASGI app (run it with uvicorn).

    ``POST`` to any of :data:`TRACE_PATHS` with ``application/x-protobuf`` or
    ``application/json``, gzip or not. ``token``: required as ``Authorization: Bearer``, or as
    the password of ``Authorization: Basic`` (Langfuse's SDK sends its secret key so).
    Traces still held at shutdown are kept then.
    """

    async def traces(request: Request) -> Response:
        json_reply = request.headers.get("content-type", "").startswith("application/json")
        try:
            body = await _body(request)
            spans = await asyncio.to_thread(
                decode_request,
                body,
                request.headers.get("content-type", ""),
                request.headers.get("content-encoding", ""),
            )
            collector.add(spans)
        except InvalidOtlp as exc:
            return Response(
                orjson.dumps({"code": 3, "message": str(exc)}),
                status_code=exc.status,
                media_type="application/json",
            )
        if json_reply:
            return Response(b"{}", media_type="application/json")
        return Response(b"", media_type="application/x-protobuf")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async def sweeper() -> None:
            while True:
                await asyncio.sleep(tick)
                if collector.due():
                    try:
                        await asyncio.to_thread(collector.sweep)
                    except Exception:  # reporting a kept trace failed: keep the rest coming
                        log.exception("replayable collect: reporting a kept trace failed")

        task = asyncio.create_task(sweeper())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await asyncio.to_thread(collector.sweep, True)

    app = Starlette(
        routes=[Route(path, traces, methods=["POST"]) for path in TRACE_PATHS],
        lifespan=lifespan,
    )
    app.add_middleware(
        Guard,
        token=token,
        local_only=local_only,
        headers=[(b"x-content-type-options", b"nosniff")],
        url_token=False,
        basic=True,
    )
    return app
