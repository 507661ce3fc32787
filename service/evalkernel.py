"""The deterministic forward pass on CPU, in numpy, and the input check's score in one float64 GEMM.

``/predict`` runs one eval-mode pass per (micro-)batch. On CPU its cost is the 784x256 first
layer plus the input check's projection onto its principal components; the rest is small.
This module is cheaper than ``predict_eval`` + ``InputCheck.score`` (on the 2-core benchmark
VM, one image: about 70 us against 200; 32 images: about 420 us against 740) because

* numpy calls on small arrays cost a few microseconds each, torch calls 8-15;
* the input normalisation is folded into fc1's weights and bias (no elementwise pass);
* the check needs one GEMM, not two. Its rows ``P`` are orthonormal, so with
  ``z = x/255 - mean``::

      |z - P^T P z|^2 = |z|^2 - |P z|^2,   |z|^2 = |x|^2/255^2 - 2 x.mean/255 + |mean|^2

  and ``P z`` and ``x.mean`` are 33 columns of one GEMM over the raw pixels. The two terms
  nearly cancel (the residual is a few percent of ``|z|^2``), so that GEMM runs in float64:
  the score then matches ``InputCheck.score`` (float32 throughout) to its own rounding.

With the C kernel (``service.mcnative``, ``MCSERVE_MC_NATIVE``) the check's scores come from C instead, the same
columns one image at a time: an image's score then never depends on what shares its batch (a GEMM's rounding
does), and a single image costs about 6 us instead of 12.

It knows nothing of HTTP or of batching: ``(B, 784)`` float32 pixels on 0-255 in, rows out.
"""

from __future__ import annotations

import numpy as np
import torch

from mcnet import DropoutMLP
from mcnet.inputcheck import InputCheck

from . import mcnative


def _np(a: torch.Tensor, dtype: type) -> np.ndarray:
    return np.ascontiguousarray(a.detach().cpu().to(torch.float64).numpy(), dtype=dtype)


class EvalKernel:
    """``probabilities | score`` rows for raw 0-255 pixels; the score column is NaN without an input check."""

    def __init__(self, model: DropoutMLP, check: InputCheck | None) -> None:
        w1 = model.fc1.weight.detach().cpu().to(torch.float64)  # (H1, D)
        scale, shift = float(model.in_scale), float(model.in_shift)
        # fc1(x * scale + shift) = x @ (scale W1)^T + (b1 + shift * W1 1)
        self.w1 = _np(scale * w1.T, np.float32)
        self.b1 = _np(model.fc1.bias.detach().cpu().to(torch.float64) + shift * w1.sum(1), np.float32)
        self.w2, self.b2 = _np(model.fc2.weight.T, np.float32), _np(model.fc2.bias, np.float32)
        self.w3, self.b3 = _np(model.fc3.weight.T, np.float32), _np(model.fc3.bias, np.float32)
        self.pixels, self.classes = int(w1.shape[1]), int(self.b3.shape[0])
        self.check = check
        if check is not None:
            mean = check.mean.detach().cpu().to(torch.float64)  # (D,), pixels / 255
            basis = check.components.detach().cpu().to(torch.float64)  # (k, D), orthonormal rows
            # columns: P z = x @ (P^T / 255) - P mean, then -2 x.mean/255 (+ |mean|^2)
            self.components = int(basis.shape[0])
            self.c = _np(torch.cat([basis.T / 255.0, (-2.0 / 255.0) * mean[:, None]], 1), np.float64)
            self.c_bias = _np(torch.cat([-(basis @ mean), (mean @ mean).reshape(1)]), np.float64)
            self.c_t = np.ascontiguousarray(self.c.T)  # the C kernel's layout: one column per row
            self._native = (mcnative.address(self.c_t), mcnative.address(self.c_bias))  # where C reads them

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``(B, C + 1)`` float32: softmax probabilities, then the input check's score (NaN without a check)."""
        x = x.reshape(x.shape[0], self.pixels)
        h = x @ self.w1
        h += self.b1
        np.maximum(h, 0.0, out=h)
        h2 = h @ self.w2
        h2 += self.b2
        np.maximum(h2, 0.0, out=h2)
        logits = h2 @ self.w3
        logits += self.b3
        logits -= logits.max(1, keepdims=True)
        np.exp(logits, out=logits)
        logits /= logits.sum(1, keepdims=True)
        out = np.empty((x.shape[0], self.classes + 1), dtype=np.float32)
        out[:, : self.classes] = logits
        out[:, self.classes] = np.nan if self.check is None else self.scores(x)
        return out

    def scores(self, x: np.ndarray) -> np.ndarray:
        """``(B,)`` input-check scores: mean squared residual (pixels/255) outside the principal subspace."""
        if self.check is None:
            raise ValueError("this artifact has no input check")
        native = mcnative.scores(x.reshape(x.shape[0], self.pixels), *self._native, self.components)
        if native is not None:  # the C kernel's: one image at a time (the same score in any company)
            return native
        x64 = x.reshape(x.shape[0], self.pixels).astype(np.float64)
        a = x64 @ self.c
        a += self.c_bias
        k = self.components
        z2 = np.einsum("ij,ij->i", x64, x64) * (1.0 / 255.0**2) + a[:, k]
        residual = z2 - np.einsum("ij,ij->i", a[:, :k], a[:, :k])
        return np.maximum(residual, 0.0) / self.pixels
