"""``python -m bench coldstart``: wall time from spawning ``python -m service`` to its first ``/readyz`` 200."""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import artifact, procs

ROOT = Path(__file__).resolve().parent.parent
PORT = 18160


def run(model_dir: Path | None, repeats: int = 5) -> dict[str, Any]:
    with tempfile.TemporaryDirectory(prefix="bench-cold-") as tmp:
        model_dir, model_note = artifact.resolve(model_dir, Path(tmp) / "model")
        env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "MCSERVE_MODEL_DIR": str(model_dir),
            "MCSERVE_HOST": "127.0.0.1",
            "MCSERVE_PORT": str(PORT),
            "MCSERVE_GRPC_PORT": "0",  # REST readiness is what is timed
            "MCSERVE_LOG_LEVEL": "warning",
        }
        samples: list[float] = []
        error = None
        try:
            for i in range(repeats):
                cmd = [sys.executable, "-m", "service"]
                url = f"http://127.0.0.1:{PORT}/readyz"
                log_dir = ROOT / "bench" / "results" / "logs"
                # readiness as Kubernetes sees it (the MC kernel process may still be starting; the threads answer)
                serving = procs.serve(
                    f"coldstart-{i}", cmd, url, env, log_dir, timeout_s=60, cwd=ROOT, full_speed=False
                )
                with serving as server:
                    samples.append(server.ready_s)
        except Exception as exc:  # the service may not be runnable yet; record why
            error = f"{type(exc).__name__}: {exc}"[:2000]
    return {
        "cold_start_s_median": statistics.median(samples) if samples else None,
        "cold_start_s_all": samples,
        "cold_start_error": error,
        "conditions": {
            "measures": "spawn of `python -m service` to first GET /readyz 200, polled every 50 ms",
            "model": model_note,
            "repeats": repeats,
        },
    }
