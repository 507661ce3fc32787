"""Training-time batch normalisation that disappears at export.

``BatchNormMLP`` trains the §4.6 network with a ``BatchNorm1d`` between each hidden linear layer and its ReLU:
``dropout(relu(bn(fc(x))))``. In eval mode a batch norm is a fixed per-unit affine map,
``gamma * (z - running_mean) / sqrt(running_var + eps) + beta``, so it folds exactly into the linear layer
before it. :meth:`BatchNormMLP.fold` returns a plain :class:`mcnet.DropoutMLP` with the folded weights: the
exported artifact keeps the 784-256-256-10 architecture, and the service needs nothing new.

Dropout stays after the ReLU, so Monte Carlo dropout of the folded network is exactly Monte Carlo dropout of
the trained one with its batch norms in eval mode (the usual MC-dropout practice: normalisation statistics
are fixed at test time, only the dropout masks are random).
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from mcnet import DropoutMLP


def dropout(h: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout, as ``F.dropout``: keep each value with probability ``1 - p`` and scale it by ``1/(1-p)``.

    The mask comes from ``torch.rand`` (the global generator) compared with ``p``: on this CPU that is about five
    times cheaper than ``F.dropout``'s ``bernoulli_``, which took a fifth of a training step.
    """
    if not training or p == 0.0:
        return h
    keep = torch.rand(h.shape, dtype=h.dtype, device=h.device) >= p
    return h * keep.to(h.dtype).mul_(1.0 / (1.0 - p))


class BatchNormMLP(nn.Module):
    """``base`` (a :class:`mcnet.DropoutMLP`) with a batch norm before each hidden ReLU."""

    def __init__(self, base: DropoutMLP, momentum: float = 0.1) -> None:
        super().__init__()
        self.base = base
        self.arch = base.arch
        h1, h2 = base.arch.hidden
        self.bn1 = nn.BatchNorm1d(h1, momentum=momentum)
        self.bn2 = nn.BatchNorm1d(h2, momentum=momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = self.base
        p1, p2 = self.arch.dropout
        h = dropout(F.relu(self.bn1(b.fc1(b.normalise(x)))), p1, training=self.training)
        h = dropout(F.relu(self.bn2(b.fc2(h))), p2, training=self.training)
        return b.fc3(h)

    @torch.no_grad()
    def fold(self) -> DropoutMLP:
        """A new eval-mode :class:`mcnet.DropoutMLP` computing what this module computes in eval mode."""
        folded = copy.deepcopy(self.base)
        for fc, bn in ((folded.fc1, self.bn1), (folded.fc2, self.bn2)):
            assert bn.running_mean is not None and bn.running_var is not None
            scale = bn.weight * torch.rsqrt(bn.running_var + bn.eps)
            fc.weight.mul_(scale[:, None])
            fc.bias.copy_((fc.bias - bn.running_mean) * scale + bn.bias)
        return folded.eval()


def exportable(model: nn.Module) -> DropoutMLP:
    """The plain network to evaluate and export: folded if ``model`` is a :class:`BatchNormMLP`."""
    if isinstance(model, BatchNormMLP):
        return model.fold()
    assert isinstance(model, DropoutMLP)
    return model
