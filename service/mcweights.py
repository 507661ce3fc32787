"""The MC kernel's layouts of a model's weights (numpy, float32), derived once and rebuilt when a weight changes.

fc1 has the input normalisation folded in; fc2's rows are scaled by the first layer's 1/keep and fc3's by the
second's, so the kernel's GEMMs need no ``alpha``; fc3's 10 outputs are padded to 16 (MKL's GEMM is about 2.5x
slower with N = 10 than with N = 16) with logit -1e30, whose probability is exactly 0.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mcnet import DropoutMLP

from .inference import _plan
from .mcrandom import Layout, lane_layout, row_layout

_PAD_ROWS = 16  # fc3's outputs padded to a multiple of this
_PAD_LOGIT = -1e30  # fc3's padded outputs: exp underflows to exactly 0, and 0 * log p stays 0 (finite)


@dataclass(frozen=True)
class Weights:
    """numpy layouts of the weights, derived once per model (and again whenever a weight changes)."""

    key: tuple[int, ...]
    fc1_t: np.ndarray  # (D, H1) with the input normalisation folded in: h1 = relu(x @ fc1_t + fc1_bias)
    fc1_bias: np.ndarray
    fc2_t: np.ndarray  # (H1, H2): row j is what hidden unit j adds to every fc2 output, times 1/keep1
    fc2_bias: np.ndarray
    fc3_t: np.ndarray  # (H2, C_pad) times 1/keep2, zero columns past the C real classes
    fc3_bias: np.ndarray  # (C_pad,), _PAD_LOGIT past the C real classes
    layout1: Layout
    layout2: Layout
    classes: int

    def __post_init__(self) -> None:  # torch views of the same memory, for the GEMMs MKL runs
        for name in ("fc1_t", "fc2_t", "fc2_bias", "fc3_t", "fc3_bias"):
            object.__setattr__(self, name + "_torch", torch.from_numpy(getattr(self, name)))

    fc1_t_torch: torch.Tensor = field(init=False, repr=False, compare=False)
    fc2_t_torch: torch.Tensor = field(init=False, repr=False, compare=False)
    fc2_bias_torch: torch.Tensor = field(init=False, repr=False, compare=False)
    fc3_t_torch: torch.Tensor = field(init=False, repr=False, compare=False)
    fc3_bias_torch: torch.Tensor = field(init=False, repr=False, compare=False)


_WEIGHTS: weakref.WeakKeyDictionary[DropoutMLP, Weights] = weakref.WeakKeyDictionary()


def _f32(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().cpu().to(torch.float64).numpy(), dtype=np.float32)


def weights_of(model: DropoutMLP) -> Weights:
    """The model's layouts, rebuilt when a weight was replaced or changed in place (its version moved)."""
    layers: dict[str, Any] = model._modules
    params = [layers[name]._parameters[kind] for name in ("fc1", "fc2", "fc3") for kind in ("weight", "bias")]
    key = tuple(v for t in params if t is not None for v in (t.data_ptr(), t._version))
    cached = _WEIGHTS.get(model)
    if cached is not None and cached.key == key:
        return cached
    plan1, plan2 = (_plan(p) for p in model.arch.dropout)
    with torch.inference_mode():
        w1 = model.fc1.weight.detach().cpu().to(torch.float64)
        scale, shift = float(model.in_scale), float(model.in_shift)  # x_norm = x * scale + shift
        fc3 = model.fc3
        padded = -(-fc3.out_features // _PAD_ROWS) * _PAD_ROWS
        w3 = torch.zeros(fc3.in_features, padded, dtype=torch.float64)
        w3[:, : fc3.out_features] = fc3.weight.detach().cpu().t().to(torch.float64) / plan2.keep
        b3 = torch.full((padded,), _PAD_LOGIT, dtype=torch.float64)
        b3[: fc3.out_features] = fc3.bias.detach().cpu().to(torch.float64)
        weights = Weights(
            key=key,
            fc1_t=_f32((w1 * scale).t()),
            fc1_bias=_f32(model.fc1.bias.detach().cpu().to(torch.float64) + shift * w1.sum(dim=1)),
            fc2_t=_f32(model.fc2.weight.detach().cpu().to(torch.float64).t() / plan1.keep),
            fc2_bias=_f32(model.fc2.bias),
            fc3_t=_f32(w3),
            fc3_bias=_f32(b3),
            layout1=lane_layout(plan1),
            layout2=row_layout(plan2),
            classes=fc3.out_features,
        )
    _WEIGHTS[model] = weights
    return weights
