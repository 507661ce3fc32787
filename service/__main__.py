"""``python -m service`` / ``mcserve-serve``: load and warm the model, then serve it with uvicorn.

Everything that can be wrong with the configuration, the device or the artifact is
found *before* the port is bound, and reported as one line on stderr with exit code 2.
"""

from __future__ import annotations

import logging
import signal
import sys
from types import FrameType

from pydantic import ValidationError

from .settings import Settings, describe_error

EXIT_CONFIG = 2


def _fail(message: str) -> int:
    print(f"mcserve-serve: error: {message}", file=sys.stderr, flush=True)
    return EXIT_CONFIG


def _graceful_exit(signum: int, frame: FrameType | None) -> None:
    """uvicorn re-raises SIGTERM after its graceful shutdown; a drained shutdown is a success (exit 0)."""
    raise SystemExit(0)


def main() -> int:
    try:
        settings = Settings()
    except ValidationError as exc:
        return _fail(describe_error(exc))
    logging.basicConfig(
        level=settings.log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr
    )
    from mcnet import ArtifactError

    from .engine import DeviceError, Engine

    engine = Engine(settings)
    try:
        engine.load()
    except (ArtifactError, DeviceError) as exc:
        return _fail(str(exc))
    except Exception as exc:  # e.g. CUDA initialisation failures: still one clear line, never a traceback
        return _fail(f"could not load the model from {settings.model_dir} ({type(exc).__name__}: {exc})")

    import uvicorn

    from .app import create_app

    app = create_app(settings, engine=engine)
    signal.signal(signal.SIGTERM, _graceful_exit)
    uvicorn.run(
        app,
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level,
        access_log=settings.access_log,
        workers=1,
        timeout_graceful_shutdown=settings.graceful_shutdown_s,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
