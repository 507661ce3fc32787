"""Small, pure timing helpers shared by the benchmarks."""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Timing:
    """Median and spread of repeated calls, in seconds per call."""

    median_s: float
    min_s: float
    max_s: float
    repeats: int


def summarise(samples: list[float]) -> Timing:
    """Median/min/max of a non-empty list of per-call durations."""
    if not samples:
        raise ValueError("need at least one sample")
    return Timing(statistics.median(samples), min(samples), max(samples), len(samples))


def time_call(
    fn: Callable[[], object],
    *,
    warmup: int = 2,
    min_repeats: int = 5,
    max_repeats: int = 200,
    budget_s: float = 0.5,
) -> Timing:
    """Time ``fn`` after ``warmup`` calls: at least ``min_repeats`` calls, more while under ``budget_s``."""
    for _ in range(warmup):
        fn()
    samples: list[float] = []
    spent = 0.0
    while len(samples) < min_repeats or (spent < budget_s and len(samples) < max_repeats):
        start = time.perf_counter()
        fn()
        elapsed = time.perf_counter() - start
        samples.append(elapsed)
        spent += elapsed
    return summarise(samples)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    """``numerator / denominator`` or None when either is missing or the denominator is not positive."""
    if numerator is None or denominator is None or denominator <= 0:
        return None
    return numerator / denominator
