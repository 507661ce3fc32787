"""Overload, on a real server: while 48 clients flood max-work MC requests, light requests still get answers.

A real ``python -m service`` (uvicorn) subprocess with the default limits, driven by the same flood and probes as
``python -m bench overload`` (bench/overload.py) for a few seconds. The speed targets of issue 16 (the small MC
request in 0.25 s at p95, a 422 and a ``/predict`` in 50 ms) are measured by the bench; this test asserts the
behaviour with bounds generous enough for a noisy 2-core machine: every flood answer is a 200 or a fast 503
``overloaded`` with ``Retry-After``, nothing waits anywhere near 30 s, light requests are never stuck behind the
flood, and memory stays bounded. A server that queued MC work without bound would shed nothing and keep the small
request waiting behind the whole flood.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from bench import overload, overloadstats
from bench.overloadstats import Answer, Observed
from service import Settings

pytestmark = pytest.mark.slow  # real servers, child processes or training runs: `make test`, not test-fast

REPO = Path(__file__).resolve().parents[2]
PORTS = range(18500, 18600)  # reserved for this test
FLOOD_S = 5.0
SETTLE = 5.0  # generous: a probe or a refusal slower than this is stuck, not slow
LIGHT_MEDIAN_S = 0.25  # 5x the 50 ms target for a 422 and /predict
LIGHT_MAX_S = 2.0


def _service_env(model_dir: Path, port: int, **settings: object) -> dict[str, str]:
    """Default limits: no ``MCSERVE_*`` of the caller's environment reaches the server."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCSERVE_")}
    env |= {
        "PYTHONPATH": str(REPO),
        "MCSERVE_MODEL_DIR": str(model_dir),
        "MCSERVE_DEVICE": "cpu",
        "MCSERVE_HOST": "127.0.0.1",
        "MCSERVE_PORT": str(port),
        "MCSERVE_GRPC_PORT": "0",
        "MCSERVE_TORCH_THREADS": "1",
        "MCSERVE_LOG_LEVEL": "warning",
    }
    return env | {f"MCSERVE_{k.upper()}": str(v) for k, v in settings.items()}


def flooded(
    model_dir: Path, images: np.ndarray, log: Path, duration_s: float = FLOOD_S, **settings: object
) -> Observed:
    """Start a server (``settings``: ``MCSERVE_*`` overrides of the defaults), flood it, stop it by PID."""
    port = overload.free_port(PORTS)
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service"],
            cwd=REPO,
            env=_service_env(model_dir, port, **settings),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    try:
        _wait_ready(f"http://127.0.0.1:{port}", proc, log)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            limits = http.get("/info").json()["limits"]
        n_images, n_samples = overload.flood_shape(limits["max_batch"], limits["max_samples"], limits["max_work"])
        payloads = overload.bodies([im.reshape(-1).tolist() for im in images], n_images, n_samples)
        return overload.drive("127.0.0.1", port, proc.pid, payloads, overload.CLIENTS, duration_s)
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(url: str, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"service exited with {proc.returncode}:\n{log.read_text(errors='replace')}")
        try:
            ready = httpx.get(f"{url}/readyz", timeout=2)
            if ready.status_code == 200 and ready.json().get("mc_kernel") != "starting":  # its memory counts too
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    raise RuntimeError(f"service not ready within 120 s:\n{log.read_text(errors='replace')}")


@pytest.fixture(scope="module")
def observed(
    trained_artifact: Path, test_images: tuple[np.ndarray, np.ndarray], tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Observed]:
    yield flooded(trained_artifact, test_images[0], tmp_path_factory.mktemp("overload") / "service.log")


def _bad_refusals(answers: list[Answer]) -> list[Answer]:
    """The 503s that lack ``Retry-After`` or the ``overloaded`` error code."""
    return [a for a in answers if a.status == 503 and not (a.retry_after and a.code == "overloaded")]


def _median(answers: list[Answer]) -> float:
    return float(np.median([a.seconds for a in answers]))


def test_every_flood_answer_is_a_200_or_a_fast_overloaded_503(observed: Observed) -> None:
    flood = observed.flood
    statuses = {a.status for a in flood}
    assert statuses <= {200, 503}, overloadstats.summarise(observed)["overload_flood_statuses"]
    assert any(a.status == 200 for a in flood), "the flood got no work done at all"
    defaults = Settings()
    # With the default limits only max_concurrency requests run and max_queued_work waits: 48 cannot all fit.
    fits = defaults.max_queued_work + defaults.max_concurrency * defaults.max_work
    if overload.CLIENTS * defaults.max_work > fits:
        assert any(a.status == 503 for a in flood), "48 max-work clients and nothing shed: the queue is unbounded"
    assert max(a.seconds for a in flood) < 30, "a flood request waited 30 s or more"
    assert max((a.seconds for a in flood if a.status == 503), default=0) < defaults.queue_timeout_s + SETTLE
    assert not _bad_refusals(flood), _bad_refusals(flood)[:3]


def test_the_small_mc_request_is_answered_or_refused_within_seconds(observed: Observed) -> None:
    small = observed.probes["small"]
    assert len(small) >= 20 and observed.probes_skipped["small"] == 0, (len(small), observed.probes_skipped)
    assert {a.status for a in small} <= {200, 503}, [a for a in small if a.status not in (200, 503)][:3]
    assert max(a.seconds for a in small) < SETTLE, sorted(a.seconds for a in small)[-5:]
    assert not _bad_refusals(small), _bad_refusals(small)[:3]


def test_validation_errors_and_predict_do_not_wait_for_the_flood(observed: Observed) -> None:
    for name, status in (("invalid", 422), ("predict", 200)):
        answers = observed.probes[name]
        assert len(answers) >= 20 and observed.probes_skipped[name] == 0, (name, len(answers))
        assert {a.status for a in answers} == {status}, (name, [a for a in answers if a.status != status][:3])
        slowest = sorted(a.seconds for a in answers)[-5:]
        assert _median(answers) < LIGHT_MEDIAN_S and slowest[-1] < LIGHT_MAX_S, (name, _median(answers), slowest)


def test_memory_stays_bounded_under_the_flood(observed: Observed) -> None:
    start, peak = observed.rss_mb[0], max(observed.rss_mb)
    # 48 in-flight bodies of 570 KB and their decoded arrays are tens of MiB; glibc keeps some freed memory
    assert peak - start < 1024 and observed.rss_end_mb - start < 512, (start, peak, observed.rss_end_mb)
