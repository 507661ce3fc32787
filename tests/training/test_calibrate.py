"""Temperature scaling: the MC-averaged NLL, the grid fit and the fold into fc3."""

from __future__ import annotations

import math

import torch

from mcnet import DropoutMLP
from training.calibrate import fit_temperature, fold_temperature, mc_logits, mc_nll


def test_mc_nll_of_one_pass_is_cross_entropy() -> None:
    logits = torch.tensor([[[2.0, 0.0, -1.0], [0.0, 0.0, 0.0]]])  # (T=1, N=2, K=3)
    labels = torch.tensor([0, 2])
    by_hand = (-math.log(math.exp(2) / (math.exp(2) + 1 + math.exp(-1))) + math.log(3)) / 2
    assert abs(mc_nll(logits, labels, 1.0) - by_hand) < 1e-12
    # T = 2 halves the logits
    halved = (-math.log(math.exp(1) / (math.exp(1) + 1 + math.exp(-0.5))) + math.log(3)) / 2
    assert abs(mc_nll(logits, labels, 2.0) - halved) < 1e-12


def test_mc_nll_averages_probabilities_not_logits() -> None:
    logits = torch.tensor([[[4.0, 0.0]], [[0.0, 4.0]]])  # two passes that disagree completely
    labels = torch.tensor([0])
    p = (math.exp(4) / (math.exp(4) + 1) + 1 / (1 + math.exp(4))) / 2  # = 0.5
    assert abs(mc_nll(logits, labels, 1.0) - (-math.log(p))) < 1e-12


def test_fit_recovers_a_known_temperature() -> None:
    """Labels drawn from softmax(z / 1.7): the fitted temperature of the logits z is close to 1.7."""
    gen = torch.Generator().manual_seed(0)
    z = torch.randn(1, 20_000, 10, generator=gen) * 4
    labels = torch.multinomial(torch.softmax(z[0] / 1.7, -1), 1, generator=gen).squeeze(1)
    t = fit_temperature(z, labels)
    assert abs(t - 1.7) < 0.08, t
    assert mc_nll(z, labels, t) < mc_nll(z, labels, 1.0)


def test_fold_divides_every_pass_logits() -> None:
    torch.manual_seed(0)
    model = DropoutMLP().eval()
    x = torch.rand(16, 28, 28) * 255
    before = mc_logits(model, x, 5, seed=3)
    fold_temperature(model, 1.6)
    after = mc_logits(model, x, 5, seed=3)
    torch.testing.assert_close(after, before / 1.6, rtol=1e-5, atol=1e-6)


def test_mc_logits_is_seeded_and_leaves_the_global_generator_alone() -> None:
    model = DropoutMLP().eval()
    x = torch.rand(4, 28, 28) * 255
    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a = mc_logits(model, x, 3, seed=5)
    assert torch.equal(torch.rand(3), expected_next)
    assert torch.equal(mc_logits(model, x, 3, seed=5), a)
    assert not torch.equal(a[0], a[1])  # the passes differ: dropout was on


def test_coarse_to_fine_search_finds_the_grid_minimum() -> None:
    """The search evaluates a fraction of the grid but lands on the same point as a full scan."""
    gen = torch.Generator().manual_seed(1)
    z = torch.randn(3, 3000, 10, generator=gen) * 3
    labels = torch.multinomial(torch.softmax(z.mean(0) / 2.3, -1), 1, generator=gen).squeeze(1)
    grid = tuple(round(0.5 + 0.01 * i, 2) for i in range(251))
    full = min(grid, key=lambda t: (mc_nll(z, labels, t), t))
    assert fit_temperature(z, labels, grid) == full
