"""Per-tile random streams and dropout-mask layouts of the tiled MC kernel (``service.mckernel``).

Each tile (one image's passes, at most ``PASS_BLOCK``) draws its masks from its own SFC64 stream, whose state is
splitmix64 of (request seed, image index, block index): no tile shares a generator with another, so a tile's masks
never depend on what else shares its kernel call. A mask entry is cut from the stream's 64-bit words either as a
lane (16 bits compared with a threshold for a rate like 0.2, 8 bits >= 0 for rate 1/2 in layer 1) or as one bit
(rate 1/2 in layer 2, whose rows have a fixed width), as ``service.inference.effective_dropout`` documents.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any

import numpy as np

from .inference import _MaskPlan

_MASK64 = (1 << 64) - 1
_LOCAL = threading.local()


def splitmix64(z: int) -> int:
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
        first = splitmix64(splitmix64(splitmix64(splitmix64(seed & _MASK64) ^ image) ^ block))
        second = splitmix64(first)
        out[q] = (first, second, splitmix64(second), 1)
    return out


@dataclass(frozen=True)
class Layout:
    """How one dropout layer's keep-mask entries are cut from 64-bit words."""

    plan: _MaskPlan
    lanes: int  # mask entries per word: 4 16-bit lanes (threshold), 8 8-bit lanes (rate 1/2, layer 1), or 64 bits
    dtype: Any  # numpy lane dtype (np.int8, np.int16) for lane layouts; None for bits
    threshold: int  # a lane value r is kept when r >= threshold

    def words(self, n: int) -> int:
        return 0 if self.plan.kind == "none" else -(-n // self.lanes)


def lane_layout(plan: _MaskPlan) -> Layout:
    """Ragged rows (layer 1: K units per image): one lane per entry, in row-major order."""
    if plan.kind == "bit":
        return Layout(plan, 8, np.int8, 0)  # int8 >= 0 with probability exactly 1/2
    return Layout(plan, 4, np.int16, plan.threshold)


def row_layout(plan: _MaskPlan) -> Layout:
    """Fixed-width rows (layer 2): whole words per row, one bit per unit for rate 1/2."""
    if plan.kind == "bit":
        return Layout(plan, 64, None, 0)
    return Layout(plan, 4, np.int16, plan.threshold)


def generator() -> np.random.SFC64:
    """This thread's SFC64 object, re-seeded per tile (making one costs more than a tile's random words)."""
    gen = getattr(_LOCAL, "gen", None)
    if gen is None:
        gen = _LOCAL.gen = np.random.SFC64(0)
    return gen


def apply_row_mask(h2: np.ndarray, layout: Layout, words: np.ndarray) -> None:
    """Dropout on ``h2`` ``(rows, width)`` in place, each row's mask from its own words."""
    rows, width = h2.shape
    if layout.dtype is None:  # rate 1/2: bit b (little-endian) of a row's words keeps unit b
        bits = np.unpackbits(words.view(np.uint8).reshape(rows, -1), axis=1, bitorder="little")
        np.multiply(h2, bits[:, :width], out=h2)
        return
    lanes = words.view(layout.dtype).reshape(rows, -1)[:, :width]
    np.multiply(h2, lanes >= layout.threshold, out=h2)
