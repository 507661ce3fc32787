"""Classification, calibration, selective-prediction and OOD metrics on probability tensors.

All functions take ``probs`` of shape ``(N, K)`` (rows sum to one) and integer
``labels`` of shape ``(N,)`` unless stated otherwise, and return Python floats.
"""

from __future__ import annotations

import math

import torch

EPS = 1e-12


def accuracy(probs: torch.Tensor, labels: torch.Tensor) -> float:
    return float((probs.argmax(1) == labels).to(torch.float64).mean())


def nll(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Mean negative log-likelihood of the true class (natural log)."""
    p_true = probs.to(torch.float64).gather(1, labels[:, None]).squeeze(1)
    return float(-(p_true.clamp_min(EPS).log()).mean())


def brier(probs: torch.Tensor, labels: torch.Tensor) -> float:
    """Multi-class Brier score: mean over images of sum_k (p_k - 1[k = y])^2 (range 0-2)."""
    onehot = torch.nn.functional.one_hot(labels, probs.shape[1]).to(torch.float64)
    return float(((probs.to(torch.float64) - onehot) ** 2).sum(1).mean())


def reliability_bins(
    probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per equal-width confidence bin ``(lo, hi]``: (count, mean confidence, accuracy); empty bins give 0."""
    conf, pred = probs.to(torch.float64).max(1)
    correct = (pred == labels).to(torch.float64)
    # bin b holds confidences in (b/n, (b+1)/n]; the 1e-9 keeps values on an edge (0.6 * 15 = 9.000000000000002)
    # in the lower bin despite rounding; confidence 0 (impossible for a softmax) would go to bin 0
    idx = (torch.ceil(conf * n_bins - 1e-9) - 1).clamp(0, n_bins - 1).to(torch.int64)
    count = torch.bincount(idx, minlength=n_bins).to(torch.float64)
    conf_sum = torch.bincount(idx, weights=conf, minlength=n_bins)
    acc_sum = torch.bincount(idx, weights=correct, minlength=n_bins)
    safe = count.clamp_min(1.0)
    return count, conf_sum / safe, acc_sum / safe


def ece(probs: torch.Tensor, labels: torch.Tensor, n_bins: int = 15) -> float:
    """Expected calibration error: sum_b (n_b / N) |accuracy_b - confidence_b| over equal-width bins."""
    count, conf, acc = reliability_bins(probs, labels, n_bins)
    return float((count / count.sum() * (acc - conf).abs()).sum())


def entropy(probs: torch.Tensor) -> torch.Tensor:
    """Shannon entropy (nats) of each row."""
    p = probs.to(torch.float64)
    return -(p * p.clamp_min(EPS).log()).sum(-1)


def mutual_information(mc_probs: torch.Tensor) -> torch.Tensor:
    """BALD mutual information from ``(T, N, K)`` MC samples: H[mean_t p_t] - mean_t H[p_t] (nats, >= 0)."""
    mean = mc_probs.to(torch.float64).mean(0)
    return (entropy(mean) - entropy(mc_probs).mean(0)).clamp_min(0.0)


def selective_accuracy(correct: torch.Tensor, uncertainty: torch.Tensor, coverage: float) -> float:
    """Accuracy on the ``ceil(coverage * N)`` most certain predictions (lowest ``uncertainty``; stable ties)."""
    if not 0.0 < coverage <= 1.0:
        raise ValueError(f"coverage must lie in (0, 1], got {coverage}")
    keep = math.ceil(coverage * correct.shape[0] - 1e-9)
    order = torch.sort(uncertainty.to(torch.float64), stable=True).indices[:keep]
    return float(correct[order].to(torch.float64).mean())


def auroc(positive_scores: torch.Tensor, negative_scores: torch.Tensor) -> float:
    """Area under the ROC curve: P(score_pos > score_neg) + 0.5 P(tie) (Mann-Whitney U with mid-ranks).

    Here positives are out-of-distribution images and scores are uncertainties (higher = more OOD).
    """
    pos = positive_scores.to(torch.float64).flatten()
    neg = negative_scores.to(torch.float64).flatten()
    n_pos, n_neg = pos.numel(), neg.numel()
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC needs at least one positive and one negative score")
    scores = torch.cat([pos, neg])
    _values, inverse, counts = torch.unique(scores, return_inverse=True, return_counts=True)
    # mid-rank (1-based) of each distinct value: ranks below it plus the average position within its tie group
    below = torch.cumsum(counts, 0) - counts
    mid_rank = below.to(torch.float64) + (counts.to(torch.float64) + 1.0) / 2.0
    rank_sum_pos = mid_rank[inverse[:n_pos]].sum()
    u = rank_sum_pos - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))
