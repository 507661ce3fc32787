"""The MC-dropout implementations the kernel benchmark compares, each returning mean probabilities.

* ``naive_loop`` - module in ``train()`` mode, T full forward passes (d2l.ai's way);
* ``repeat_batch`` - the input repeated T times in one batch (TorchUncertainty's way);
* ``service_kernel`` - the service's ``mc_predict`` (imported from ``service.inference``);
* ``gemm_limit`` - the same matrix multiplications (fc1 once for B images, fc2+fc3 for T*B rows)
  with no dropout and no random numbers: the floor any MC kernel is measured against;
* ``tiled_gemm_limit`` - the floor of any kernel whose answers do not depend on what shares a call: the service
  kernel's own per-tile GEMMs (fc1 per request; per image and block of at most 128 passes, fc2 over its active
  units and fc3, each its own call, as ``service.mckernel`` runs them) with no dropout and no RNG;
* ``active_gemm_limit`` - the floor of the service's active-unit path: fc1 once, then per image a
  (T x K) @ (K x 256) GEMM over its K active hidden units, and fc3, again with no dropout and no RNG.

Both limits compute fc3 with its 10 output rows zero-padded to 16, as the service does: MKL's
GEMM is about 2.5x slower for N = 10 than for N = 16, and a floor should use the faster form.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch

from mcnet import DropoutMLP

Kernel = Callable[[DropoutMLP, torch.Tensor, int, torch.Generator], object]


def naive_loop(model: DropoutMLP, x: torch.Tensor, n_samples: int, generator: torch.Generator) -> torch.Tensor:
    was_training = model.training
    model.train()
    try:
        with torch.inference_mode():
            total = torch.zeros(x.shape[0], model.arch.num_classes)
            for _ in range(n_samples):
                total += torch.softmax(model(x), dim=-1)
            return total / n_samples
    finally:
        model.train(was_training)


def repeat_batch(model: DropoutMLP, x: torch.Tensor, n_samples: int, generator: torch.Generator) -> torch.Tensor:
    with torch.inference_mode():
        logits = model(x.repeat(n_samples, 1), mc=True)
        return torch.softmax(logits.view(n_samples, x.shape[0], -1), dim=-1).mean(dim=0)


def _padded_fc3(model: DropoutMLP) -> tuple[torch.Tensor, torch.Tensor]:
    fc3 = model.fc3
    rows = -(-fc3.out_features // 16) * 16
    weight = fc3.weight.detach().new_zeros(rows, fc3.in_features)
    weight[: fc3.out_features] = fc3.weight.detach()
    bias = fc3.bias.detach().new_zeros(rows)
    bias[: fc3.out_features] = fc3.bias.detach()
    return weight, bias


class GemmLimit:
    """fc1 (+ReLU) once for B images, then fc2 (+ReLU) and fc3 on a prepared T*B x 256 input.

    The T*B hidden rows and both outputs are allocated once per shape outside the timed call and
    the GEMMs write into them (``addmm(out=...)``, ReLU in place), so the limit holds only the
    matrix multiplications with their bias and ReLU: no dropout, no RNG, no allocation.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, int], tuple[torch.Tensor, ...]] = {}

    def __call__(self, model: DropoutMLP, x: torch.Tensor, n_samples: int, generator: torch.Generator) -> torch.Tensor:
        key = (n_samples, x.shape[0])
        with torch.inference_mode():
            h1 = model.hidden1(x)
            buffers = self._buffers.get(key)
            if buffers is None:
                rows = h1.repeat(n_samples, 1).contiguous()
                h2 = rows.new_empty(rows.shape[0], model.fc2.out_features)
                w3, b3 = _padded_fc3(model)
                logits = rows.new_empty(rows.shape[0], w3.shape[0])
                buffers = self._buffers[key] = (rows, h2, logits, w3, b3)
            rows, h2, logits, w3, b3 = buffers
            torch.addmm(model.fc2.bias, rows, model.fc2.weight.t(), out=h2).relu_()
            return torch.addmm(b3, h2, w3.t(), out=logits)


class ActiveGemmLimit:
    """fc1 (+ReLU) once, then per image (T x K) @ (K x 256) over its K active units (+ReLU), then fc3.

    The floor of the service's active-unit path. The active values repeated T times, the gathered
    weights and the outputs are prepared once per input outside the timed call; what is timed is
    fc1, one batched GEMM with bias and ReLU, and fc3: no dropout, no RNG, no gather, no allocation.
    """

    def __init__(self) -> None:
        self._buffers: dict[tuple[int, int, int], tuple[torch.Tensor, ...]] = {}

    def __call__(self, model: DropoutMLP, x: torch.Tensor, n_samples: int, generator: torch.Generator) -> torch.Tensor:
        key = (n_samples, x.shape[0], x.data_ptr())
        with torch.inference_mode():
            h1 = model.hidden1(x)
            buffers = self._buffers.get(key)
            if buffers is None:
                batch, width2 = x.shape[0], model.fc2.out_features
                active = max(int((h1 > 0).sum(dim=1).max()), 1)
                values, units = torch.topk(h1, active, dim=1, sorted=False)
                rows = values.unsqueeze(1).expand(batch, n_samples, active).contiguous()
                weights = model.fc2.weight.t().contiguous().index_select(0, units.view(-1))
                w3, b3 = _padded_fc3(model)
                h2 = rows.new_empty(batch, n_samples, width2)
                logits = rows.new_empty(batch * n_samples, w3.shape[0])
                buffers = (rows, weights.view(batch, active, width2), h2, logits, w3, b3)
                self._buffers[key] = buffers
            rows, weights, h2, logits, w3, b3 = buffers
            torch.baddbmm(model.fc2.bias, rows, weights, out=h2).relu_()
            return torch.addmm(b3, h2.view(-1, h2.shape[-1]), w3.t(), out=logits)


class TiledGemmLimit:
    """fc1 per request, then for every tile (one image's passes, at most 128) its own fc2 GEMM over the image's
    active units (+bias, ReLU) and fc3 GEMM: the products the tiled service kernel must run one tile at a time,
    because a batched GEMM's result for one row can depend on the other rows. The 0/1 masks, gathered weights
    and outputs are prepared once per input outside the timed call; no RNG, no reductions, no allocation."""

    def __init__(self) -> None:
        self._tiles: dict[tuple[int, int, int], list[tuple[torch.Tensor, ...]]] = {}

    def __call__(self, model: DropoutMLP, x: torch.Tensor, n_samples: int, generator: torch.Generator) -> object:
        from service import mckernel, mcweights

        key = (n_samples, x.shape[0], x.data_ptr())
        w = mcweights.weights_of(model)
        pixels = torch.from_numpy(x.reshape(x.shape[0], -1).numpy().astype("float32"))
        tiles = self._tiles.get(key)
        if tiles is None:
            request = mckernel.prepare(model, pixels.numpy(), n_samples, 0, w)
            tiles = []
            for tile in mckernel.tiles_of(request):
                lo, hi = int(request.offsets[tile.image]), int(request.offsets[tile.image + 1])
                t, k = tile.passes, hi - lo
                gathered = torch.from_numpy(w.fc2_t[request.units[lo:hi]] * request.values[lo:hi, None])
                mask = (torch.rand(t, k, generator=generator) > 0.2).float()
                tiles.append((mask, gathered, torch.empty(t, w.fc2_t.shape[1]), torch.empty(t, w.fc3_t.shape[1])))
            self._tiles[key] = tiles
        h1 = torch.mm(pixels, w.fc1_t_torch)  # per request, as the service does
        for mask, gathered, h2, z in tiles:
            torch.addmm(w.fc2_bias_torch, mask, gathered, out=h2).relu_()
            torch.addmm(w.fc3_bias_torch, h2, w.fc3_t_torch, out=z)
        return h1


def load_service_kernel(chunk_size: int) -> tuple[Kernel | None, str | None]:
    """The service's ``mc_predict`` bound to ``chunk_size``, or ``(None, why)`` if it cannot be imported."""
    try:
        inference = importlib.import_module("service.inference")
        mc_predict = inference.mc_predict
    except Exception as exc:  # the service package is built in parallel; record why it is missing
        return None, f"service.inference.mc_predict unavailable: {exc!r}"

    def kernel(model: DropoutMLP, x: torch.Tensor, n_samples: int, generator: torch.Generator) -> object:
        with torch.inference_mode():
            return mc_predict(model, x, n_samples, generator, chunk_size)

    return kernel, None


def load_eval_predict() -> tuple[Callable[[DropoutMLP, torch.Tensor], object] | None, str | None]:
    """The service's ``predict_eval``; falls back to ``None`` with the reason."""
    try:
        inference = importlib.import_module("service.inference")
        return inference.predict_eval, None
    except Exception as exc:
        return None, f"service.inference.predict_eval unavailable: {exc!r}"


def eval_forward(model: DropoutMLP, x: torch.Tensor) -> torch.Tensor:
    """Plain eval-mode softmax forward, used when the service's ``predict_eval`` is unavailable."""
    with torch.inference_mode():
        return torch.softmax(model(x), dim=-1)


def rows_budget_ok(n_samples: int, batch: int, max_rows: int) -> bool:
    """True when a T x B matrix of rows fits the memory budget the benchmark allows."""
    return n_samples * batch <= max_rows
