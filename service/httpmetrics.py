"""The ASGI middleware that records the HTTP metrics of every request the application's own routes answer.

The front layers (the REST fast path, v2 HTTP) record their own requests the same way (``Metrics.record_http``).
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .metrics import METHODS, Metrics


def route_template(routes: Sequence[BaseRoute], scope: Scope) -> str:
    """The matched route's path template (bounded label values), or ``unmatched``.

    Used before routing has run (e.g. a 413 from the body limit); ``routes`` are plain routes with full paths.
    """
    partial = None
    for route in routes:
        if not isinstance(getattr(route, "path", None), str):
            continue
        match, _ = route.matches(scope)
        if match is Match.FULL:
            return str(getattr(route, "path", "unmatched"))
        if match is Match.PARTIAL and partial is None:
            partial = str(getattr(route, "path", "unmatched"))
    return partial or "unmatched"


class MetricsMiddleware:
    """Counts and times every HTTP request by route template, method and status."""

    def __init__(self, app: ASGIApp, metrics: Metrics, routes: Sequence[BaseRoute]) -> None:
        self.app = app
        self.metrics = metrics
        self.routes = routes
        self._static: dict[str, str] = {}  # request path -> template, for paths that are a route's template

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        route = self._static.get(path) or route_template(self.routes, scope)
        if route == path and len(self._static) < 64:  # a static route's own path: no need to match it again
            self._static[path] = route
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        self.metrics.in_flight.inc()
        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            matched = scope.get("route")  # set by the router when a route matched (full or method-only)
            if matched is not None and isinstance(getattr(matched, "path", None), str):
                route = matched.path
            self.metrics.in_flight.dec()
            method = scope["method"] if scope["method"] in METHODS else "OTHER"
            self.metrics.record_http(route, method, str(status), time.perf_counter() - start)
