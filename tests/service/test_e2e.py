"""End to end: a real ``python -m service`` (uvicorn) subprocess, and startup failures that exit before binding."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
import torch

import mcnet

REPO = Path(__file__).resolve().parents[2]
PORT = 18010


def service_env(**settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCSERVE_")}
    env.update({f"MCSERVE_{k.upper()}": v for k, v in settings.items()})
    env["PYTHONPATH"] = str(REPO)
    return env


def test_real_server_end_to_end(trained_artifact: Path, test_images: tuple[np.ndarray, np.ndarray]) -> None:
    env = service_env(model_dir=str(trained_artifact), device="cpu", port=str(PORT), log_level="warning")
    proc = subprocess.Popen(
        [sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    base = f"http://127.0.0.1:{PORT}"
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            _wait_ready(http, proc)
            images = [img.tolist() for img in test_images[0][:4]]
            r = http.post("/predict", json={"images": images})
            assert r.status_code == 200 and len(r.json()["predictions"]) == 4
            assert http.post("/predict", json={"images": images}).content == r.content
            u = http.post("/predict/uncertainty", json={"images": images, "n_samples": 25, "seed": 9})
            assert u.status_code == 200 and u.json()["n_samples"] == 25
            assert http.post("/predict/uncertainty", json={"images": images, "n_samples": 25, "seed": 9}).json() == (
                u.json()
            )
            assert http.post("/predict", json={"images": [[0] * 5]}).status_code == 422
            metrics = http.get("/metrics").text
            rest = 'mcserve_http_requests_total{method="POST",protocol="rest",'
            assert rest + 'route="/predict",status="200"} 2.0' in metrics
            assert rest + 'route="/predict/uncertainty",status="200"} 2.0' in metrics
            assert rest + 'route="/predict",status="422"} 1.0' in metrics
            assert 'mcserve_mc_samples_sum{protocol="rest"} 50.0' in metrics
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen[bytes]) -> str:
    """SIGTERM, as Docker sends it: the server drains and exits 0; returns its stderr."""
    proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        raise
    assert proc.returncode == 0, stderr.decode()
    return stderr.decode()


def _wait_ready(http: httpx.Client, proc: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 120
    while True:
        assert proc.poll() is None, proc.communicate()[1].decode()
        try:
            if http.get("/readyz").status_code == 200:
                return
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline, "server never became ready"
        time.sleep(0.2)


def _worker_files(directory: Path, kind: str) -> list[Path]:
    """One worker's multiprocess file per process id, e.g. ``counter_<pid>.db``."""
    return sorted(directory.glob(f"{kind}_[0-9]*.db"))


def _predict_count(counter_file: Path) -> float:
    """``/predict`` 200s recorded in one worker's counter file (prometheus-client's own reader)."""
    from prometheus_client.mmap_dict import MmapedDict

    want = {"method": "POST", "route": "/predict", "status": "200", "protocol": "rest"}
    total = 0.0
    for key, value, _, _ in MmapedDict.read_all_values_from_file(str(counter_file)):
        _, sample, labels, _ = json.loads(key)
        if sample == "mcserve_http_requests_total" and labels == want:
            total += value
    return total


def _sample(metrics: str, line_start: str) -> float:
    values = [float(line.rsplit(" ", 1)[1]) for line in metrics.splitlines() if line.startswith(line_start)]
    assert len(values) == 1, (line_start, values)
    return values[0]


def test_several_workers_share_the_port_and_every_scrape_counts_all_of_them(
    trained_artifact: Path, test_images: tuple[np.ndarray, np.ndarray], tmp_path: Path
) -> None:
    """MCSERVE_WORKERS=2: requests on fresh connections spread over both processes; each scrape sums both."""
    metrics_dir = tmp_path / "metrics"
    metrics_dir.mkdir()
    (metrics_dir / "counter_1.db").write_bytes(b"stale")  # an earlier run's file: emptied at startup
    port = PORT + 5
    env = service_env(
        model_dir=str(trained_artifact), device="cpu", port=str(port), log_level="warning",
        workers="2", metrics_dir=str(metrics_dir), torch_threads="1",
    )  # fmt: skip
    proc = subprocess.Popen(
        [sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    base = f"http://127.0.0.1:{port}"
    image = test_images[0][0].tolist()
    try:
        with httpx.Client(base_url=base, timeout=30) as http:
            _wait_ready(http, proc)
            deadline = time.monotonic() + 120  # /readyz answers once one worker is up: wait for the second
            while len(_worker_files(metrics_dir, "gauge_livemin")) < 2 or (
                _sample(http.get("/metrics").text, "mcserve_model_ready ") != 1.0
            ):
                assert time.monotonic() < deadline, sorted(p.name for p in metrics_dir.iterdir())
                time.sleep(0.2)

        def post(_: int) -> int:  # a new connection per request, so the kernel hands them to both workers
            with httpx.Client(base_url=base, timeout=30) as one:
                return one.post("/predict", json={"images": [image]}).status_code

        n = 0
        with ThreadPoolExecutor(8) as pool:
            for _ in range(10):  # until each worker has served some (almost always the first round)
                assert set(pool.map(post, range(40))) == {200}
                n += 40
                served = [_predict_count(f) for f in _worker_files(metrics_dir, "counter")]
                if len(served) == 2 and min(served) > 0:
                    break
        settle = time.monotonic() + 5  # a worker counts a request just after writing its answer: let the last land
        while sum(served) != n and time.monotonic() < settle:
            time.sleep(0.05)
            served = [_predict_count(f) for f in _worker_files(metrics_dir, "counter")]
        assert len(served) == 2 and min(served) > 0 and sum(served) == n, served  # each worker's own file
        assert not (metrics_dir / "counter_1.db").exists()
        for _ in range(4):  # whichever worker answers the scrape, it reports the sum over both
            with httpx.Client(base_url=base, timeout=30) as one:
                text = one.get("/metrics").text
            assert (
                _sample(
                    text, 'mcserve_http_requests_total{method="POST",protocol="rest",route="/predict",status="200"}'
                )
                == n
            )
            assert _sample(text, 'mcserve_batch_size_images_count{endpoint="predict",protocol="rest"}') == n
            assert _sample(text, "mcserve_model_ready ") == 1.0
            assert _sample(text, "mcserve_http_requests_in_flight ") == 1.0  # the scrape itself
    finally:
        stderr = _stop(proc)
    assert "Traceback" not in stderr
    assert not list(metrics_dir.glob("gauge_live*")), "exiting workers leave the live gauges"


@pytest.fixture(scope="module")
def artifact_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("startup") / "good"
    mcnet.save_artifact(out, mcnet.DropoutMLP())
    return out


def _copy(src: Path, dst: Path) -> Path:
    dst.mkdir()
    for f in src.iterdir():
        (dst / f.name).write_bytes(f.read_bytes())
    return dst


def _broken_artifacts(good: Path, tmp: Path) -> dict[str, tuple[Path, str]]:
    """name -> (model dir, text that stderr must contain). mcnet's own tests cover every manifest defect."""
    corrupt_weights = _copy(good, tmp / "corrupt_weights")
    (corrupt_weights / mcnet.WEIGHTS_FILE).write_bytes(b"\x00garbage" * 10)
    tampered_weights = _copy(good, tmp / "tampered_weights")
    data = bytearray((tampered_weights / mcnet.WEIGHTS_FILE).read_bytes())
    data[-1] ^= 0x01
    (tampered_weights / mcnet.WEIGHTS_FILE).write_bytes(bytes(data))
    tampered_manifest = _copy(good, tmp / "tampered_manifest")
    manifest = json.loads((tampered_manifest / mcnet.MANIFEST_FILE).read_text())
    manifest["uncertainty"]["threshold"] = 99.0
    (tampered_manifest / mcnet.MANIFEST_FILE).write_text(json.dumps(manifest))
    return {
        "missing": (tmp / "does-not-exist", "does not exist"),
        "corrupt weights": (corrupt_weights, "sha256 mismatch"),
        "tampered weights": (tampered_weights, "tampered"),
        "tampered manifest": (tampered_manifest, "checksum mismatch"),
    }


def test_startup_failures_exit_non_zero_with_a_message(artifact_dir: Path, tmp_path: Path) -> None:
    cases = {
        name: (service_env(model_dir=str(path), device="cpu", port=str(PORT + 1)), needle)
        for name, (path, needle) in _broken_artifacts(artifact_dir, tmp_path).items()
    }
    missing_gpu = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    cases["no such CUDA device"] = (
        service_env(model_dir=str(artifact_dir), device=missing_gpu, port=str(PORT + 1)),
        "CUDA device",
    )
    cases["bad setting"] = (service_env(model_dir=str(artifact_dir), port="eighty"), "MCSERVE_PORT")
    cases["zero workers"] = (service_env(model_dir=str(artifact_dir), workers="0"), "MCSERVE_WORKERS")
    procs = {
        name: subprocess.Popen(
            [sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        for name, (env, _) in cases.items()
    }
    for name, proc in procs.items():
        try:
            _, err = proc.communicate(timeout=120)
        except subprocess.TimeoutExpired:
            proc.kill()
            pytest.fail(f"{name}: the service did not exit")
        stderr = err.decode()
        assert proc.returncode == 2, f"{name}: exit {proc.returncode}\n{stderr}"
        assert cases[name][1] in stderr, f"{name}: {stderr}"
        assert stderr.startswith("mcserve-serve: error: ") and stderr.count("\n") == 1, f"{name}: {stderr}"
        assert "Traceback" not in stderr and "Uvicorn running" not in stderr


def _serve_one_request(env: dict[str, str], port: int) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30) as http:
        while True:
            if proc.poll() is not None:
                return proc
            try:
                if http.get("/readyz").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                break
            time.sleep(0.2)
        http.get("/livez")
    proc.send_signal(signal.SIGTERM)
    return proc


def test_access_log_is_a_setting_independent_of_the_log_level(artifact_dir: Path) -> None:
    """At log level info the per-request access line appears only with MCSERVE_ACCESS_LOG=true."""
    settings = {"model_dir": str(artifact_dir), "device": "cpu", "log_level": "info"}
    procs = {
        access: _serve_one_request(service_env(port=str(port), **settings, **extra), port)
        for access, port, extra in [(False, PORT + 2, {}), (True, PORT + 3, {"access_log": "true"})]
    }
    for access, proc in procs.items():
        try:
            out, err = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise
        logs = out.decode() + err.decode()  # every record, access lines included, goes to stderr
        assert proc.returncode == 0 and "Uvicorn running" in logs, logs
        assert ('"GET /livez HTTP/1.1" 200' in logs) is access, logs
