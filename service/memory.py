"""Keep large freed buffers in the heap (glibc ``mallopt``), so inference does not page-fault on every call.

Every MC-dropout block allocates a few tensors of several megabytes (random words, masks,
hidden activations). glibc serves blocks above its mmap threshold with fresh ``mmap`` pages
and unmaps them on free, so each call pays a page fault per 4 KiB touched: on this 2-core
VM that was 4-7 ms of a 9 ms kernel call (B=32, T=100). Raising the mmap threshold to its
maximum (32 MiB) and the trim threshold to 256 MiB makes freed blocks reusable by the next
call instead; PyTorch's CPU tuning guides get the same effect by preloading jemalloc or
tcmalloc. The cost is that the process keeps its peak working set (tens of megabytes here,
bounded by ``MCSERVE_MC_CHUNK_SIZE``) instead of returning it to the kernel between requests.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging

log = logging.getLogger("service")

M_TRIM_THRESHOLD = -1  # glibc's mallopt parameter numbers (malloc.h)
M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 32 * 1024 * 1024  # glibc's upper bound for M_MMAP_THRESHOLD on 64-bit
TRIM_THRESHOLD_BYTES = 256 * 1024 * 1024


def keep_freed_buffers() -> bool:
    """Apply the two ``mallopt`` settings; False (and nothing changed) where the C library is not glibc."""
    name = ctypes.util.find_library("c")
    if name is None:
        return False
    try:
        libc = ctypes.CDLL(name)
        mallopt = libc.mallopt
    except (OSError, AttributeError):  # musl and others have no mallopt
        return False
    mallopt.argtypes = [ctypes.c_int, ctypes.c_int]
    mallopt.restype = ctypes.c_int
    ok = mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES) == 1 and mallopt(M_TRIM_THRESHOLD, TRIM_THRESHOLD_BYTES) == 1
    log.debug("mallopt: mmap threshold %d, trim threshold %d: %s", MMAP_THRESHOLD_BYTES, TRIM_THRESHOLD_BYTES, ok)
    return ok
