"""The CUDA path: the MC kernel and the whole app on a GPU (skipped only where there is none)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from mcnet import load_artifact
from service import Settings, create_app
from service.inference import mc_predict, predict_eval

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")


def test_kernels_on_cuda_match_cpu(trained_artifact: Path, test_images: tuple[np.ndarray, np.ndarray]) -> None:
    x = torch.from_numpy(test_images[0][:32].astype(np.float32))
    cpu_model, _ = load_artifact(trained_artifact, "cpu")
    gpu_model, _ = load_artifact(trained_artifact, "cuda")
    torch.testing.assert_close(predict_eval(gpu_model, x.cuda()).cpu(), predict_eval(cpu_model, x), atol=1e-5, rtol=0)
    n = 4000
    gpu = mc_predict(gpu_model, x.cuda(), n, torch.Generator(device="cuda").manual_seed(0), chunk_size=4096)
    cpu = mc_predict(cpu_model, x, n, torch.Generator().manual_seed(0), chunk_size=4096)
    assert gpu.mean_probs.device.type == "cuda"
    se = ((gpu.variance.cpu() + cpu.variance) / n).sqrt()
    assert bool(((gpu.mean_probs.cpu() - cpu.mean_probs).abs() <= 6 * se + 1e-4).all())
    again = mc_predict(gpu_model, x.cuda(), n, torch.Generator(device="cuda").manual_seed(0), chunk_size=4096)
    assert torch.equal(again.mean_probs, gpu.mean_probs)
    assert not gpu_model.training


def test_app_serves_on_cuda(
    trained_artifact: Path, make_settings: Callable[..., Settings], test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    images = [img.tolist() for img in test_images[0][:8]]
    with TestClient(create_app(make_settings(trained_artifact, device="cuda"))) as client:
        assert client.get("/info").json()["device"].startswith("cuda")
        first = client.post("/predict", json={"images": images})
        assert first.status_code == 200 and client.post("/predict", json={"images": images}).content == first.content
        payload = {"images": images, "n_samples": 500, "seed": 3}
        mc = client.post("/predict/uncertainty", json=payload)
        assert mc.status_code == 200 and client.post("/predict/uncertainty", json=payload).content == mc.content
        assert 'device="cuda' in client.get("/metrics").text
