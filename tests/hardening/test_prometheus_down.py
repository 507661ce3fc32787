"""Prometheus is pull-based: serving does not depend on it, before, during or after a scraper's death.

A real Prometheus scrapes the real service every second; once it has scraped, it is
killed (SIGKILL, no goodbye) and the service keeps serving, its own /metrics included.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import time
from pathlib import Path

import httpx
from hardening_support import Server, free_port, metric_value

BODY = {"images": [[0] * 784]}


def _serves(server: Server, n: int = 20) -> None:
    with httpx.Client(base_url=server.url, timeout=30) as client:
        assert all(client.post("/predict", json=BODY).status_code == 200 for _ in range(n))
        r = client.post("/predict/uncertainty", json=BODY | {"n_samples": 10, "seed": 1})
        assert r.status_code == 200 and client.get("/readyz").status_code == 200


def test_serving_without_any_scraper(hardened: Server) -> None:
    _serves(hardened)


def test_prometheus_killed_mid_scrape_has_no_effect(hardened: Server, tmp_path: Path) -> None:
    binary = shutil.which("prometheus")
    assert binary, "Prometheus is not installed (Debian package prometheus; scripts/install.sh installs it)"
    port = free_port()
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\n"
        "scrape_configs:\n"
        f"  - job_name: mcserve\n    static_configs: [{{targets: ['127.0.0.1:{hardened.port}']}}]\n"
    )
    log = (tmp_path / "prometheus.log").open("wb")
    prom = subprocess.Popen(
        [
            binary,
            f"--config.file={config}",
            f"--storage.tsdb.path={tmp_path / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    try:
        before = metric_value(
            httpx.get(f"{hardened.url}/metrics").text, "mcserve_http_requests_total", route="/metrics"
        )
        deadline = time.monotonic() + 60
        up = None
        while time.monotonic() < deadline:  # until Prometheus reports a successful scrape of the service
            try:
                result = httpx.get(f"http://127.0.0.1:{port}/api/v1/query", params={"query": "up"}, timeout=2).json()
                up = [r["value"][1] for r in result["data"]["result"]]
            except (httpx.HTTPError, KeyError, ValueError):
                up = None
            if up == ["1"]:
                break
            _serves(hardened, 2)
            time.sleep(0.5)
        assert up == ["1"], (tmp_path / "prometheus.log").read_text()[-2000:]
        scraped = metric_value(
            httpx.get(f"{hardened.url}/metrics").text, "mcserve_http_requests_total", route="/metrics"
        )
        assert scraped >= before + 2  # Prometheus's scrapes + ours
    finally:
        prom.send_signal(signal.SIGKILL)
        prom.wait(timeout=10)
        log.close()
    _serves(hardened)
    time.sleep(2)  # two scrape intervals with no scraper
    _serves(hardened)
