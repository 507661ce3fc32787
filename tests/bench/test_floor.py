"""The floors under ``/predict`` in ``bench batching`` answer as mcserve does (they must do its work to be floors)."""

from __future__ import annotations

import gzip
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from bench.artifact import idx_image
from bench.peers import floor
from bench.peers.bare import CONSTANT
from service.app import create_app
from service.settings import Settings


def test_floors_decode_batch_and_predict_as_mcserve_does(
    trained_artifact: Path, fashion_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = gzip.decompress((fashion_dir / "t10k-images-idx3-ubyte.gz").read_bytes())
    monkeypatch.setenv("MCSERVE_MODEL_DIR", str(trained_artifact))
    images = [idx_image(raw, i) for i in range(3)]
    body = json.dumps({"images": images})
    with TestClient(create_app(Settings(model_dir=trained_artifact))) as mcserve:
        expected = mcserve.post("/predict", content=body, headers={"content-type": "application/json"}).json()
    with TestClient(floor.model_app) as client:
        got = client.post("/predict", content=body).json()
        assert client.post("/predict", content=b'{"images": [[1, 2]]}').status_code == 400
    assert [p["class_id"] for p in got["predictions"]] == [p["class_id"] for p in expected["predictions"]]
    assert [p["label"] for p in got["predictions"]] == [p["label"] for p in expected["predictions"]]
    for a, b in zip(got["predictions"], expected["predictions"], strict=True):
        assert a["probabilities"] == pytest.approx(b["probabilities"], abs=1e-6)
    with TestClient(floor.decode_app) as client:
        assert client.post("/predict", content=body).content == CONSTANT
        assert client.post("/predict", content=json.dumps({"images": [[300] * 784]})).status_code == 400


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_protocol_floor_answers_like_the_asgi_floor_on_a_real_uvicorn(
    trained_artifact: Path, fashion_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    raw = gzip.decompress((fashion_dir / "t10k-images-idx3-ubyte.gz").read_bytes())
    bodies = [json.dumps({"images": [idx_image(raw, i) for i in range(k, k + 2)]}) for k in range(3)]
    monkeypatch.setenv("MCSERVE_MODEL_DIR", str(trained_artifact))
    with TestClient(floor.model_app) as client:
        expected = [client.post("/predict", content=body).json() for body in bodies]
    port = _free_port()
    env = {**os.environ, "MCSERVE_MODEL_DIR": str(trained_artifact), "PYTHONPATH": str(Path(__file__).parents[2])}
    cmd = [sys.executable, "-m", "uvicorn", "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"]
    cmd += ["--http", "bench.peers.protocol_floor:Protocol", "bench.peers.floor:model_app"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.stderr.read().decode() if proc.stderr else ""
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the protocol floor never became ready"
                time.sleep(0.2)
        with httpx.Client(base_url=base, timeout=10) as http:  # one keep-alive connection for all of them
            for body, want in zip(bodies, expected, strict=True):
                answer = http.post("/predict", content=body)
                assert answer.status_code == 200
                assert answer.json() == want
            assert http.post("/predict", content=b'{"images": [[1, 2]]}').status_code == 400
            assert http.post("/predict", content=bodies[0]).json() == expected[0]  # the connection still serves
    finally:
        proc.terminate()
        proc.wait(timeout=10)
