"""Pure torch inference: the deterministic pass and the vectorised Monte Carlo dropout kernel.

Nothing here knows about HTTP. The model always stays in ``eval()``; dropout is
applied by this module, per call, with masks drawn from a caller-owned
``torch.Generator`` so that a seeded request is reproducible and concurrent
callers never share random state.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mcnet import DropoutMLP


@dataclass(frozen=True)
class MCResult:
    """Per-image summaries of ``n_samples`` stochastic passes (all on the model's device)."""

    mean_probs: torch.Tensor  # (B, C) mean of the softmax over passes
    variance: torch.Tensor  # (B, C) per-class population variance (divide by T) of the probabilities
    std: torch.Tensor  # (B, C) sqrt(variance)
    predictive_entropy: torch.Tensor  # (B,) H[mean_probs], nats
    expected_entropy: torch.Tensor  # (B,) mean over passes of H[p_t], nats
    mutual_information: torch.Tensor  # (B,) predictive - expected entropy (BALD), >= 0
    n_samples: int


def predict_eval(model: DropoutMLP, x: torch.Tensor) -> torch.Tensor:
    """Deterministic class probabilities ``(B, C)``: dropout off, model untouched."""
    if model.training:
        raise RuntimeError("the served model must stay in eval() mode")
    with torch.inference_mode():
        return F.softmax(model(x), dim=-1)


def _dropout_mask(shape: tuple[int, ...], p: float, like: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Inverted-dropout mask as ``F.dropout`` applies it: Bernoulli(1-p) scaled by 1/(1-p)."""
    if p == 0.0:
        return torch.ones(shape, dtype=like.dtype, device=like.device)
    keep = 1.0 - p
    mask = torch.empty(shape, dtype=like.dtype, device=like.device)
    return mask.bernoulli_(keep, generator=generator).div_(keep)


def mc_predict(
    model: DropoutMLP,
    x: torch.Tensor,
    n_samples: int,
    generator: torch.Generator,
    chunk_size: int = 8192,
) -> MCResult:
    """Monte Carlo dropout with no Python loop over samples.

    ``hidden1`` (everything before the first dropout) runs once per image. The T
    stochastic passes of the rest run as batched tensor operations over
    ``(t, B, H)`` blocks of at most ``chunk_size`` rows (t >= 1 samples per
    block), reduced with running sums of p, p^2 and p*log p so memory stays
    bounded for any T x B.
    """
    if model.training:
        raise RuntimeError("the served model must stay in eval() mode")
    if n_samples < 1:
        raise ValueError("n_samples must be >= 1")
    p1, p2 = model.arch.dropout
    with torch.inference_mode():
        h1 = model.hidden1(x)  # (B, H1), deterministic
        batch, width1 = h1.shape
        classes = model.fc3.out_features
        sum_p = torch.zeros(batch, classes, dtype=torch.float64, device=h1.device)
        sum_p2 = torch.zeros(batch, classes, dtype=torch.float64, device=h1.device)
        sum_neg_plogp = torch.zeros(batch, dtype=torch.float64, device=h1.device)
        per_chunk = max(1, chunk_size // max(batch, 1))
        done = 0
        while done < n_samples:
            t = min(per_chunk, n_samples - done)
            h = h1.unsqueeze(0) * _dropout_mask((t, batch, width1), p1, h1, generator)
            h2 = F.relu(model.fc2(h.reshape(t * batch, width1)))
            h2 = h2 * _dropout_mask(tuple(h2.shape), p2, h2, generator)
            log_p = F.log_softmax(model.fc3(h2), dim=-1).reshape(t, batch, classes)
            p = log_p.exp()
            p64 = p.to(torch.float64)
            sum_p += p64.sum(dim=0)
            sum_p2 += (p64 * p64).sum(dim=0)
            sum_neg_plogp -= (p * log_p).sum(dim=-1).to(torch.float64).sum(dim=0)
            done += t
        mean = sum_p / n_samples
        variance = (sum_p2 / n_samples - mean * mean).clamp_min(0.0)
        predictive = -torch.special.xlogy(mean, mean).sum(dim=-1)
        expected = sum_neg_plogp / n_samples
        mutual = (predictive - expected).clamp_min(0.0)
        return MCResult(
            mean_probs=mean.float(),
            variance=variance.float(),
            std=variance.sqrt().float(),
            predictive_entropy=predictive.float(),
            expected_entropy=expected.float(),
            mutual_information=mutual.float(),
            n_samples=n_samples,
        )
