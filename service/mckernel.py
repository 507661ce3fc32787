"""Monte Carlo dropout in tiles: the kernel every MC request runs through, alone or sharing calls with others.

A request's work is cut into **tiles**: one image's passes ``[j * PASS_BLOCK, ...)`` (one tile per image for
T <= PASS_BLOCK). A kernel call (:func:`run_tiles`) computes any set of tiles, from any requests, and returns
each tile's partial sums of p, p^2 and -p log p over its passes. What a tile computes depends on that tile
alone, never on what shares the call, so a seeded request's answer is bit-identical whatever company it
keeps and however its tiles are spread over calls:

* **its own random stream** (``service.mcrandom``): each tile's masks come from an SFC64 generator whose state
  is a hash of (request seed, image, block); nothing is drawn from a generator that other tiles also advance;
* **its own matrix products**: BLAS results for a row can depend on the other rows of the same call
  (MKL picks kernels by shape), so every tile runs its own two GEMMs, of a shape fixed by the tile
  (``t`` passes x its own ``K`` active units); only elementwise and row-wise operations, whose result per
  row does not depend on the others, run over the whole call;
* **no element in a vector loop's tail**: every tile's logits start at a multiple of 64 rows (see
  :func:`_softmax_sums`);
* **a fixed reduction order**: partial sums are combined per image in block order at the end
  (``service.mcrequest``), whatever order the calls finished in.

The active-unit form: a hidden unit the first ReLU zeroed contributes nothing to fc2 whatever its dropout
mask, so a pass only needs the image's K active units (about 16 % of 256 on the trained model). The
image's active values are folded into its gathered fc2 rows once per call (``W' = v[:, None] * fc2[units]``),
so a pass's fc2 input is its 0/1 keep-mask itself: ``h2 = bias + (mask @ W') / keep``.
"""

from __future__ import annotations

import itertools
import math
import threading
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from mcnet import DropoutMLP

from . import mcnative
from .mcrandom import apply_row_mask, generator, tile_states
from .mcweights import Weights, weights_of

PASS_BLOCK = 128  # passes per tile: enough rows per GEMM to reuse the gathered weights, small enough to interleave
_LOCAL = threading.local()  # per worker thread: the scratch buffers


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
    bounds: tuple[int, ...] = ()  # ``offsets`` as Python ints (the C kernel's per-tile records)
    units_address: int = 0  # where ``units`` / ``values`` start in memory (both C-contiguous)
    values_address: int = 0

    def tile_passes(self, block: int) -> int:
        return min(PASS_BLOCK, self.n_samples - block * PASS_BLOCK)


def blocks_for(n_samples: int) -> int:
    return -(-n_samples // PASS_BLOCK)


def prepare(model: DropoutMLP, x: np.ndarray, n_samples: int, seed: int, weights: Weights | None = None) -> Prepared:
    """fc1 and its ReLU for one request's images, and their active units (:func:`prepare_many` of one request)."""
    return prepare_many(model, [(x, n_samples, seed)], weights)[0]


def prepare_many(
    model: DropoutMLP, requests: list[tuple[np.ndarray, int, int]], weights: Weights | None = None
) -> list[Prepared]:
    """fc1 and its ReLU for the images of ``requests`` (``(pixels, n_samples, seed)`` each), and their active units.

    Each request gets its own ``(B x D) @ (D x H)`` product: a GEMM's row can depend on the other rows of the same
    product (MKL picks kernels by shape and thread count), so a request's active units and values must not depend on
    the other requests it is prepared with. The products run back to back, so the requests starting in one kernel
    call share one read of the fc1 weights (800 KB, which the call's other work pushes out of the cache), and the
    rest is done once for all of them. ``weights``: :func:`weights_of` ``model``, when the caller already has it (it
    costs a check per call)."""
    if model.training:
        raise RuntimeError("the served model must stay in eval() mode")
    if any(n < 1 for _, n, _ in requests):
        raise ValueError("n_samples must be >= 1")
    w = weights or weights_of(model)
    d, width = w.fc1_t.shape
    sizes = [len(x) for x, _, _ in requests]
    total = sum(sizes)
    pixels = _scratch("pixels", (total, d))
    row = 0
    for (x, _, _), size in zip(requests, sizes, strict=True):
        pixels[row : row + size] = np.asarray(x, dtype=np.float32).reshape(size, -1)
        row += size
    found = mcnative.prepare(pixels, w)  # the C kernel's fc1, when this process runs it
    if found is None:
        h1 = _scratch("h1", (total, width))
        pixels_t, h1_t, fc1 = torch.from_numpy(pixels), torch.from_numpy(h1), w.fc1_t_torch
        row = 0
        for size in sizes:  # one product per request (MKL: faster than numpy's BLAS at these shapes)
            torch.mm(pixels_t[row : row + size], fc1, out=h1_t[row : row + size])
            row += size
        h1 += w.fc1_bias
        rows, units = np.nonzero(h1 > 0)  # row-major: ascending units within each image
        units = np.ascontiguousarray(units)  # nonzero returns strided views of one (n, 2) array
        values = h1[rows, units]
        starts = np.zeros(total + 1, dtype=np.int64)
        np.cumsum(np.bincount(rows, minlength=total), out=starts[1:])
        at_units = at_values = 0
    else:
        units, values, starts, at_units, at_values = found
    out: list[Prepared] = []
    row = 0
    for (_, n_samples, seed), size in zip(requests, sizes, strict=True):
        lo, hi = int(starts[row]), int(starts[row + size])
        offsets = starts[row : row + size + 1] - lo
        u, v = units[lo:hi], values[lo:hi]
        out.append(
            Prepared(
                w, seed, n_samples, size, offsets, u, v, blocks_for(n_samples),
                tuple(offsets.tolist()), at_units + 8 * lo, at_values + 4 * lo,
            )
        )  # fmt: skip
        row += size
    return out


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
    native = mcnative.run_tiles(w, tiles)  # the C kernel, when this process runs it (MCSERVE_MC_NATIVE)
    if native is not None:
        return native
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
    gen = generator()
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
    gathered_t = torch.from_numpy(gathered)  # torch's gather and broadcast multiply: several times numpy's speed here
    torch.index_select(w.fc2_t_torch, 0, torch.from_numpy(units), out=gathered_t)
    gathered_t.mul_(torch.from_numpy(np.concatenate(vals))[:, None])  # W' = v[:, None] * fc2[units] / keep1
    mask1 = _scratch("mask1", (max(n1, 1),))
    if lay1.plan.kind == "none":
        mask1.fill(1.0)
    if lanes1:
        np.greater_equal(np.concatenate(lanes1), lay1.threshold, out=mask1[:n1], casting="unsafe")
    h2 = _scratch("h2", (rows, width2))
    mask1_t, h2_t = torch.from_numpy(mask1), torch.from_numpy(h2)
    b2, b3, w3 = w.fc2_bias_torch, w.fc3_bias_torch, w.fc3_t_torch
    r = u = 0
    for (t, k), m in zip(shapes, starts, strict=True):  # fc2 per tile: a GEMM of the tile's own shape (MKL)
        torch.addmm(b2, mask1_t[m : m + t * k].view(t, k), gathered_t[u : u + k], out=h2_t[r : r + t])
        r, u = r + t, u + k
    h2_t.relu_()
    if lay2.plan.kind != "none":
        apply_row_mask(h2, lay2, np.concatenate(words2))
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
