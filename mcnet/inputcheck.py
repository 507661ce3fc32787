"""The input check: is this image from the pictures the model was trained on at all?

Monte Carlo dropout's mutual information flags images the network is unsure about
(digits, odd garments). It is not a reliable detector of *garbage*: whether an
inverted photo or random noise makes the dropout passes disagree depends on accidents
of the learned weights (a batch-normalised network answers both with near-certainty).
So the artifact carries a second, model-independent check in pixel space:

* the mean training image and the top ``k`` principal components of the training images
  (pixels scaled to 0-1), fitted on the training split;
* an image's score is its mean squared residual after projecting it onto those components:
  how much of it the garment subspace cannot explain;
* the threshold is a quantile of the validation images' scores (a 1 % false-flag rate
  on held-out Fashion-MNIST by default).

Stored as ``input_check.safetensors`` (no pickle) with its own sha256 in the manifest's
``input_check`` section; artifacts without the section load and serve without the check.
Imports only torch, safetensors, numpy (which torch's ``.numpy()`` interop needs anyway) and the standard
library, like ``mcnet``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from mcnet import PIXEL_MAX, ArtifactError, sha256_file
from mcnet.artifact import verified_file

FILE = "input_check.safetensors"
METHOD = "pca_residual"


@dataclass(frozen=True)
class InputCheck:
    """Principal-subspace residual of pixel images; ``score`` > ``threshold`` flags an input as unlike training."""

    mean: torch.Tensor  # (D,) mean training image, pixels / 255
    components: torch.Tensor  # (k, D) orthonormal rows: the top-k principal directions
    threshold: float  # flag when the score exceeds this
    quantile: float  # the validation quantile the threshold is
    # float32 numpy copies for score(): a numpy operation on one image costs ~2-5 us here, a torch one ~8-13 us,
    # and the service scores every request (24 against 60 us per call for one image, measured)
    _mean: np.ndarray = field(init=False, repr=False, compare=False)
    _basis: np.ndarray = field(init=False, repr=False, compare=False)
    _basis_t: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        basis = self.components.detach().cpu().to(torch.float32).numpy()
        object.__setattr__(self, "_mean", self.mean.detach().cpu().to(torch.float32).numpy())
        object.__setattr__(self, "_basis", basis)
        object.__setattr__(self, "_basis_t", np.ascontiguousarray(basis.T))

    def score(self, images: torch.Tensor) -> torch.Tensor:
        """``(B,)`` mean squared residual (0-1 pixel scale) of CPU ``(B, 28, 28)`` or ``(B, 784)`` images on 0-255."""
        x = images.detach().reshape(images.shape[0], -1).to(torch.float32).numpy()
        z = x * np.float32(1.0 / PIXEL_MAX) - self._mean
        residual = z - (z @ self._basis_t) @ self._basis
        return torch.from_numpy(np.einsum("ij,ij->i", residual, residual) / np.float32(residual.shape[1]))

    def flags(self, scores: torch.Tensor) -> torch.Tensor:
        return scores > self.threshold

    @classmethod
    @torch.no_grad()
    def fit(cls, train_images: torch.Tensor, val_images: torch.Tensor, components: int, quantile: float) -> InputCheck:
        """Principal components of ``train_images`` (float64 covariance, eigh); threshold from ``val_images``."""
        x = train_images.reshape(train_images.shape[0], -1).to(torch.float64) / PIXEL_MAX
        mean = x.mean(0)
        centred = x - mean
        _, vectors = torch.linalg.eigh(centred.T @ centred)  # ascending eigenvalues; deterministic on one machine
        top = vectors[:, -components:].flip(1).T.contiguous()
        draft = cls(mean.float(), top.float(), float("inf"), quantile)
        threshold = float(torch.quantile(draft.score(val_images).to(torch.float64), quantile))
        return cls(draft.mean, draft.components, threshold, quantile)

    def save(self, directory: Path) -> dict[str, Any]:
        """Write :data:`FILE` into ``directory``; returns the manifest's ``input_check`` section."""
        path = directory / FILE
        tensors = {"mean": self.mean.detach().cpu().contiguous(), "components": self.components.detach().cpu()}
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(path))
        return {
            "method": METHOD,
            "file": FILE,
            "sha256": sha256_file(path),
            "components": int(self.components.shape[0]),
            "threshold": self.threshold,
            "quantile": self.quantile,
            "rule": (
                f"flag an image whose mean squared residual (pixels/255) after projection onto the top "
                f"{self.components.shape[0]} principal components of the training images exceeds the "
                f"{self.quantile * 100:g}th percentile of the validation images' residuals"
            ),
        }


def load_input_check(directory: Path | str, manifest: Mapping[str, Any]) -> InputCheck | None:
    """The verified check of an artifact read by ``mcnet.read_manifest``; None when it has none."""
    section = manifest.get("input_check")
    if section is None:
        return None
    mpath = Path(directory) / "manifest.json"
    try:
        method, name, expected = str(section["method"]), str(section["file"]), str(section["sha256"])
        threshold, quantile, k = float(section["threshold"]), float(section["quantile"]), int(section["components"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(mpath, f"manifest input_check section is malformed ({exc!r})") from None
    if method != METHOD:
        raise ArtifactError(mpath, f"input_check method {method!r} is not supported (this build reads {METHOD!r})")
    if not threshold >= 0.0:
        raise ArtifactError(mpath, "input_check threshold must be a non-negative number")
    path = verified_file(directory, name, expected, "input check")
    try:
        tensors = load_file(str(path))
        mean, components = tensors["mean"].float(), tensors["components"].float()
    except Exception as exc:  # safetensors raises several types for malformed files
        raise ArtifactError(path, f"input check file is not valid ({exc})") from None
    dim = int(mean.numel())
    if mean.dim() != 1 or components.dim() != 2 or tuple(components.shape) != (k, dim):
        raise ArtifactError(path, f"input check tensors have the wrong shapes (mean {tuple(mean.shape)}, "
                            f"components {tuple(components.shape)}, expected ({dim},) and ({k}, {dim}))")  # fmt: skip
    return InputCheck(mean, components, threshold, quantile)
