"""Load against a real uvicorn: 64 keep-alive connections, both endpoints mixed, 0 errors, exact metrics.

The client (``bench.soak.drive``) counts every response by endpoint and status; the
service's ``mcserve_http_requests_total`` must hold exactly the same numbers. The default
suite sends 3,000 requests; the issue's 20,000 run is ``@pytest.mark.load`` (``make test-load``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from hardening_support import Server, metric_value, running_server

from bench.soak import MC, PREDICT, drive, mixed_requests, real_images

CONCURRENCY = 64


@pytest.fixture
def fresh(trained_artifact: Path, tmp_path: Path) -> Iterator[Server]:
    """A new server per test, so its counters start at zero."""
    yield from running_server(trained_artifact, tmp_path / "service.log", default_samples=10)


def run_load(server: Server, total: int, fashion_dir: Path) -> None:
    requests = mixed_requests("127.0.0.1", server.port, real_images(64, fashion_dir), n_samples=10)
    counts = asyncio.run(drive("127.0.0.1", server.port, total, CONCURRENCY, requests))
    print(f"\n{total} requests, concurrency {CONCURRENCY}: {counts.seconds:.1f} s, {total / counts.seconds:.0f} req/s")
    assert not counts.errors, counts.errors[:5]
    assert counts.total() == total
    assert counts.total(status=200) == total, dict(counts.responses)
    metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
    for path in (PREDICT, MC):
        served = metric_value(metrics, "mcserve_http_requests_total", route=path, method="POST")
        ok = metric_value(metrics, "mcserve_http_requests_total", route=path, method="POST", status="200")
        assert served == ok == counts.total(path, 200) == total // 2, (path, served, ok, dict(counts.responses))
    assert metric_value(metrics, "mcserve_http_requests_in_flight") == 1  # only this scrape
    assert server.ready()


def test_load_3000_mixed_requests_no_errors_metrics_match(fresh: Server, fashion_dir: Path) -> None:
    run_load(fresh, 3_000, fashion_dir)


@pytest.mark.load
def test_load_20000_mixed_requests_no_errors_metrics_match(fresh: Server, fashion_dir: Path) -> None:
    run_load(fresh, 20_000, fashion_dir)
