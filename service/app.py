"""``create_app(settings)``: the FastAPI application; the model loads in the lifespan, never at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Receive, Scope, Send

from .engine import Engine
from .errors import install_handlers
from .fastpath import FastPredictPath
from .limits import BodyLimitMiddleware
from .metrics import Metrics, MetricsMiddleware
from .routes import router
from .settings import Settings


class McServe(FastAPI):
    """FastAPI with an optional front layer that sees each request before FastAPI's own per-request work."""

    front: ASGIApp | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.front is None:
            await super().__call__(scope, receive, send)
        else:
            await self.front(scope, receive, send)

    async def framework(self, scope: Scope, receive: Receive, send: Send) -> None:
        """FastAPI's own ``__call__``: what the front layer hands every request it does not answer."""
        await super().__call__(scope, receive, send)


def create_app(
    settings: Settings,
    engine: Engine | None = None,
    registry: CollectorRegistry | None = None,
) -> McServe:
    """Build the app. ``engine`` may be pre-loaded (``python -m service`` loads before binding)."""
    engine = engine or Engine(settings)
    shared = settings.metrics_dir if settings.workers > 1 else None  # set by ``python -m service`` for its workers
    metrics = Metrics(registry or CollectorRegistry(), multiprocess_dir=shared)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = await anyio.to_thread.run_sync(engine.load)
        ref = loaded.ref
        metrics.set_model(ref["name"], ref["version"], ref["sha256"], str(loaded.device))
        yield
        metrics.ready.set(0)
        metrics.process_exiting()

    app = McServe(
        title="mcserve",
        summary="Fashion-MNIST dropout MLP with Monte Carlo dropout uncertainty",
        version="0.1.0",
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.settings = settings
    install_handlers(app)
    app.include_router(router)
    if settings.fast_path:  # outermost: it records its own requests' metrics and delegates everything else
        app.front = FastPredictPath(app.framework, engine=engine, metrics=metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"])
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=[*router.routes, *app.router.routes])
    return app


def create_worker_app() -> McServe:
    """uvicorn's app factory for each worker process when ``MCSERVE_WORKERS`` > 1 (``python -m service``)."""
    return create_app(Settings())
