"""``python -m service`` / ``mcserve-serve``: load and warm the model, then serve it with uvicorn.

Everything that can be wrong with the configuration, the device or the artifact is
found *before* the port is bound, and reported as one line on stderr with exit code 2.

With ``MCSERVE_WORKERS`` > 1, uvicorn's supervisor starts that many worker processes on the
one port; each loads the (already verified) artifact itself. Their Prometheus metrics go
to files in one directory (prometheus-client's multiprocess mode), and ``/metrics`` on any
worker reports the sum over all of them.
"""

from __future__ import annotations

import gc
import logging
import os
import shutil
import signal
import socket
import sys
import tempfile
from pathlib import Path
from types import FrameType
from typing import Any

from pydantic import ValidationError

from .settings import Settings, describe_error

EXIT_CONFIG = 2


def _fail(message: str) -> int:
    print(f"mcserve-serve: error: {message}", file=sys.stderr, flush=True)
    return EXIT_CONFIG


def _graceful_exit(signum: int, frame: FrameType | None) -> None:
    """uvicorn re-raises SIGTERM after its graceful shutdown; a drained shutdown is a success (exit 0)."""
    raise SystemExit(0)


def _metrics_dir(configured: Path | None) -> tuple[Path, bool]:
    """The workers' shared metrics directory, emptied of an earlier run's files; ``(path, made_here)``."""
    if configured is None:
        return Path(tempfile.mkdtemp(prefix="mcserve-metrics-")), True
    configured.mkdir(parents=True, exist_ok=True)
    for stale in configured.glob("*.db"):
        stale.unlink()
    return configured, False


def _grpc_port_problem(settings: Settings) -> str | None:
    """Why the v2 gRPC port cannot be bound, found before loading anything (the server binds it at startup)."""
    if not settings.grpc_port:
        return None
    family = socket.AF_INET6 if ":" in settings.host else socket.AF_INET
    with socket.socket(family, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as gRPC binds: closed connections do not count
        try:
            sock.bind((settings.host, settings.grpc_port))
        except OSError as exc:
            return (
                f"MCSERVE_GRPC_PORT={settings.grpc_port}: cannot listen on {settings.host}:{settings.grpc_port} "
                f"({exc.strerror or exc}); free the port, pick another, or set MCSERVE_GRPC_PORT=0 to turn gRPC off"
            )
    return None


def _keys_problem(settings: Settings) -> str | None:
    """What is wrong with the keys file, found before loading anything."""
    if settings.api_keys_file is None:
        return None
    from .auth import KeysFileError, load_keys

    try:
        load_keys(settings.api_keys_file)
    except KeysFileError as exc:
        return f"MCSERVE_API_KEYS_FILE: {exc}; fix it (see `mcserve-keys new` and `mcserve-keys check`)"
    return None


def _tls_problem(settings: Settings) -> str | None:
    """Whether the TLS certificate and key load, found before binding."""
    if settings.tls_certfile is None or settings.tls_keyfile is None:
        return None
    import ssl

    try:
        ssl.create_default_context(ssl.Purpose.CLIENT_AUTH).load_cert_chain(settings.tls_certfile, settings.tls_keyfile)
    except (OSError, ssl.SSLError) as exc:
        return (
            f"MCSERVE_TLS_CERTFILE={settings.tls_certfile} / MCSERVE_TLS_KEYFILE={settings.tls_keyfile}: cannot be "
            f"used ({getattr(exc, 'strerror', None) or exc}); point them at a PEM certificate chain and its key"
        )
    return None


def _artifact_problem(settings: Settings) -> str | None:
    """What is wrong with the artifact's manifest or weights file, found without torch (the load checks them again)."""
    from mcnet.manifest import ArtifactError, read_manifest, verified_weights

    try:
        verified_weights(settings.model_dir, read_manifest(settings.model_dir))
    except ArtifactError as exc:
        return str(exc)
    return None


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        return _fail(describe_error(exc))
    from .requestid import configure_logging

    configure_logging(settings.log_level, settings.log_format)  # text or json; every line carries the request id
    # The port, keys file, TLS files and the artifact's manifest and weights checksum are checked before torch is
    # imported: a typo or a broken artifact fails in a fraction of a second, not after the seconds torch takes.
    problem = (
        _grpc_port_problem(settings) or _keys_problem(settings) or _tls_problem(settings) or _artifact_problem(settings)
    )
    if problem is not None:
        return _fail(problem)
    if settings.torch_threads > 0:  # numpy's OpenBLAS reads this once, when numpy is first imported (just below)
        os.environ["OPENBLAS_NUM_THREADS"] = str(settings.torch_threads)
    from mcnet import ArtifactError

    from .engine import DeviceError, Engine
    from .mcnative import NativeKernelError

    if settings.api_keys_file is None and not settings.loopback:
        logging.getLogger("service").warning(
            "listening on %s without API keys: anyone who can reach port %d may run Monte Carlo work and read "
            "/metrics; set MCSERVE_API_KEYS_FILE (make keys with `mcserve-keys new`)", settings.host, settings.port,
        )  # fmt: skip
    engine = Engine(settings)
    try:
        engine.load()
    except (ArtifactError, DeviceError, NativeKernelError) as exc:
        return _fail(str(exc))
    except Exception as exc:  # e.g. CUDA initialisation failures: still one clear line, never a traceback
        return _fail(f"could not load the model from {settings.model_dir} ({type(exc).__name__}: {exc})")

    import uvicorn

    # CPU-bound worker threads (MC kernel calls, big-body decodes) hold the GIL in turns of the switch interval;
    # the event loop, which answers every small request, then waits up to that long for each turn. 1 ms instead of
    # Python's 5 ms keeps /predict, health and validation errors quick while MC work runs.
    sys.setswitchinterval(0.001)
    # Everything loaded so far (torch, the model, FastAPI) lives as long as the process: move it out of the
    # collector's sight, and collect the youngest generation less often. Without this a full collection walks
    # every torch and FastAPI object about once per thousand MC requests (a 90-125 ms pause measured under
    # load) and young collections run every few requests.
    gc.collect()
    gc.freeze()
    gc.set_threshold(20_000, 50, 100)

    def serve(app: Any, **extra: Any) -> None:
        if settings.http_one_write:
            from .httpproto import OneWriteProtocol

            extra["http"] = OneWriteProtocol
        uvicorn.run(
            app,
            host=settings.host,
            port=settings.port,
            log_level=settings.log_level,
            log_config=None,  # uvicorn's records (startup, access log) go through configure_logging's handler
            access_log=settings.access_log,
            timeout_graceful_shutdown=settings.graceful_shutdown_s,
            ssl_certfile=None if settings.tls_certfile is None else str(settings.tls_certfile),
            ssl_keyfile=None if settings.tls_keyfile is None else str(settings.tls_keyfile),
            **extra,
        )

    signal.signal(signal.SIGTERM, _graceful_exit)
    if settings.workers == 1:
        from .app import create_app

        serve(create_app(settings, engine=engine), workers=1)
        return 0
    engine.unload()  # verified; every worker loads its own copy
    try:
        metrics_dir, made_here = _metrics_dir(settings.metrics_dir)
    except OSError as exc:
        return _fail(f"MCSERVE_METRICS_DIR={settings.metrics_dir} cannot be used ({exc})")
    # read by prometheus-client when a worker imports it, and by the worker's own Settings
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = os.environ["MCSERVE_METRICS_DIR"] = str(metrics_dir)
    try:
        serve("service.app:create_worker_app", factory=True, workers=settings.workers)
    finally:
        if made_here:
            shutil.rmtree(metrics_dir, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
