"""Pure torch inference: the deterministic pass and the vectorised Monte Carlo dropout kernel.

Nothing here knows about HTTP. The model always stays in ``eval()``; dropout is
applied by this module, per call, with masks drawn from a caller-owned
``torch.Generator`` so that a seeded request is reproducible and concurrent
callers never share random state.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mcnet import DropoutMLP

from .mcresult import MCLists as MCLists  # re-exported: importers of the MC result types find them here too
from .mcresult import MCResult as MCResult


def predict_eval(model: DropoutMLP, x: torch.Tensor) -> torch.Tensor:
    """Deterministic class probabilities ``(B, C)``: dropout off, model untouched."""
    if model.training:
        raise RuntimeError("the served model must stay in eval() mode")
    with torch.inference_mode():
        return F.softmax(model(x), dim=-1)


_WORD_LOW, _WORD_HIGH = -(2**63), 2**63 - 1  # full int64 range: 64 uniformly random bits per word
_BIT_SHIFTS = torch.arange(8, dtype=torch.int64).unsqueeze(1)  # (8, 1) against (1, words)
_BYTE_LSBS = 0x0101010101010101  # the lowest bit of each of a word's 8 bytes
_THRESHOLD_BITS = 16  # a rate other than 0 or 1/2 is quantised to a multiple of 2**-16


@dataclass(frozen=True)
class _MaskPlan:
    """How one dropout layer's keep-mask is drawn; ``keep`` is the exact keep probability used."""

    kind: str  # "none" (p = 0), "bit" (p = 1/2: one random bit per unit), "threshold" (16-bit comparison)
    keep: float
    threshold: int = 0  # a signed 16-bit value r is kept when r >= threshold

    def words(self, n: int) -> int:
        """Random 64-bit words needed for ``n`` mask entries."""
        if self.kind == "bit":
            return (n + 63) // 64
        if self.kind == "threshold":
            return (n + 3) // 4
        return 0

    def mask(self, words: torch.Tensor, n: int, dtype: torch.dtype = torch.bool) -> torch.Tensor:
        """Flat 0/1 keep-mask of ``n`` entries from ``self.words(n)`` random words, as ``dtype``.

        A float mask is written directly by the comparison: multiplying by it is much faster
        than by a bool mask, which the multiplication would first convert to float.
        """
        if self.kind == "bit":
            # shift k, then keep bit 0 of every byte: 8 x 8 whole bytes of 0/1 per word, one per unit
            bits = ((words.unsqueeze(0) >> _BIT_SHIFTS.to(words.device)) & _BYTE_LSBS).view(torch.uint8).view(-1)[:n]
            return bits.view(torch.bool) if dtype == torch.bool else bits.to(dtype)
        r = words.view(torch.int16)[:n]
        return torch.ge(r, self.threshold, out=torch.empty(n, dtype=dtype, device=words.device))


def random_words(n: int, generator: torch.Generator, device: torch.device) -> torch.Tensor:
    """``n`` uniformly random 64-bit words (int64) on ``device``, fully determined by ``generator``'s state.

    On CPU the words come from numpy's SFC64 (a small-state counter-based generator that passes
    PractRand and BigCrush) seeded with one 64-bit draw from ``generator``: it fills a buffer about
    twice as fast as torch's CPU generator (Mersenne Twister), and the mask RNG is the largest cost
    of the kernel after the GEMMs. On CUDA, torch's device generator (Philox) fills it in place.
    """
    if device.type == "cpu":
        seed = int(torch.randint(_WORD_LOW, _WORD_HIGH, (), generator=generator, dtype=torch.int64))
        raw = np.random.SFC64(seed & 0xFFFF_FFFF_FFFF_FFFF).random_raw(n)
        return torch.from_numpy(raw.view(np.int64))
    words = torch.empty(n, dtype=torch.int64, device=device)
    return words.random_(_WORD_LOW, _WORD_HIGH, generator=generator)


def effective_dropout(p: float) -> float:
    """The dropout rate ``mc_predict`` actually applies for a nominal rate ``p``.

    0 and 1/2 are exact; any other rate is rounded to the nearest multiple of 2**-16
    (0.2 -> 13107/65536 = 0.19999695). Kept units are scaled by the exact 1/keep, so
    every pass stays an unbiased inverted dropout.
    """
    return 1.0 - _plan(p).keep


def _plan(p: float) -> _MaskPlan:
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout rate must be in [0, 1), got {p}")
    if p == 0.0:
        return _MaskPlan("none", 1.0)
    if p == 0.5:
        return _MaskPlan("bit", 0.5)
    scale = 1 << _THRESHOLD_BITS
    drop = min(max(round(p * scale), 1), scale - 1)
    return _MaskPlan("threshold", 1.0 - drop / scale, threshold=drop - scale // 2)


# The active-unit path gathers, per image, the fc2 weight rows of its active hidden1 units. It pays
# when few units are active (trained models: ~16 % of 256 on Fashion-MNIST) and each image has enough
# stochastic passes per chunk to reuse its gathered weights; otherwise the dense path is cheaper.
_SPARSE_MAX_FRACTION = 0.5
_SPARSE_MIN_PASSES = 16
_PAD_ROWS = 16  # fc3's 10 outputs padded to 16: MKL's GEMM is ~2.5x slower with N = 10 than with N = 16


@dataclass(frozen=True)
class _Prepared:
    """Weight layouts derived once per model (and again whenever a weight changes)."""

    key: tuple[int, ...]
    fc2_t: torch.Tensor  # (H1, H2) contiguous: row j holds what hidden unit j adds to every fc2 output
    fc3_weight: torch.Tensor  # (C_pad, H2), zero rows below the C real classes
    fc3_bias: torch.Tensor  # (C_pad,)


_PREPARED: weakref.WeakKeyDictionary[DropoutMLP, _Prepared] = weakref.WeakKeyDictionary()


def _prepared(model: DropoutMLP) -> _Prepared:
    params = (model.fc2.weight, model.fc3.weight, model.fc3.bias)
    key = tuple(v for t in params for v in (t.data_ptr(), t._version))
    cached = _PREPARED.get(model)
    if cached is not None and cached.key == key:
        return cached
    with torch.inference_mode():
        fc3 = model.fc3
        padded = -(-fc3.out_features // _PAD_ROWS) * _PAD_ROWS
        weight = fc3.weight.new_zeros(padded, fc3.in_features)
        weight[: fc3.out_features] = fc3.weight
        bias = fc3.bias.new_zeros(padded)
        bias[: fc3.out_features] = fc3.bias
        prepared = _Prepared(key, model.fc2.weight.t().contiguous(), weight, bias)
    _PREPARED[model] = prepared
    return prepared


def _use_sparse(active: int, width: int, passes: int) -> bool:
    """Whether the active-unit path is cheaper: few active units, and enough passes per image and chunk."""
    return active <= _SPARSE_MAX_FRACTION * width and passes >= _SPARSE_MIN_PASSES


def mc_predict_torch(
    model: DropoutMLP,
    x: torch.Tensor,
    n_samples: int,
    generator: torch.Generator,
    chunk_size: int = 8192,
    sparse: bool | None = None,
) -> MCResult:
    """Monte Carlo dropout in torch, for one request on any device (the service runs it on CUDA).

    ``hidden1`` (everything before the first dropout) runs once per image. The T
    stochastic passes of the rest run as batched tensor operations over blocks of
    at most ``chunk_size`` rows (t >= 1 passes of every image per block), reduced
    with running sums of p, p^2 and p*log p so memory stays bounded for any T x B.

    Masks come from one ``random_words`` call of 64-bit words per block: one bit per
    unit for p = 1/2, a 16-bit comparison for other rates (see
    ``effective_dropout``). They are applied by multiplying with a float 0/1 tensor
    and the 1/keep scales are folded into the GEMMs (``alpha=``).

    Active-unit path (``sparse``; None chooses by cost): a hidden1 unit that the ReLU
    zeroed contributes nothing to fc2 whatever its dropout mask, so each image's
    passes only need its K active units: masks for K instead of H1 units and a
    batched (t x K) @ (K x H2) GEMM per image instead of (t x H1) @ (H1 x H2). The
    result is the same computation with the exact zeros skipped.
    """
    if model.training:
        raise RuntimeError("the served model must stay in eval() mode")
    if n_samples < 1:
        raise ValueError("n_samples must be >= 1")
    plan1, plan2 = (_plan(p) for p in model.arch.dropout)
    prep = _prepared(model)
    fc2 = model.fc2
    with torch.inference_mode():
        h1 = model.hidden1(x)  # (B, H1), deterministic
        batch, width1 = h1.shape
        width2, classes = fc2.out_features, model.fc3.out_features
        per_chunk = max(1, chunk_size // max(batch, 1))
        active = max(int((h1 > 0).sum(dim=1).max()), 1) if batch else 1
        if sparse is None:
            sparse = _use_sparse(active, width1, min(per_chunk, n_samples))
        if sparse:  # every active unit of every image; an image with fewer is padded with exact zeros
            values, units = torch.topk(h1, active, dim=1, sorted=False)  # (B, K)
            weights = prep.fc2_t.index_select(0, units.view(-1)).view(batch, active, width2)
        sum_p = torch.zeros(batch, classes, dtype=torch.float64, device=h1.device)
        sum_p2 = torch.zeros(batch, classes, dtype=torch.float64, device=h1.device)
        sum_neg_plogp = torch.zeros(batch, dtype=torch.float64, device=h1.device)
        done = 0
        while done < n_samples:
            t = min(per_chunk, n_samples - done)
            rows = t * batch
            n1, n2 = rows * (active if sparse else width1), rows * width2
            w1, w2 = plan1.words(n1), plan2.words(n2)
            words = random_words(w1 + w2, generator, h1.device)  # one RNG call per chunk
            if sparse:  # rows ordered (image, pass)
                h = values.unsqueeze(1).expand(batch, t, active)
                if plan1.kind != "none":  # a float 0/1 keep-mask times the active values, in place
                    h = plan1.mask(words[:w1], n1, h1.dtype).view(batch, t, active).mul_(h)
                h2 = torch.baddbmm(fc2.bias, h, weights, alpha=1.0 / plan1.keep).view(rows, width2)
            else:  # rows ordered (pass, image)
                h = h1.unsqueeze(0).expand(t, batch, width1)
                if plan1.kind != "none":
                    h = plan1.mask(words[:w1], n1, h1.dtype).view(t, batch, width1).mul_(h)
                h2 = torch.addmm(fc2.bias, h.reshape(rows, width1), prep.fc2_t, alpha=1.0 / plan1.keep)
            h2.relu_()
            if plan2.kind != "none":
                h2.mul_(plan2.mask(words[w1:], n2, h2.dtype).view(rows, width2))
            logits = torch.addmm(prep.fc3_bias, h2, prep.fc3_weight.t(), alpha=1.0 / plan2.keep)[:, :classes]
            log_p = F.log_softmax(logits, dim=-1)
            log_p = log_p.view(batch, t, classes) if sparse else log_p.view(t, batch, classes).transpose(0, 1)
            p = log_p.exp()
            p64 = p.to(torch.float64)
            sum_p += p64.sum(dim=1)
            sum_p2 += (p64 * p64).sum(dim=1)
            sum_neg_plogp -= (p * log_p).sum(dim=-1).to(torch.float64).sum(dim=1)
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


def mc_predict(
    model: DropoutMLP, x: torch.Tensor, n_samples: int, generator: torch.Generator, chunk_size: int = 8192
) -> MCResult:
    """MC dropout summaries of ``n_samples`` passes over ``x`` with masks determined by ``generator``'s state.

    On CPU: the tiled numpy kernel the service runs (``service.mckernel``), seeded with one 64-bit draw from
    ``generator``, in calls of at most ``chunk_size`` rows. On CUDA: :func:`mc_predict_torch`.
    """
    if x.device.type != "cpu" or model.fc1.weight.device.type != "cpu":
        return mc_predict_torch(model, x, n_samples, generator, chunk_size)
    from .mcrequest import mc_tiled

    seed = int(torch.randint(_WORD_LOW, _WORD_HIGH, (), generator=generator, dtype=torch.int64)) & (2**64 - 1)
    return mc_tiled(model, x.numpy(), n_samples, seed, chunk_size)
