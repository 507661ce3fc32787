"""The fast MC sampler equals the network's own dropout-on forward pass."""

from __future__ import annotations

import torch

from mcnet import Architecture, DropoutMLP
from training.evaluate import mc_softmax, predict


def test_mc_softmax_matches_model_forward() -> None:
    torch.manual_seed(0)
    model = DropoutMLP(Architecture(dropout=(0.3, 0.6))).eval()
    x = torch.rand(7, 28, 28) * 255
    torch.manual_seed(123)
    expected = torch.stack([torch.softmax(model(x, mc=True), 1) for _ in range(5)])
    torch.manual_seed(123)
    got = mc_softmax(model, x, 5)
    torch.testing.assert_close(got, expected, rtol=0, atol=1e-6)
    assert not model.training
    assert not torch.allclose(got[0], got[1])  # dropout really is on


def test_predict_shapes_and_ranges() -> None:
    torch.manual_seed(0)
    model = DropoutMLP().eval()
    pred = predict(model, torch.rand(5, 28, 28) * 255, mc_samples=8, chunk=2)
    assert pred.eval_probs.shape == pred.mc_probs.shape == (5, 10)
    torch.testing.assert_close(pred.mc_probs.sum(1), torch.ones(5, dtype=torch.float64))
    assert bool((pred.mc_mi >= 0).all()) and bool((pred.mc_mi <= pred.mc_entropy + 1e-12).all())
