"""Metric functions against cases computed by hand."""

from __future__ import annotations

import math

import pytest
import torch
from sklearn.metrics import roc_auc_score

from training import metrics

PROBS = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.6, 0.3], [0.5, 0.4, 0.1], [0.2, 0.2, 0.6]])
LABELS = torch.tensor([0, 1, 1, 0])  # first two right, last two wrong


def test_accuracy_nll_brier_by_hand() -> None:
    assert metrics.accuracy(PROBS, LABELS) == pytest.approx(0.5)
    assert metrics.nll(PROBS, LABELS) == pytest.approx(
        -(math.log(0.7) + math.log(0.6) + math.log(0.4) + math.log(0.2)) / 4
    )
    # per image: (0.09+0.04+0.01), (0.01+0.16+0.09), (0.25+0.36+0.01), (0.64+0.04+0.36)
    assert metrics.brier(PROBS, LABELS) == pytest.approx((0.14 + 0.26 + 0.62 + 1.04) / 4)


def test_ece_by_hand() -> None:
    # confidences 0.7, 0.6, 0.5, 0.6 with 15 bins:
    #   0.7 -> bin (0.6667, 0.7333]: image 1 (right): acc 1, conf 0.7 -> 0.3 * 1/4
    #   0.6 -> bin (0.5333, 0.6]: images 2 (right) and 4 (wrong): acc 0.5, conf 0.6 -> 0.1 * 2/4
    #   0.5 -> bin (0.4667, 0.5333]: image 3 (wrong): acc 0, conf 0.5 -> 0.5 * 1/4
    assert metrics.ece(PROBS, LABELS, n_bins=15) == pytest.approx(0.3 / 4 + 0.1 * 2 / 4 + 0.5 / 4)
    perfect = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert metrics.ece(perfect, torch.tensor([0, 1])) == pytest.approx(0.0)


def test_ece_bins_are_right_closed() -> None:
    # a confidence on an edge belongs to the bin below it: 0.75 -> (0.5, 0.75] with 4 bins
    count, _, _ = metrics.reliability_bins(torch.tensor([[0.75, 0.25]]), torch.tensor([0]), n_bins=4)
    assert count.tolist() == [0.0, 0.0, 1.0, 0.0]
    # 0.6 = 9/15 in float64 (0.6 * 15 rounds to 9.000000000000002) still lands in (8/15, 9/15]
    probs = torch.tensor([[0.6, 0.4]], dtype=torch.float64)
    count, conf, _ = metrics.reliability_bins(probs, torch.tensor([0]), n_bins=15)
    assert int(count.argmax()) == 8
    assert float(conf[8]) == pytest.approx(0.6)


def test_entropy_and_mutual_information() -> None:
    uniform = torch.full((1, 4), 0.25)
    assert float(metrics.entropy(uniform)[0]) == pytest.approx(math.log(4))
    # two confident but disagreeing samples: mean is uniform over 2 classes, each sample has zero entropy
    mc = torch.tensor([[[1.0, 0.0]], [[0.0, 1.0]]])
    assert float(metrics.mutual_information(mc)[0]) == pytest.approx(math.log(2))
    agreeing = torch.tensor([[[0.3, 0.7]], [[0.3, 0.7]]])
    assert float(metrics.mutual_information(agreeing)[0]) == pytest.approx(0.0, abs=1e-12)


def test_selective_accuracy_keeps_most_certain() -> None:
    correct = torch.tensor([True, True, False, True, False])
    uncertainty = torch.tensor([0.1, 0.2, 0.9, 0.3, 0.5])
    assert metrics.selective_accuracy(correct, uncertainty, 0.6) == pytest.approx(1.0)  # keeps 3 most certain
    assert metrics.selective_accuracy(correct, uncertainty, 0.8) == pytest.approx(3 / 4)
    assert metrics.selective_accuracy(correct, uncertainty, 1.0) == pytest.approx(3 / 5)
    with pytest.raises(ValueError):
        metrics.selective_accuracy(correct, uncertainty, 0.0)


def test_auroc_by_hand_with_ties() -> None:
    assert metrics.auroc(torch.tensor([3.0, 4.0]), torch.tensor([1.0, 2.0])) == pytest.approx(1.0)
    assert metrics.auroc(torch.tensor([1.0, 2.0]), torch.tensor([3.0, 4.0])) == pytest.approx(0.0)
    # pairs (pos, neg): (2,1)>, (2,2)=, (2,3)<, (5,1)>, (5,2)>, (5,3)> -> (4 + 0.5) / 6
    assert metrics.auroc(torch.tensor([2.0, 5.0]), torch.tensor([1.0, 2.0, 3.0])) == pytest.approx(4.5 / 6)


def test_auroc_matches_sklearn() -> None:
    gen = torch.Generator().manual_seed(0)
    pos = torch.randint(0, 20, (300,), generator=gen).double() + 3
    neg = torch.randint(0, 20, (500,), generator=gen).double()
    expected = roc_auc_score([1] * 300 + [0] * 500, torch.cat([pos, neg]).numpy())
    assert metrics.auroc(pos, neg) == pytest.approx(expected, abs=1e-12)
