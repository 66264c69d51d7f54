"""`GET /metrics` and the per-request numbers behind it (the metrics are in `asyncblog.metrics`).

The middleware hands each finished request to `RequestRecorder.done`: one counter and one
histogram observation, their label children looked up once per (method, route, status) and kept.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from prometheus_client.metrics import Counter, Histogram
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Scope

from asyncblog import metrics
from asyncblog.api.state import AppState

logger = logging.getLogger("asyncblog")

SAMPLE_EVERY = 1.0  # seconds between two samples of the gauges


class RequestRecorder:
    """Counts finished requests by method, route template and status, and their latency."""

    __slots__ = ("_children", "_templates", "in_flight")

    def __init__(self) -> None:
        self.in_flight = 0
        self._children: dict[tuple[str, str, int], tuple[Counter, Histogram]] = {}
        self._templates: dict[int, str] = {}

    def done(self, scope: Scope, status: int, seconds: float) -> None:
        self.in_flight -= 1
        matched = scope.get("route")
        route = matched.path_format if matched is not None else self._template(scope)
        method = scope["method"]
        key = (method, route, status)
        children = self._children.get(key)
        if children is None:
            label = method if method in metrics.METHODS else "OTHER"
            children = (
                metrics.REQUESTS.labels(label, route, str(status)),
                metrics.REQUEST_DURATION.labels(label, route),
            )
            self._children[key] = children
        children[0].inc()
        children[1].observe(seconds)

    def _template(self, scope: Scope) -> str:
        """The path template of a route that is not FastAPI's own (only those put themselves in
        the scope): its endpoint, which the router did put there, names it."""
        endpoint = scope.get("endpoint")
        if endpoint is None:
            return metrics.UNMATCHED
        if id(endpoint) not in self._templates:
            for route in scope["app"].router.routes:
                target = getattr(route, "endpoint", None) or getattr(route, "app", None)
                self._templates[id(target)] = getattr(route, "path_format", metrics.UNMATCHED)
            self._templates.setdefault(id(endpoint), metrics.UNMATCHED)
        return self._templates[id(endpoint)]


def sample(state: AppState, recorder: RequestRecorder | None) -> None:
    """Set the gauges of this process from the live state."""
    slots, in_use, waiting = state.db.admission.usage()
    metrics.sample_gauges(
        in_flight=recorder.in_flight if recorder is not None else 0,
        slots=slots,
        in_use=in_use,
        waiting=waiting,
    )
    busy, idle = state.db.connections()
    metrics.sample_pool(busy=busy, idle=idle)


@asynccontextmanager
async def sampling(state: AppState, recorder: RequestRecorder | None) -> AsyncIterator[None]:
    """For the app's lifetime: the gauges sampled every second; in a worker of several, the
    live gauges of dead workers dropped at start and this worker's at the end."""
    metrics.forget_dead_workers()

    async def every_second() -> None:
        while True:
            try:
                sample(state, recorder)
            except Exception:  # a metric must never stop the service
                logger.exception("sampling the metrics failed")
            await asyncio.sleep(SAMPLE_EVERY)

    task = asyncio.create_task(every_second(), name="asyncblog-metrics")
    try:
        yield
    finally:
        task.cancel()
        metrics.worker_exits()


def endpoint(token: str | None, recorder: RequestRecorder | None) -> Any:
    """The `/metrics` route's endpoint: the exposition text, behind a bearer token if one is
    set. Several workers' files are read in a thread (file I/O stays off the event loop)."""
    expected = f"Bearer {token}".encode() if token else None

    async def metrics_endpoint(request: Request) -> Response:
        if expected is not None:
            given = request.headers.get("authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return Response(
                    b'{"detail":"Not authenticated"}',
                    401,
                    headers={"WWW-Authenticate": "Bearer"},
                    media_type="application/json",
                )
        sample(request.app.state.asyncblog, recorder)
        accept = request.headers.get("accept")
        if metrics.multiprocess_dir() is None:
            body, content_type = metrics.render(accept)
        else:
            body, content_type = await asyncio.to_thread(metrics.render, accept)
        return Response(body, headers={"Cache-Control": "no-store", "Content-Type": content_type})

    return metrics_endpoint
