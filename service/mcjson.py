"""The fast path's common request body parsed in C (``service/native/mcjson.c``, loaded with ctypes).

:func:`pixels` reads a body of the form every client sends (``{"images": [[0, 12, ...]], "n_samples": 100,
"seed": 7}``: integer pixels 0..255, integer fields) in one pass straight into the float32 pixel array, about
4 us for one image against some 20-35 us for simdjson and the checks ``service.decode.decode_json_request``
makes around it. It answers None for anything else (floats, strings, escapes, other keys or shapes, a missing
library), and the caller then parses the body the general way: it changes speed, never an answer (the tests
compare both parsers on the same bodies).

The library is built with the C kernel (``make install``; ``service/native/build.py``); loaded on first use.
"""

from __future__ import annotations

import ctypes
import threading
from pathlib import Path

import numpy as np

from mcnet import IMAGE_SIDE

from .mcnative import address

LIBRARY = Path(__file__).resolve().parent / "native" / "libmcjson.so"
_PIXELS = IMAGE_SIDE * IMAGE_SIDE
_SHORTEST_IMAGE = 2 * _PIXELS + 1  # bytes: 784 one-digit pixels, 783 commas, two brackets
_BITS = {"images": 1, "n_samples": 2, "seed": 4}  # mcjson.c's KEY_*
_LOCK = threading.Lock()
_parse: ctypes._CFuncPtr | None = None  # type: ignore[name-defined]  # mc_json_pixels, once loaded
_problem: str | None = None  # why it could not be loaded (None: loaded, or not tried yet)
_allowed: dict[frozenset[str], int] = {}


def _load() -> None:
    global _parse, _problem
    with _LOCK:
        if _parse is not None or _problem is not None:
            return
        if not LIBRARY.is_file():
            _problem = f"{LIBRARY} is not built (`make install`, or `python service/native/build.py`)"
            return
        try:
            lib = ctypes.PyDLL(str(LIBRARY))  # keeps the GIL: a few microseconds
            fn = lib.mc_json_pixels
        except (OSError, AttributeError) as exc:
            _problem = f"cannot load {LIBRARY}: {exc}; rebuild it with `python service/native/build.py`"
            return
        i, p = ctypes.c_int64, ctypes.c_void_p
        fn.restype = i
        fn.argtypes = [ctypes.c_char_p, i, i, p, i, p, p]
        _parse = fn


def problem() -> str | None:
    """Why the C parser is not in use (None when it is); loads it if nobody has yet."""
    if _parse is None and _problem is None:
        _load()
    return _problem


def pixels(body: bytes, fields: frozenset[str], max_batch: int) -> tuple[np.ndarray, dict[str, int]] | None:
    """``decode_json_request``'s answer for a body of the common form, read in C: the ``(B, 28, 28)`` float32
    pixels and the integer fields present; None when the body is not of that form (or the library is missing)."""
    fn = _parse
    if fn is None:
        if problem() is not None:
            return None
        fn = _parse
        assert fn is not None
    allowed = _allowed.get(fields)
    if allowed is None:
        allowed = _allowed[fields] = sum(bit for name, bit in _BITS.items() if name in fields)
    room = min(max_batch, len(body) // _SHORTEST_IMAGE)
    if room <= 0:
        return None
    out = np.empty((room, IMAGE_SIDE, IMAGE_SIDE), dtype=np.float32)
    ints = (ctypes.c_int64 * 3)()  # n_samples, seed, the bits of the keys present
    at = ctypes.addressof(ints)
    n = fn(body, len(body), allowed, address(out), room, at, at + 16)
    if n == 0:
        return None
    present = ints[2]
    found = {name: ints[k] for k, name in ((0, "n_samples"), (1, "seed")) if present & _BITS[name]}
    return (out if n == room else out[:n]), found
