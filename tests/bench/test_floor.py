"""The floors under ``/predict`` in ``bench batching`` answer as mcserve does (they must do its work to be floors)."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

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
