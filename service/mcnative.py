"""The MC kernel's tiles in C (``service/native/mckernel.c``), loaded with ctypes: ``MCSERVE_MC_NATIVE``; with it
the input check's scores (:func:`scores`, for ``service.evalkernel``), one image at a time.

The C kernel computes what the numpy kernel (``service.mckernel``) computes, tile by tile, with the same random
words and the same dropped units; only the rounding of the sums differs (a few float32 ulps), because it adds the
kept rows one by one where the numpy kernel runs an MKL GEMM. Why: at small batches the numpy kernel is mostly
Python and numpy call overhead (some 50 calls per kernel call), and its GEMMs multiply the dropped units by 0
instead of skipping them. Long C calls release the GIL.

Which kernel a process runs is chosen once, by :func:`configure` (the service's startup, the kernel process, the
benchmarks), before any call: ``auto`` takes the C kernel when the library is built and the CPU has AVX2 and FMA,
else the numpy kernel (saying why); ``on`` fails with what to do when it cannot; ``off`` is the numpy kernel.
A seeded answer depends on which: every process of one service uses the same choice.
"""

from __future__ import annotations

import ctypes
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:
    from .mckernel import Tile
    from .mcweights import Weights

LIBRARY = Path(__file__).resolve().parent / "native" / "libmckernel.so"
Mode = Literal["auto", "on", "off"]
_KINDS = {"none": 0, "bit": 1, "threshold": 2}
_MAX_CLASSES = 64  # the C kernel's per-pass softmax buffer
_MASK64 = (1 << 64) - 1
_TILE = np.dtype(
    [
        ("seed", "<u8"), ("image", "<i8"), ("block", "<i8"), ("passes", "<i8"), ("active", "<i8"),
        ("units", "<u8"), ("values", "<u8"),
    ]
)  # struct TileIn: units and values are addresses  # fmt: skip


class NativeKernelError(RuntimeError):
    """``MCSERVE_MC_NATIVE=on`` but the C kernel cannot run here; the message says what to do."""


class _Net(ctypes.Structure):
    _fields_ = [(name, ctypes.c_void_p) for name in ("fc2_t", "fc2_bias", "fc3_t", "fc3_bias")] + [
        (name, ctypes.c_int64)
        for name in ("h1", "h2", "c_pad", "classes", "kind1", "threshold1", "kind2", "threshold2")
    ]


@dataclass(frozen=True)
class Choice:
    """The kernel this process runs: ``native`` (the C library) or not, and why."""

    native: bool
    reason: str

    @property
    def name(self) -> str:
        return "c" if self.native else "numpy"


_LOCK = threading.Lock()
_CHOICE: Choice | None = None
_LIB: _Library | None = None


def _cpu_problem() -> str | None:
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError as exc:
        return f"cannot read /proc/cpuinfo ({exc})"
    flags = next((line.split(":", 1)[1].split() for line in lines if line.startswith("flags")), [])
    missing = [flag for flag in ("avx2", "fma") if flag not in flags]
    return f"the CPU lacks {', '.join(missing)}" if missing else None


@dataclass(frozen=True)
class _Library:
    """The library's functions twice: ``free`` releases the GIL while C runs (ctypes.CDLL), ``held`` keeps it
    (ctypes.PyDLL). A call shorter than a GIL hand-over runs ``held``: a thread that gives the GIL away waits up to
    the switch interval (1 ms in the server) to get it back from a busy event loop."""

    free: Any
    held: Any


_HELD_ROWS = 512  # kernel calls of at most this many passes (~0.2 ms) keep the GIL
_HELD_IMAGES = 8  # fc1 for at most this many images (~0.1 ms) keeps it


def _load() -> tuple[_Library | None, str | None]:
    """The library with its functions declared, or (None, why not)."""
    problem = _cpu_problem()
    if problem:
        return None, problem
    if not LIBRARY.is_file():
        return None, f"{LIBRARY} is not built (`make install`, or `python service/native/build.py`; needs a C compiler)"
    try:
        free, held = ctypes.CDLL(str(LIBRARY)), ctypes.PyDLL(str(LIBRARY))
    except OSError as exc:
        return None, f"cannot load {LIBRARY}: {exc}; rebuild it with `python service/native/build.py`"
    if not hasattr(free, "mc_scores"):
        return None, f"{LIBRARY} was built from another version of mckernel.c; rebuild it"
    p, i = ctypes.c_void_p, ctypes.c_int64  # addresses, sizes
    for lib in (free, held):
        lib.mc_run_tiles.restype = ctypes.c_int
        lib.mc_run_tiles.argtypes = [p, p, i, p, p, p]
        lib.mc_prepare.restype = i
        lib.mc_prepare.argtypes = [p, p, p, i, i, i, p, p, p, p]
        lib.mc_summarise.restype = None
        lib.mc_summarise.argtypes = [p, p, p, i, i, i, i, p]
        lib.mc_scores.restype = None
        lib.mc_scores.argtypes = [p, p, p, i, i, i, p, p]
        lib.mc_sizeof_net.restype = lib.mc_sizeof_tile.restype = i
    if free.mc_sizeof_net() != ctypes.sizeof(_Net) or free.mc_sizeof_tile() != _TILE.itemsize:
        return None, f"{LIBRARY} was built from another version of mckernel.c; rebuild it"
    return _Library(free, held), None


def configure(mode: Mode) -> Choice:
    """Choose this process's kernel (idempotent for one mode); raises :class:`NativeKernelError` for ``on``."""
    global _CHOICE, _LIB
    with _LOCK:
        if mode == "off":
            _CHOICE, _LIB = Choice(False, "MCSERVE_MC_NATIVE=off"), None
            return _CHOICE
        lib, problem = _load()
        if problem is not None:
            if mode == "on":
                raise NativeKernelError(
                    f"MCSERVE_MC_NATIVE=on but the C Monte Carlo kernel cannot run: {problem}. "
                    "Build it, or set MCSERVE_MC_NATIVE=auto (falls back to the numpy kernel) or off."
                )
            _CHOICE, _LIB = Choice(False, problem), None
            return _CHOICE
        _CHOICE, _LIB = Choice(True, f"{LIBRARY.name} (AVX2)"), lib
        return _CHOICE


def choice() -> Choice:
    """The kernel chosen for this process (``auto`` on first use when nobody configured it)."""
    return _CHOICE if _CHOICE is not None else configure("auto")


def _net(weights: Weights) -> int | None:
    """The address of the C view of ``weights`` (built once per Weights), or None when the C kernel does not take
    this model."""
    cached = weights.__dict__.get("_native_net")
    if cached is not None:
        return ctypes.addressof(cached) if isinstance(cached, _Net) else None
    lay1, lay2 = weights.layout1, weights.layout2
    fits = weights.classes <= _MAX_CLASSES and all(
        a.dtype == np.float32 and a.flags.c_contiguous
        for a in (weights.fc1_t, weights.fc1_bias, weights.fc2_t, weights.fc2_bias, weights.fc3_t, weights.fc3_bias)
    )
    net: _Net | bool = False
    if fits:
        net = _Net(
            weights.fc2_t.ctypes.data, weights.fc2_bias.ctypes.data, weights.fc3_t.ctypes.data,
            weights.fc3_bias.ctypes.data, weights.fc2_t.shape[0], weights.fc2_t.shape[1], weights.fc3_t.shape[1],
            weights.classes, _KINDS[lay1.plan.kind], lay1.plan.threshold, _KINDS[lay2.plan.kind], lay2.plan.threshold,
        )  # fmt: skip
        weights.__dict__["_fc1_address"] = address(weights.fc1_t)
        weights.__dict__["_fc1_bias_address"] = address(weights.fc1_bias)
    weights.__dict__["_native_net"] = net  # a frozen dataclass: cached beside its fields, never compared
    return ctypes.addressof(net) if isinstance(net, _Net) else None


def address(array: np.ndarray) -> int:
    """Where a writable C-contiguous, non-empty array's data starts (``array.ctypes.data`` costs 5x as much)."""
    return ctypes.addressof(ctypes.c_char.from_buffer(array))  # type: ignore[arg-type]  # numpy exports buffers


def _lib() -> _Library | None:
    if _CHOICE is None:
        configure("auto")
    return _LIB


def prepare(pixels: np.ndarray, weights: Weights) -> tuple[np.ndarray, np.ndarray, np.ndarray, int, int] | None:
    """fc1 and its ReLU for ``pixels`` ``(B, D)`` (float32, C-contiguous), one image at a time, and each image's
    active units: ``(units int64, values float32, offsets (B + 1,), units' address, values' address)``; None when
    this process runs the numpy kernel."""
    lib = _lib()
    if lib is None or _net(weights) is None:
        return None
    b = len(pixels)
    d, width = weights.fc1_t.shape
    units, values = np.empty(max(b * width, 1), dtype=np.int64), np.empty(max(b * width, 1), dtype=np.float32)
    offsets, scratch = np.empty(b + 1, dtype=np.int64), np.empty(d + width, dtype=np.float32)
    at_units, at_values = address(units), address(values)
    call = lib.held.mc_prepare if b <= _HELD_IMAGES else lib.free.mc_prepare
    n = call(
        address(pixels), weights.__dict__["_fc1_address"], weights.__dict__["_fc1_bias_address"], b, d, width,
        at_units, at_values, address(offsets), address(scratch),
    )  # fmt: skip
    return units[:n], values[:n], offsets, at_units, at_values


def summaries(
    sum_p: np.ndarray, sum_p2: np.ndarray, sum_h: np.ndarray, images: int, blocks: int, n_samples: int
) -> np.ndarray | None:
    """A request's summaries from its per-tile sums (float64, C-contiguous, image-major), one float32 buffer:
    mean, variance, std ``(B, C)`` each, then predictive, expected entropy and mutual information ``(B,)``; None
    without the C kernel."""
    lib = _lib()
    if lib is None:
        return None
    classes = sum_p.shape[1]
    out = np.empty(images * (3 * classes + 3), dtype=np.float32)
    at = address
    lib.held.mc_summarise(at(sum_p), at(sum_p2), at(sum_h), images, blocks, classes, n_samples, at(out))
    return out


def run_tiles(weights: Weights, tiles: list[Tile]) -> tuple[np.ndarray, np.ndarray, np.ndarray] | None:
    """:func:`service.mckernel.run_tiles` in C, or None when this process or model runs the numpy kernel."""
    lib = _lib()
    if lib is None:
        return None
    net_address = _net(weights)
    if net_address is None:
        return None
    n = len(tiles)
    records = np.array(
        [
            (
                t.request.seed & _MASK64, t.image, t.block, t.passes, t.request.bounds[t.image + 1] - lo,
                t.request.units_address + 8 * lo, t.request.values_address + 4 * lo,
            )
            for t in tiles
            for lo in (t.request.bounds[t.image],)
        ],
        dtype=_TILE,
    )  # fmt: skip
    c = weights.classes
    out = np.empty(n * (2 * c + 1))
    at = address(out)
    call = lib.held.mc_run_tiles if sum(t.passes for t in tiles) <= _HELD_ROWS else lib.free.mc_run_tiles
    if call(net_address, address(records), n, at, at + 8 * n * c, at + 16 * n * c):
        raise MemoryError("the C Monte Carlo kernel could not allocate its work buffers")
    return out[: n * c].reshape(n, c), out[n * c : 2 * n * c].reshape(n, c), out[2 * n * c :]


MAX_COMPONENTS = 71  # the C input check's per-image buffer (components + 1 columns)
_HELD_SCORES = 16  # input-check scores of at most this many images (~50 us) keep the GIL


def scores(pixels: np.ndarray, c_t: int, c_bias: int, components: int) -> np.ndarray | None:
    """The input check's scores of ``pixels`` ``(B, D)`` float32 (``service.evalkernel.EvalKernel.scores``: ``c_t``
    the address of its projection's columns as rows, float64, C-contiguous; ``c_bias`` of its bias), one image at a
    time, so that an image's score never depends on what shares the call; None when this process runs the numpy
    kernel."""
    lib = _lib()
    if lib is None or components > MAX_COMPONENTS:
        return None
    x = pixels if pixels.dtype == np.float32 and pixels.flags.c_contiguous else np.ascontiguousarray(pixels, np.float32)
    b, d = x.shape
    out = np.empty(b + d)  # the scores, then the C code's scratch
    at = address(out)
    call = lib.held.mc_scores if b <= _HELD_SCORES else lib.free.mc_scores
    call(x.__array_interface__["data"][0], c_t, c_bias, b, d, components, at, at + 8 * b)
    return out[:b]
