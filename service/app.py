"""``create_app(settings)``: the FastAPI application; the model loads in the lifespan, never at import."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio
from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import CollectorRegistry
from starlette.types import ASGIApp, Receive, Scope, Send

from .auth import Authenticator
from .authhttp import AuthLayer
from .core import Core
from .engine import Engine
from .errors import install_handlers
from .fastpath import FastPredictPath
from .httpmetrics import MetricsMiddleware
from .limits import BodyLimitMiddleware
from .metrics import Metrics
from .requestid import RequestIdLayer
from .routes import router
from .settings import Settings
from .v2.dataplane import DataPlane
from .v2.rest import V2Http

VERSION = "0.1.0"
log = logging.getLogger("service")


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
    auth = Authenticator(settings.api_keys_file)  # a bad keys file raises KeysFileError: one line, what to fix
    core = Core(engine, metrics, auth)
    plane = DataPlane(core, VERSION)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        loaded = await anyio.to_thread.run_sync(engine.load)
        kernel = core.kernel_process()  # started in the background: until it is up, MC runs in the threads
        starting = asyncio.ensure_future(core.start_kernel_process(kernel, loaded.manifest)) if kernel else None
        ref = loaded.ref
        grpc_server = None
        if settings.grpc_port:
            from .v2.grpc_server import GrpcServer  # grpcio only when gRPC is on

            tls = None if settings.tls_certfile is None or settings.tls_keyfile is None else (
                settings.tls_certfile, settings.tls_keyfile
            )  # fmt: skip
            grpc_server = GrpcServer(
                plane, settings.host, settings.grpc_port, settings.max_body_bytes, settings.workers > 1, tls
            )
            await grpc_server.start()
        if auth.enabled:
            _reload_on_sighup(auth)
        metrics.set_model(ref["name"], ref["version"], ref["sha256"], str(loaded.device))
        try:
            yield
        finally:
            metrics.ready.set(0)
            if grpc_server is not None:  # uvicorn has drained HTTP; in-flight gRPC calls get the same grace
                await grpc_server.stop(settings.graceful_shutdown_s)
            if starting is not None and not starting.done():
                starting.cancel()
            await anyio.to_thread.run_sync(core.close)  # waits for the kernel process to stop
            metrics.process_exiting()

    app = McServe(
        title="mcserve",
        summary="Fashion-MNIST dropout MLP with Monte Carlo dropout uncertainty",
        version=VERSION,
        lifespan=lifespan,
    )
    app.state.engine = engine
    app.state.metrics = metrics
    app.state.settings = settings
    app.state.core = core
    app.state.plane = plane
    install_handlers(app)
    app.include_router(router)
    # Front layers, outermost first: the REST fast path (its two paths), then v2 (/v2/...); each records its own
    # requests' metrics and hands everything else on, finally to FastAPI's own __call__.
    front: ASGIApp = V2Http(app.framework, plane)
    if settings.fast_path:
        front = FastPredictPath(front, core)
    app.front = front
    if auth.enabled:  # outermost: nothing runs for a request without a valid key
        app.front = AuthLayer(app.front, auth, metrics, settings.max_body_bytes)
    app.front = RequestIdLayer(app.front)  # outermost of all: every answer, refusals and errors too, echoes the id
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    if settings.cors_origins:
        app.add_middleware(CORSMiddleware, allow_origins=settings.cors_origins, allow_methods=["GET", "POST"])
    app.add_middleware(MetricsMiddleware, metrics=metrics, routes=[*router.routes, *app.router.routes])
    return app


def _reload_on_sighup(auth: Authenticator) -> None:
    """SIGHUP re-reads the keys file (``python -m service``'s loop runs in the main thread; in-process test apps run
    elsewhere and call ``auth.reload()`` themselves)."""
    import asyncio
    import signal

    try:
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, auth.reload)
    except (RuntimeError, ValueError, NotImplementedError):
        log.debug("SIGHUP handler not installed (not in the main thread)")


def create_worker_app() -> McServe:
    """uvicorn's app factory for each worker process when ``MCSERVE_WORKERS`` > 1 (``python -m service``)."""
    return create_app(Settings())
