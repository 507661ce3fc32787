"""Temperature scaling for Monte Carlo dropout, fitted on the validation split and folded into the last layer.

One scalar ``T`` divides the logits of every pass: ``softmax(fc3(h) / T)``. Dividing ``fc3``'s weight and bias
by ``T`` computes exactly that, so the calibrated network is still a plain :class:`mcnet.DropoutMLP` and the
service needs nothing new. ``T`` minimises the negative log-likelihood of the *MC-averaged* predictive
distribution on the validation images (the distribution ``/predict/uncertainty`` reports), over a fixed grid,
with seeded dropout masks: the fit is deterministic.
"""

from __future__ import annotations

import torch

from mcnet import DropoutMLP
from training import evaluate

# T in [0.5, 3.0] in steps of 0.01: wide enough for any sane network, fine enough that NLL is flat at the optimum.
GRID = tuple(round(0.5 + 0.01 * i, 2) for i in range(251))


@torch.no_grad()
def mc_logits(model: DropoutMLP, images: torch.Tensor, mc_samples: int, seed: int) -> torch.Tensor:
    """``(T, N, K)`` logits of ``mc_samples`` dropout-on passes, seeded; the global generator is left as it was."""
    model.eval()
    device = next(model.parameters()).device
    generator_state = torch.random.get_rng_state()
    torch.manual_seed(seed)
    try:
        return evaluate.mc_logits(model, images.to(device, torch.float32), mc_samples).cpu()
    finally:
        torch.random.set_rng_state(generator_state)


def mc_nll(logits: torch.Tensor, labels: torch.Tensor, temperature: float) -> float:
    """NLL of the MC-averaged softmax of ``logits / temperature`` (``logits``: ``(T, N, K)``)."""
    log_probs = torch.log_softmax(logits.to(torch.float64) / temperature, dim=-1)
    mean_log = torch.logsumexp(log_probs, dim=0) - torch.log(torch.tensor(float(logits.shape[0]), dtype=torch.float64))
    return float(-mean_log[torch.arange(len(labels)), labels].mean())


def fit_temperature(logits: torch.Tensor, labels: torch.Tensor, grid: tuple[float, ...] = GRID) -> float:
    """The grid temperature with the lowest MC-averaged NLL, searched coarse to fine.

    Every 25th grid point first, then every 5th around the best of those, then every point around that
    (about 33 NLL evaluations instead of 251; the NLL is smooth and single-dipped in T). Ties go to the
    smaller T.
    """
    nll: dict[int, float] = {}

    def best(indices: range) -> int:
        for i in indices:
            if i not in nll:
                nll[i] = mc_nll(logits, labels, grid[i])
        return min(indices, key=lambda i: (nll[i], i))

    last = len(grid) - 1
    i = best(range(0, last + 1, 25))
    i = best(range(max(0, i - 25), min(last, i + 25) + 1, 5))
    i = best(range(max(0, i - 5), min(last, i + 5) + 1))
    return grid[i]


@torch.no_grad()
def fold_temperature(model: DropoutMLP, temperature: float) -> None:
    """Divide the last layer by ``temperature`` in place: every pass's logits become ``logits / temperature``."""
    model.fc3.weight.div_(temperature)
    model.fc3.bias.div_(temperature)
