"""The HTTP API in process: both endpoints on the trained artifact, determinism, seeding, errors, health, info."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from fastapi.testclient import TestClient

from mcnet import load_artifact, read_manifest
from service import Settings, create_app

Images = tuple[np.ndarray, np.ndarray]


def body(images: np.ndarray, **extra: Any) -> dict[str, Any]:
    return {"images": [img.tolist() for img in images], **extra}


def test_predict_on_real_images(client: TestClient, test_images: Images, trained_artifact: Path) -> None:
    images = test_images[0]
    r = client.post("/predict", json=body(images[:64]))
    assert r.status_code == 200, r.text
    data = r.json()
    manifest = read_manifest(trained_artifact)
    assert data["model"] == {
        "name": manifest["name"],
        "version": manifest["version"],
        "sha256": manifest["weights"]["sha256"],
    }
    preds = data["predictions"]
    assert len(preds) == 64
    for p in preds:
        assert len(p["probabilities"]) == 10 and abs(sum(p["probabilities"]) - 1) < 1e-5
        assert p["class_id"] == int(np.argmax(p["probabilities"]))
        assert p["label"] == manifest["class_names"][p["class_id"]]
    model, _ = load_artifact(trained_artifact, "cpu")
    with torch.no_grad():
        direct = torch.softmax(model(torch.from_numpy(images[:64].astype(np.float32))), dim=-1)
    served = torch.tensor([p["probabilities"] for p in preds])
    torch.testing.assert_close(served, direct, rtol=0, atol=1e-6)  # the service serves exactly this model


def test_flat_nested_and_png_inputs_agree(client: TestClient, test_images: Images, png_b64: Callable[..., str]) -> None:
    images = test_images[0][:5]
    nested = client.post("/predict", json=body(images)).json()
    flat = client.post("/predict", json={"images": [img.reshape(-1).tolist() for img in images]}).json()
    png = client.post("/predict", json={"images_png": [png_b64(img) for img in images]}).json()
    assert nested == flat == png


def test_predict_is_byte_identical(client: TestClient, test_images: Images) -> None:
    payload = body(test_images[0][:8])
    first = client.post("/predict", json=payload).content
    assert all(client.post("/predict", json=payload).content == first for _ in range(5))


def test_predict_is_byte_identical_under_concurrent_mc_load(client: TestClient, test_images: Images) -> None:
    payload = body(test_images[0][:16])
    baseline = client.post("/predict", json=payload).content
    stop = threading.Event()
    mc_done: list[int] = []
    failures: list[str] = []

    def hammer(seed: int) -> None:
        while not stop.is_set():
            r = client.post("/predict/uncertainty", json=body(test_images[0][16:32], n_samples=100, seed=seed))
            (mc_done.append(1) if r.status_code == 200 else failures.append(r.text))

    threads = [threading.Thread(target=hammer, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    try:
        bodies = [client.post("/predict", json=payload).content for _ in range(20)]
        done_during = len(mc_done)
    finally:
        stop.set()
        for t in threads:
            t.join()
    assert not failures
    assert done_during > 0, "MC requests must have completed while /predict was being called"
    assert all(b == baseline for b in bodies)


def test_uncertainty_response(client: TestClient, test_images: Images, trained_artifact: Path) -> None:
    r = client.post("/predict/uncertainty", json=body(test_images[0][:10], n_samples=50, seed=3))
    assert r.status_code == 200, r.text
    data = r.json()
    threshold = read_manifest(trained_artifact)["uncertainty"]["threshold"]
    assert data["n_samples"] == 50 and data["seed"] == 3 and data["uncertainty_threshold"] == threshold
    for p in data["predictions"]:
        mean, var, std = (np.array(p[k]) for k in ("mean_probabilities", "variance", "std"))
        assert mean.shape == var.shape == std.shape == (10,)
        assert abs(mean.sum() - 1) < 1e-5 and (var >= 0).all() and np.allclose(std**2, var, atol=1e-7)
        assert p["class_id"] == int(np.argmax(mean)) and isinstance(p["label"], str)
        assert p["predictive_entropy"] >= p["expected_entropy"] - 1e-6
        assert abs(p["mutual_information"] - max(p["predictive_entropy"] - p["expected_entropy"], 0)) < 1e-5
        assert p["uncertain"] == (p["mutual_information"] > threshold or p["input_outlier"])
    assert any(np.array(p["variance"]).max() > 0 for p in data["predictions"]), "dropout must be on for MC passes"


def test_uncertainty_is_reproducible_with_a_seed(client: TestClient, test_images: Images) -> None:
    payload = body(test_images[0][:4], n_samples=30, seed=1234)
    first = client.post("/predict/uncertainty", json=payload).content
    assert client.post("/predict/uncertainty", json=payload).content == first
    other = client.post("/predict/uncertainty", json={**payload, "seed": 1235}).json()
    assert other["predictions"] != json.loads(first)["predictions"]


def test_unseeded_request_echoes_a_seed_that_reproduces_it(client: TestClient, test_images: Images) -> None:
    payload = body(test_images[0][:3])
    a = client.post("/predict/uncertainty", json=payload).json()
    assert a["n_samples"] == 20  # the settings' default_samples in these tests
    b = client.post("/predict/uncertainty", json={**payload, "seed": a["seed"]}).json()
    assert a == b


def test_predict_does_not_leave_dropout_on(client: TestClient, test_images: Images) -> None:
    client.post("/predict/uncertainty", json=body(test_images[0][:2], n_samples=5, seed=0))
    engine = client.app.state.engine  # type: ignore[attr-defined]
    assert engine.loaded.model.training is False


def test_livez_readyz_and_info(client: TestClient, trained_artifact: Path) -> None:
    assert client.get("/livez").json() == {"status": "alive"}
    ready = client.get("/readyz").json()
    assert ready == {"status": "ready", "mc_kernel": "threads", "mc_code": "c"}  # MCSERVE_MC_PROCESS=off here
    info = client.get("/info").json()
    manifest = read_manifest(trained_artifact)
    assert info["model"]["sha256"] == manifest["weights"]["sha256"]
    assert info["device"] == "cpu"
    assert info["class_names"] == manifest["class_names"]
    assert info["metrics"] == manifest.get("metrics", {}) and info["metrics"]
    assert info["uncertainty"]["threshold"] == manifest["uncertainty"]["threshold"]
    assert info["input_check"]["threshold"] == manifest["input_check"]["threshold"]
    assert info["input_check"]["method"] == "pca_residual" and info["input_check"]["components"] == 32
    assert info["limits"]["max_batch"] == 256 and info["limits"]["max_samples"] == 1000
    assert info["batching"] == {"fast_path": True, "max_images": 256, "max_wait_ms": 0.0}


def test_readyz_is_503_until_the_model_is_loaded(
    trained_artifact: Path, make_settings: Callable[..., Settings]
) -> None:
    app = create_app(make_settings(trained_artifact))
    idle = TestClient(app)  # lifespan not started: nothing loaded yet
    assert idle.get("/livez").status_code == 200
    r = idle.get("/readyz")
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready"
    r = idle.post("/predict", json={"images": [[0] * 784]})
    assert r.status_code == 503 and r.json()["error"]["code"] == "not_ready" and r.headers["retry-after"] == "1"
    assert idle.get("/info").status_code == 503
    with TestClient(app) as live:
        assert live.get("/readyz").status_code == 200
        assert live.post("/predict", json={"images": [[0] * 784]}).status_code == 200


def test_openapi_has_an_example_for_every_endpoint(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    text = json.dumps(spec)
    paths = spec["paths"]
    assert set(paths) >= {"/predict", "/predict/uncertainty", "/livez", "/readyz", "/info", "/metrics"}
    for path, ops in paths.items():
        for method, op in ops.items():
            op_text = json.dumps(op)
            has_ref_example = any(
                ref.split("/")[-1] in spec["components"]["schemas"]
                and "examples" in json.dumps(spec["components"]["schemas"][ref.split("/")[-1]])
                for ref in _refs(op)
            )
            assert '"example' in op_text or has_ref_example, f"{method.upper()} {path} has no example"
    assert "iVBOR" in text  # the PNG request example


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


def test_input_check_flags_inverted_images_and_noise_on_both_endpoints(
    client: TestClient, test_images: Images, trained_artifact: Path
) -> None:
    """Garments pass the pixel-space check; white-background (inverted) garments and uniform noise do not,
    and on the MC endpoint such an input is ``uncertain`` whatever its mutual information."""
    garments = test_images[0][:20]
    noise = np.random.default_rng(0).integers(0, 256, size=(5, 28, 28))
    odd = np.concatenate([255 - garments[:5], noise])
    section = read_manifest(trained_artifact)["input_check"]
    for path, extra in (("/predict", {}), ("/predict/uncertainty", {"n_samples": 20, "seed": 1})):
        ok = client.post(path, json=body(garments, **extra)).json()
        bad = client.post(path, json=body(odd, **extra)).json()
        assert sum(p["input_outlier"] for p in ok["predictions"]) <= 1, path  # 1 % of test images are flagged
        assert all(p["input_outlier"] is True for p in bad["predictions"]), path
        for p in ok["predictions"] + bad["predictions"]:
            assert p["input_outlier"] == (p["input_residual"] > section["threshold"])
        if path == "/predict/uncertainty":
            assert bad["input_check_threshold"] == section["threshold"]
            assert all(p["uncertain"] for p in bad["predictions"])


def test_input_residual_is_the_checks_score(client: TestClient, test_images: Images, trained_artifact: Path) -> None:
    from mcnet.inputcheck import load_input_check

    check = load_input_check(trained_artifact, read_manifest(trained_artifact))
    assert check is not None
    images = test_images[0][:8]
    got = [p["input_residual"] for p in client.post("/predict", json=body(images)).json()["predictions"]]
    want = check.score(torch.from_numpy(images.astype(np.float32))).tolist()
    assert np.allclose(got, want, rtol=1e-6, atol=1e-9)


def test_artifact_without_an_input_check_serves_nulls(
    tmp_path: Path, make_settings: Callable[..., Settings], test_images: Images
) -> None:
    """Artifacts exported before the check existed still load; the check's fields are null, never guessed."""
    from mcnet import DropoutMLP, save_artifact

    save_artifact(tmp_path / "old", DropoutMLP(), uncertainty_threshold=0.1, uncertainty_rule="test")
    with TestClient(create_app(make_settings(tmp_path / "old"))) as c:
        p = c.post("/predict", json=body(test_images[0][:2])).json()["predictions"][0]
        assert (p["input_residual"], p["input_outlier"]) == (None, None)
        mc = c.post("/predict/uncertainty", json=body(255 - test_images[0][:2], n_samples=5)).json()
        assert mc["input_check_threshold"] is None
        assert all(q["uncertain"] == (q["mutual_information"] > 0.1) for q in mc["predictions"])
        assert c.get("/info").json()["input_check"] is None
