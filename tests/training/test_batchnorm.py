"""Batch norm folding: the exported plain network computes exactly what the trained one computes in eval mode."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mcnet import DropoutMLP
from training.batchnorm import BatchNormMLP, exportable


def _trained_bn_model() -> BatchNormMLP:
    """A BatchNormMLP whose running statistics, scales and shifts are all far from their defaults."""
    torch.manual_seed(0)
    model = BatchNormMLP(DropoutMLP())
    with torch.no_grad():
        for bn in (model.bn1, model.bn2):
            bn.weight.uniform_(0.5, 2.0)
            bn.bias.uniform_(-0.5, 0.5)
    model.train()
    for _ in range(20):  # running statistics from real forward passes in train mode
        model(torch.rand(64, 28, 28) * 255)
    return model.eval()


def test_fold_matches_eval_mode_forward() -> None:
    model = _trained_bn_model()
    assert model.bn1.running_mean is not None
    assert not torch.allclose(model.bn1.running_mean, torch.zeros(256))  # the fold has something to do
    folded = model.fold()
    assert type(folded) is DropoutMLP and not folded.training
    x = torch.rand(32, 28, 28) * 255
    with torch.no_grad():
        torch.testing.assert_close(folded(x), model(x), rtol=1e-4, atol=1e-4)


def test_fold_keeps_mc_dropout_the_same() -> None:
    """MC dropout of the folded network = dropout after ReLU(BN_eval(fc(.))) with the same masks."""
    model = _trained_bn_model()
    folded = model.fold()
    x = torch.rand(8, 28, 28) * 255
    b = model.base
    with torch.no_grad():
        torch.manual_seed(7)
        got = folded(x, mc=True)
        torch.manual_seed(7)
        h = F.dropout(F.relu(model.bn1(b.fc1(b.normalise(x)))), 0.2, training=True)
        want = b.fc3(F.dropout(F.relu(model.bn2(b.fc2(h))), 0.5, training=True))
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4)


def test_fold_leaves_the_trained_module_alone() -> None:
    model = _trained_bn_model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    model.fold()
    for key, value in model.state_dict().items():
        assert torch.equal(value, before[key]), key


def test_exportable_passes_a_plain_network_through() -> None:
    plain = DropoutMLP()
    assert exportable(plain) is plain
    assert type(exportable(_trained_bn_model())) is DropoutMLP


def test_training_dropout_keeps_and_scales_like_f_dropout() -> None:
    from training.batchnorm import dropout

    torch.manual_seed(0)
    h = torch.rand(400, 256) + 0.5  # no zeros of its own
    out = dropout(h, 0.5, training=True)
    kept = out != 0
    assert abs(kept.double().mean().item() - 0.5) < 0.01  # 102,400 draws: the keep rate is 0.5 within 1 %
    torch.testing.assert_close(out[kept], h[kept] * 2.0)
    assert abs(dropout(h, 0.2, training=True).ne(0).double().mean().item() - 0.8) < 0.01
    assert dropout(h, 0.5, training=False) is h
    h.requires_grad_(True)
    dropout(h, 0.5, training=True).sum().backward()
    assert h.grad is not None and set(h.grad.unique().tolist()) <= {0.0, 2.0}
