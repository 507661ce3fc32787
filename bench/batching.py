"""``python -m bench batching``: dynamic batching on vs off, interleaved, to decide whether to keep it.

The issue's rule: keep dynamic batching only if it raises ``/predict`` throughput at c >= 16 without
hurting p99 at c = 1. The two servers (the same service; one with ``MCSERVE_BATCH_MAX_IMAGES=1``)
run side by side and wrk alternates between them, round after round, so slow drifts of the machine
hit both equally; the medians over rounds are compared.

``bench http`` runs its servers one after the other, and on a VM whose speed drifts by tens of percent
within minutes its on/off rows drift with it; the interleaved ratios here do not.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from bench import artifact, procs
from bench.http import LOG_DIR, ROOT
from bench.loadgen import run_wrk

# mcserve with these settings
VARIANTS: dict[str, dict[str, str]] = {
    "on": {},
    "off": {"MCSERVE_BATCH_MAX_IMAGES": "1"},
}
CONCURRENCY = (1, 16, 64)


def run(quick: bool, model_dir: Path | None, server_threads: int) -> dict[str, Any]:
    rounds, duration_s = (2, 2.0) if quick else (4, 5.0)
    out: dict[str, Any] = {}
    samples: dict[tuple[str, int], list[tuple[float, float]]] = {}
    with tempfile.TemporaryDirectory(prefix="bench-batching-") as tmp, contextlib.ExitStack() as stack:
        model_dir, model_note = artifact.resolve(model_dir, Path(tmp) / "model")
        body = json.dumps({"images": [artifact.sample_image()]})
        urls = {}
        for i, (name, extra) in enumerate(VARIANTS.items()):
            port = 18160 + i
            env = {
                **os.environ,
                "PYTHONPATH": str(ROOT),
                "MCSERVE_MODEL_DIR": str(model_dir),
                "MCSERVE_HOST": "127.0.0.1",
                "MCSERVE_PORT": str(port),
                "MCSERVE_GRPC_PORT": "0",  # REST only; side-by-side servers would share 8001
                "MCSERVE_LOG_LEVEL": "warning",
                "MCSERVE_TORCH_THREADS": str(server_threads),
                "OPENBLAS_NUM_THREADS": str(server_threads),  # as ``python -m service`` sets it for itself
            }
            cmd = [sys.executable, "-m", "service"]
            env |= extra
            ready = f"http://127.0.0.1:{port}/readyz"
            stack.enter_context(procs.serve(f"batching_{name}", cmd, ready, env, LOG_DIR))
            urls[name] = f"http://127.0.0.1:{port}/predict"
        for url in urls.values():
            run_wrk(url, body, 16, 1.0)  # warm-up
        for _ in range(rounds):
            for c in CONCURRENCY:
                for name, url in urls.items():
                    res = run_wrk(url, body, c, duration_s)
                    samples.setdefault((name, c), []).append((res.rps, res.p99_ms))
                    out[f"batching_{name}_errors_c{c}"] = out.get(f"batching_{name}_errors_c{c}", 0) + res.errors
    for (name, c), values in samples.items():
        out[f"batching_{name}_rps_c{c}"] = statistics.median(v[0] for v in values)
        out[f"batching_{name}_p99_ms_c{c}"] = statistics.median(v[1] for v in values)
        print(f"bench batching: {name} c={c}: {out[f'batching_{name}_rps_c{c}']:.0f} req/s (median of {len(values)})")
    for c in CONCURRENCY:
        out[f"batching_rps_gain_c{c}"] = out[f"batching_on_rps_c{c}"] / out[f"batching_off_rps_c{c}"]
        out[f"batching_p99_ratio_c{c}"] = out[f"batching_on_p99_ms_c{c}"] / out[f"batching_off_p99_ms_c{c}"]
    out["conditions"] = {
        "rounds": rounds,
        "duration_s_per_run": duration_s,
        "order": "per round: c=1,16,64, each server in turn (" + ", ".join(VARIANTS) + ")",
        "statistic": "median over rounds of req/s and of wrk's p99",
        "model": model_note,
        "server_torch_threads": server_threads,
    }
    return out
