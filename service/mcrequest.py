"""One MC request's answer from its tiles: per-tile sums stored in any order, added in a fixed one, summarised.

``mc_tiled`` runs one request alone through ``service.mckernel`` (the kernel bench and ``mc_predict`` use it); the
service's scheduler (``service.mcbatch``) fills an :class:`Accumulator` per request from shared kernel calls.
"""

from __future__ import annotations

import numpy as np

from mcnet import DropoutMLP

from . import mcnative
from .inference import MCResult
from .mckernel import Prepared, prepare, run_tiles, tiles_of

_TINY = 1e-300


class Accumulator:
    """A request's partial sums, one row per tile (image-major), filled in any order, combined in a fixed one."""

    def __init__(self, request: Prepared, classes: int) -> None:
        n = request.images * request.blocks
        self.request = request
        self.sum_p = np.zeros((n, classes))
        self.sum_p2 = np.zeros((n, classes))
        self.sum_h = np.zeros(n)
        self.filled = 0  # tiles stored: every tile once, or the answer would be missing some passes

    def put(self, first: int, parts: tuple[np.ndarray, np.ndarray, np.ndarray], lo: int, hi: int) -> None:
        """Store rows ``lo:hi`` of :func:`run_tiles`' output as this request's tiles ``first...``."""
        n = hi - lo
        self.sum_p[first : first + n] = parts[0][lo:hi]
        self.sum_p2[first : first + n] = parts[1][lo:hi]
        self.sum_h[first : first + n] = parts[2][lo:hi]
        self.filled += n

    def result(self) -> MCResult:
        tiles = len(self.sum_h)
        if self.filled != tiles:  # a scheduling bug, never a wrong answer
            raise RuntimeError(f"MC request summarised with {self.filled} of its {tiles} tiles computed")
        return summarise(self.request, self.sum_p, self.sum_p2, self.sum_h)


def summarise(request: Prepared, sum_p: np.ndarray, sum_p2: np.ndarray, sum_h: np.ndarray) -> MCResult:
    """The per-image summaries from per-tile sums (image-major), blocks added in block order."""
    b, nb, t = request.images, request.blocks, request.n_samples
    native = mcnative.summaries(sum_p, sum_p2, sum_h, b, nb, t)  # the C kernel's, when this process runs it
    if native is not None:  # its one buffer is the packed layout (a torch view per field costs several times more)
        return MCResult.packed(native, b, t)
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
    parts = (mean, variance, np.sqrt(variance), predictive, expected, mutual)
    return MCResult.packed(np.concatenate([a.astype(f32).reshape(-1) for a in parts]), b, t)


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
