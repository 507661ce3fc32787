"""``create_app(settings)``: the FastAPI application; the model loads in the lifespan, never at import."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry

from .engine import Engine
from .errors import install_handlers
from .fastpath import FastPredictPath
from .limits import BodyLimitMiddleware
from .metrics import Metrics, MetricsMiddleware
from .routes import router
from .settings import Settings


def create_app(
    settings: Settings,
    engine: Engine | None = None,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """Build the app. ``engine`` may be pre-loaded (``python -m service`` loads before binding)."""
    engine = engine or Engine(settings)
    metrics = Metrics(registry or CollectorRegistry())

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = await anyio.to_thread.run_sync(engine.load)
        ref = loaded.ref
        metrics.set_model(ref["name"], ref["version"], ref["sha256"], str(loaded.device))
        yield
        metrics.ready.set(0)

    app = FastAPI(
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
    if settings.fast_path:  # innermost: inside the body limit and the metrics, like the routes
        app.add_middleware(FastPredictPath, engine=engine, metrics=metrics)
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"])
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=[*router.routes, *app.router.routes])
    return app
