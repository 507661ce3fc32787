"""Monte Carlo dropout in tiles: the kernel every MC request runs through, alone or sharing calls with others.

A request's work is cut into **tiles**: one image's passes ``[j * PASS_BLOCK, ...)`` (one tile per image for
T <= PASS_BLOCK). A kernel call (:func:`run_tiles`) computes any set of tiles, from any requests, and returns
each tile's partial sums of p, p^2 and -p log p over its passes. What a tile computes depends on that tile
alone, never on what shares the call, so a seeded request's answer is bit-identical whatever company it
keeps and however its tiles are spread over calls:

* **its own random stream**: each tile's masks come from an SFC64 generator whose state is a hash of
  (request seed, image, block); nothing is drawn from a generator that other tiles also advance;
* **its own matrix products**: BLAS results for a row can depend on the other rows of the same call
  (MKL picks kernels by shape), so every tile runs its own two GEMMs, of a shape fixed by the tile
  (``t`` passes x its own ``K`` active units); only elementwise and row-wise operations, whose result per
  row does not depend on the others, run over the whole call;
* **a fixed reduction order**: partial sums are combined per image in block order at the end
  (:func:`summarise`), whatever order the calls finished in.

The active-unit form: a hidden unit the first ReLU zeroed contributes nothing to fc2 whatever its dropout
mask, so a pass only needs the image's K active units (about 16 % of 256 on the trained model). The
image's active values are folded into its gathered fc2 rows once per call (``W' = v[:, None] * fc2[units]``),
so a pass's fc2 input is its 0/1 keep-mask itself: ``h2 = bias + (mask @ W') / keep``.
"""

from __future__ import annotations

import itertools
import math
import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mcnet import DropoutMLP

from .inference import MCResult, _MaskPlan, _plan

PASS_BLOCK = 128  # passes per tile: enough rows per GEMM to reuse the gathered weights, small enough to interleave
_PAD_ROWS = 16  # fc3's 10 outputs padded to 16: MKL's GEMM is ~2.5x slower with N = 10 than with N = 16
_MASK64 = (1 << 64) - 1
_LOCAL = threading.local()  # per worker thread: the SFC64 object and the scratch buffers
_TINY = 1e-300
_PAD_LOGIT = -1e30  # fc3's padded outputs: exp underflows to exactly 0, and 0 * log p stays 0 (finite)


def _splitmix64(z: int) -> int:
    z = (z + 0x9E3779B97F4A7C15) & _MASK64
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & _MASK64
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & _MASK64
    return z ^ (z >> 31)


_GAMMA, _MIX1, _MIX2 = np.uint64(0x9E3779B97F4A7C15), np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_S30, _S27, _S31 = np.uint64(30), np.uint64(27), np.uint64(31)


def _splitmix64_array(z: np.ndarray) -> np.ndarray:
    """:func:`_splitmix64` elementwise on uint64 (array arithmetic wraps modulo 2**64, as the scalar masks)."""
    z = z + _GAMMA
    z = (z ^ (z >> _S30)) * _MIX1
    z = (z ^ (z >> _S27)) * _MIX2
    return z ^ (z >> _S31)


def tile_states(keys: list[tuple[int, int, int]]) -> np.ndarray:
    """The SFC64 states (a, b, c, counter), ``(n, 4)`` uint64, of tiles ``(seed, image, block)``: splitmix64
    chained over the three numbers, then three more splitmix64 steps for a, b and c."""
    out = np.empty((len(keys), 4), dtype=np.uint64)
    if len(keys) >= 8:  # numpy beats the Python loop from a handful of tiles on; both give the same numbers
        seeds, images, blocks = (np.array(column, dtype=np.uint64) for column in zip(*keys, strict=True))
        a = _splitmix64_array(_splitmix64_array(_splitmix64_array(_splitmix64_array(seeds) ^ images) ^ blocks))
        b = _splitmix64_array(a)
        out[:, 0], out[:, 1], out[:, 2], out[:, 3] = a, b, _splitmix64_array(b), 1
        return out
    for q, (seed, image, block) in enumerate(keys):
        first = _splitmix64(_splitmix64(_splitmix64(_splitmix64(seed & _MASK64) ^ image) ^ block))
        second = _splitmix64(first)
        out[q] = (first, second, _splitmix64(second), 1)
    return out


@dataclass(frozen=True)
class _Layout:
    """How one dropout layer's keep-mask entries are cut from 64-bit words."""

    plan: _MaskPlan
    lanes: int  # mask entries per word: 4 16-bit lanes (threshold), 8 8-bit lanes (rate 1/2, layer 1), or 64 bits
    dtype: Any  # numpy lane dtype (np.int8, np.int16) for lane layouts; None for bits
    threshold: int  # a lane value r is kept when r >= threshold

    def words(self, n: int) -> int:
        return 0 if self.plan.kind == "none" else -(-n // self.lanes)


def _lane_layout(plan: _MaskPlan) -> _Layout:
    """Ragged rows (layer 1: K units per image): one lane per entry, in row-major order."""
    if plan.kind == "bit":
        return _Layout(plan, 8, np.int8, 0)  # int8 >= 0 with probability exactly 1/2
    return _Layout(plan, 4, np.int16, plan.threshold)


def _row_layout(plan: _MaskPlan) -> _Layout:
    """Fixed-width rows (layer 2): whole words per row, one bit per unit for rate 1/2."""
    if plan.kind == "bit":
        return _Layout(plan, 64, None, 0)
    return _Layout(plan, 4, np.int16, plan.threshold)


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
    layout1: _Layout
    layout2: _Layout
    classes: int

    def __post_init__(self) -> None:  # torch views of the same memory, for the GEMMs MKL runs
        for name in ("fc1_t", "fc2_bias", "fc3_t", "fc3_bias"):
            object.__setattr__(self, name + "_torch", torch.from_numpy(getattr(self, name)))

    fc1_t_torch: torch.Tensor = field(init=False, repr=False, compare=False)
    fc2_bias_torch: torch.Tensor = field(init=False, repr=False, compare=False)
    fc3_t_torch: torch.Tensor = field(init=False, repr=False, compare=False)
    fc3_bias_torch: torch.Tensor = field(init=False, repr=False, compare=False)


_WEIGHTS: weakref.WeakKeyDictionary[DropoutMLP, Weights] = weakref.WeakKeyDictionary()


_ALIGN = 64  # bytes: every GEMM operand starts on a 64-byte boundary (see aligned_empty)


_FLOATS_PER_LINE = _ALIGN // 4
_GAPS: dict[Any, np.ndarray] = {d: np.zeros(_ALIGN, dtype=d) for d in (np.int8, np.int16)}
_SIMD_ROWS = 64  # each tile's logits start at a multiple of this many rows (see _softmax_sums)


def aligned_empty(shape: tuple[int, ...], dtype: Any = np.float32) -> np.ndarray:
    """An uninitialised array starting on a 64-byte boundary (torch's CPU allocator aligns to 64 bytes).

    BLAS kernels may peel a few elements to reach aligned loads, and then add in another order: the same
    product could round differently depending on where its operands happen to sit in memory. Every operand
    of the kernel's GEMMs therefore starts at the same alignment, whatever else shares its buffer.
    """
    array = torch.empty(shape, dtype=_TORCH_DTYPES[np.dtype(dtype)]).numpy()
    if array.size and array.ctypes.data % _ALIGN:  # a guard: torch's allocator always aligns
        raise RuntimeError("torch returned a buffer that is not 64-byte aligned")
    return array


_TORCH_DTYPES = {np.dtype(np.float32): torch.float32, np.dtype(np.float64): torch.float64}


def _scratch(name: str, shape: tuple[int, ...]) -> np.ndarray:
    """A 64-byte-aligned float32 work array of ``shape``, reused by this thread's kernel calls (grown as needed).

    Only for arrays that never leave this module's functions; allocating them per call costs more than a small call.
    """
    n = math.prod(shape)
    try:
        buffers = _LOCAL.scratch
    except AttributeError:
        buffers = _LOCAL.scratch = {}
    buffer = buffers.get(name)
    if buffer is None or buffer.size < n:
        buffer = buffers[name] = aligned_empty((max(n, 1 << 16),))
    return buffer[:n].reshape(shape)


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
            layout1=_lane_layout(plan1),
            layout2=_row_layout(plan2),
            classes=fc3.out_features,
        )
    _WEIGHTS[model] = weights
    return weights


@dataclass(frozen=True)
class Prepared:
    """One request's deterministic part: every image's active hidden units after fc1 and its ReLU."""

    weights: Weights
    seed: int
    n_samples: int
    images: int
    offsets: np.ndarray  # (B + 1,) where each image's units start in ``units`` / ``values``
    units: np.ndarray  # (sum K,) int64, ascending within each image
    values: np.ndarray  # (sum K,) float32, the active values
    blocks: int  # tiles per image

    def tile_passes(self, block: int) -> int:
        return min(PASS_BLOCK, self.n_samples - block * PASS_BLOCK)


def blocks_for(n_samples: int) -> int:
    return -(-n_samples // PASS_BLOCK)


def prepare(model: DropoutMLP, x: np.ndarray, n_samples: int, seed: int, weights: Weights | None = None) -> Prepared:
    """fc1 and its ReLU for the request's images (one GEMM over the request alone), and their active units.

    ``weights``: :func:`weights_of` ``model``, when the caller already has it (it costs a check per call)."""
    if model.training:
        raise RuntimeError("the served model must stay in eval() mode")
    if n_samples < 1:
        raise ValueError("n_samples must be >= 1")
    w = weights or weights_of(model)
    pixels = _scratch("pixels", (len(x), w.fc1_t.shape[0]))
    pixels[:] = np.asarray(x, dtype=np.float32).reshape(len(x), -1)
    h1 = torch.mm(torch.from_numpy(pixels), w.fc1_t_torch).numpy()  # MKL: faster than numpy's BLAS at these shapes
    h1 += w.fc1_bias
    active = h1 > 0
    rows, units = np.nonzero(active)  # row-major: ascending units within each image
    offsets = np.zeros(len(h1) + 1, dtype=np.int64)
    np.cumsum(np.bincount(rows, minlength=len(h1)), out=offsets[1:])
    return Prepared(w, seed, n_samples, len(h1), offsets, units, h1[rows, units], blocks_for(n_samples))


@dataclass(frozen=True)
class Tile:
    request: Prepared
    image: int
    block: int

    @property
    def passes(self) -> int:
        return self.request.tile_passes(self.block)


def tiles_of(request: Prepared) -> list[Tile]:
    """Every tile of a request, image-major: tile q is image q // blocks, block q % blocks."""
    return [Tile(request, i, j) for i in range(request.images) for j in range(request.blocks)]


def rows_of(tiles: list[Tile]) -> int:
    return sum(t.passes for t in tiles)


def _generator() -> np.random.SFC64:
    """This thread's SFC64 object, re-seeded per tile (making one costs more than a tile's random words)."""
    gen = getattr(_LOCAL, "gen", None)
    if gen is None:
        gen = _LOCAL.gen = np.random.SFC64(0)
    return gen


def run_tiles(model: DropoutMLP, tiles: list[Tile]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Partial sums per tile, in ``tiles``' order: ``(n, C)`` sum of p, ``(n, C)`` sum of p^2, ``(n,)`` sum of
    -p log p over the tile's passes, float64. Each tile's numbers depend only on that tile."""
    if model.training:
        raise RuntimeError("the served model must stay in eval() mode")
    if not tiles:
        raise ValueError("run_tiles needs at least one tile")
    w = tiles[0].request.weights
    if any(t.request.weights is not w for t in tiles):
        raise ValueError("every tile of one call must come from the same model")
    n = len(tiles)
    passes = [t.passes for t in tiles]
    order: list[int] | None = None
    if any(a > b for a, b in itertools.pairwise(passes)):  # equal pass counts side by side
        order = sorted(range(n), key=passes.__getitem__)
        tiles = [tiles[k] for k in order]
    lay1, lay2 = w.layout1, w.layout2
    width2 = w.fc2_t.shape[1]
    wpr2 = lay2.words(width2)  # words per fc2 row
    states = tile_states([(t.request.seed, t.image, t.block) for t in tiles])
    gen = _generator()
    state: dict[str, object] = {"bit_generator": "SFC64", "has_uint32": 0, "uinteger": 0}
    lanes1: list[np.ndarray] = []  # every tile's lanes, then a gap so that the next tile's block starts aligned
    words2: list[np.ndarray] = []
    idx: list[np.ndarray] = []
    vals: list[np.ndarray] = []
    shapes: list[tuple[int, int]] = []
    starts: list[int] = []
    n1 = 0
    for q, tile in enumerate(tiles):
        req, t = tile.request, tile.passes
        lo, hi = req.offsets[tile.image], req.offsets[tile.image + 1]
        k = int(hi - lo)
        w1 = lay1.words(t * k)
        state["state"] = {"state": states[q]}
        gen.state = state  # type: ignore[assignment]  # numpy's stub wants its TypedDict
        raw = gen.random_raw(w1 + t * wpr2)
        if w1:
            lanes1.append(raw[:w1].view(lay1.dtype)[: t * k])
            gap = -(t * k) % _FLOATS_PER_LINE
            if gap:  # keeps the next tile's block 64-byte aligned
                lanes1.append(_GAPS[lay1.dtype][:gap])
        words2.append(raw[w1:])
        idx.append(req.units[lo:hi])
        vals.append(req.values[lo:hi])
        shapes.append((t, k))
        starts.append(n1)
        n1 += -(-(t * k) // _FLOATS_PER_LINE) * _FLOATS_PER_LINE
    rows = sum(t for t, _ in shapes)
    units = np.concatenate(idx)
    gathered = _scratch("gathered", (len(units), width2))
    np.take(w.fc2_t, units, axis=0, out=gathered)
    gathered *= np.concatenate(vals)[:, None]  # W' = v[:, None] * fc2[units] / keep1
    mask1 = _scratch("mask1", (max(n1, 1),))
    if lay1.plan.kind == "none":
        mask1.fill(1.0)
    if lanes1:
        np.greater_equal(np.concatenate(lanes1), lay1.threshold, out=mask1[:n1], casting="unsafe")
    h2 = _scratch("h2", (rows, width2))
    mask1_t, gathered_t, h2_t = torch.from_numpy(mask1), torch.from_numpy(gathered), torch.from_numpy(h2)
    b2, b3, w3 = w.fc2_bias_torch, w.fc3_bias_torch, w.fc3_t_torch
    r = u = 0
    for (t, k), m in zip(shapes, starts, strict=True):  # fc2 per tile: a GEMM of the tile's own shape (MKL)
        torch.addmm(b2, mask1_t[m : m + t * k].view(t, k), gathered_t[u : u + k], out=h2_t[r : r + t])
        r, u = r + t, u + k
    h2_t.relu_()
    if lay2.plan.kind != "none":
        _apply_row_mask(h2, lay2, np.concatenate(words2))
    padded = [-(-t // _SIMD_ROWS) * _SIMD_ROWS for t, _ in shapes]
    z = _scratch("z", (sum(padded), w3.shape[1]))
    z.fill(0.0)  # the padding rows: finite logits, never summed
    z_t = torch.from_numpy(z)
    r = zr = 0
    for (t, _), pad in zip(shapes, padded, strict=True):  # fc3 per tile too, each at a multiple of _SIMD_ROWS
        torch.addmm(b3, h2_t[r : r + t], w3, out=z_t[zr : zr + t])
        r, zr = r + t, zr + pad
    sums = _softmax_sums(z, shapes, padded)
    if order is None:
        c = w.classes
        return sums[0][:, :c], sums[1][:, :c], sums[2]
    inverse = np.empty(n, dtype=np.int64)
    inverse[np.array(order, dtype=np.int64)] = np.arange(n)
    c = w.classes
    return sums[0][inverse, :c], sums[1][inverse, :c], sums[2][inverse]


def _softmax_sums(
    z: np.ndarray, shapes: list[tuple[int, int]], padded: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per tile, over its passes: sums of p, p^2 (float64) and of -p log p, for logits ``z`` ``(rows, C_pad)``
    in which each tile's rows start at a multiple of ``_SIMD_ROWS`` (``padded``: its rows with the padding).

    Class-major (``(C_pad, rows)``) so that every reduction over the 16 classes is an elementwise operation along
    the rows, fast in numpy for one tile or hundreds; the padded classes' logits are -1e30, so their probability
    is exactly 0 and ``p * z`` stays finite there. Vectorised loops compute the last few elements of an array
    another way (a scalar ``exp``): with every tile starting at a multiple of the vector width and the whole
    length one too, no element is ever in such a tail, so an element's result never depends on its neighbours.
    """
    zt = z.T.copy()  # (C_pad, rows)
    zt -= zt.max(axis=0)
    # exp and log in torch: numpy's SIMD loops may compute an array's last few elements another way, so its
    # result for one element could depend on where the element sits; torch's vectorised loops do not
    e = torch.exp(torch.from_numpy(zt)).numpy()
    s = e.sum(axis=0)
    p = e
    p /= s
    entropy = torch.log(torch.from_numpy(s)).numpy()  # -sum p log p = log s - sum p z, with log p = z - log s
    entropy -= (p * zt).sum(axis=0)
    p64 = p.astype(np.float64)
    h64 = entropy.astype(np.float64)
    cols, n = p64.shape[0], len(shapes)
    sum_p, sum_p2, sum_h = np.empty((n, cols)), np.empty((n, cols)), np.empty(n)
    start = r = 0
    while start < n:  # one reduction per run of tiles with equal pass counts
        t, pad = shapes[start][0], padded[start]
        end = start
        while end < n and shapes[end][0] == t:
            end += 1
        g = end - start
        block = p64[:, r : r + g * pad].reshape(cols, g, pad)[:, :, :t]
        sum_p[start:end] = block.sum(axis=2).T
        sum_p2[start:end] = np.square(block).sum(axis=2).T
        sum_h[start:end] = h64[r : r + g * pad].reshape(g, pad)[:, :t].sum(axis=1)
        start, r = end, r + g * pad
    return sum_p, sum_p2, sum_h


def _apply_row_mask(h2: np.ndarray, layout: _Layout, words: np.ndarray) -> None:
    """Dropout on ``h2`` ``(rows, width)`` in place, each row's mask from its own words."""
    rows, width = h2.shape
    if layout.dtype is None:  # rate 1/2: bit b (little-endian) of a row's words keeps unit b
        bits = np.unpackbits(words.view(np.uint8).reshape(rows, -1), axis=1, bitorder="little")
        np.multiply(h2, bits[:, :width], out=h2)
        return
    lanes = words.view(layout.dtype).reshape(rows, -1)[:, :width]
    np.multiply(h2, lanes >= layout.threshold, out=h2)


class Accumulator:
    """A request's partial sums, one row per tile (image-major), filled in any order, combined in a fixed one."""

    def __init__(self, request: Prepared, classes: int) -> None:
        n = request.images * request.blocks
        self.request = request
        self.sum_p = np.zeros((n, classes))
        self.sum_p2 = np.zeros((n, classes))
        self.sum_h = np.zeros(n)

    def put(self, first: int, parts: tuple[np.ndarray, np.ndarray, np.ndarray], lo: int, hi: int) -> None:
        """Store rows ``lo:hi`` of :func:`run_tiles`' output as this request's tiles ``first...``."""
        n = hi - lo
        self.sum_p[first : first + n] = parts[0][lo:hi]
        self.sum_p2[first : first + n] = parts[1][lo:hi]
        self.sum_h[first : first + n] = parts[2][lo:hi]

    def result(self) -> MCResult:
        return summarise(self.request, self.sum_p, self.sum_p2, self.sum_h)


def summarise(request: Prepared, sum_p: np.ndarray, sum_p2: np.ndarray, sum_h: np.ndarray) -> MCResult:
    """The per-image summaries from per-tile sums (image-major), blocks added in block order."""
    b, nb, t = request.images, request.blocks, request.n_samples
    if nb == 1:
        sp, sp2, sh = sum_p, sum_p2, sum_h
    else:
        sp = sum_p.reshape(b, nb, -1).sum(axis=1)
        sp2 = sum_p2.reshape(b, nb, -1).sum(axis=1)
        sh = sum_h.reshape(b, nb).sum(axis=1)
    mean = sp / t
    variance = np.maximum(sp2 / t - mean * mean, 0.0)
    predictive = -(mean * np.log(np.maximum(mean, _TINY))).sum(axis=1)  # 0 log 0 = 0
    expected = sh / t
    mutual = np.maximum(predictive - expected, 0.0)
    f32 = np.float32
    return MCResult(
        mean_probs=torch.from_numpy(mean.astype(f32)),
        variance=torch.from_numpy(variance.astype(f32)),
        std=torch.from_numpy(np.sqrt(variance).astype(f32)),
        predictive_entropy=torch.from_numpy(predictive.astype(f32)),
        expected_entropy=torch.from_numpy(expected.astype(f32)),
        mutual_information=torch.from_numpy(mutual.astype(f32)),
        n_samples=t,
    )


def mc_tiled(model: DropoutMLP, x: np.ndarray, n_samples: int, seed: int, max_rows: int = 8192) -> MCResult:
    """One request alone: every tile, in calls of at most ``max_rows`` rows (at least one tile each)."""
    request = prepare(model, x, n_samples, seed)
    acc = Accumulator(request, request.weights.classes)
    tiles = tiles_of(request)
    first = 0
    while first < len(tiles):
        rows, end = 0, first
        while end < len(tiles) and (end == first or rows + tiles[end].passes <= max_rows):
            rows += tiles[end].passes
            end += 1
        acc.put(first, run_tiles(model, tiles[first:end]), 0, end - first)
        first = end
    return acc.result()
