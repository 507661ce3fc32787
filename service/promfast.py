"""prometheus-client's ``observe`` and ``inc`` for the request path, without their per-call overhead.

``Histogram.observe`` checks that the metric is a labelled child, then walks its bucket bounds in Python and takes
a lock per bucket it passes on the way to the right one; ``Counter.inc`` and ``Gauge.inc`` check too. An MC request
records about a dozen values, which at c = 64 cost more of the event loop than the request's own decode. These
functions make the same change to the same value objects: a histogram's sum and the one bucket ``bisect`` finds
(its first upper bound >= the value, as ``observe``'s loop does); a counter's or gauge's value. They work in the
multiprocess mode too (the values are then memory-mapped files, updated the same way). ``tests/service/
test_promfast.py`` checks the exposition against prometheus-client's own calls, so a change there cannot go unseen.

Pass labelled children (``Metrics.child``) or unlabelled metrics; NaN goes through ``observe`` itself.
:func:`observe_many` adds many values at once: the same bucket counts, and a sum that may differ from one
observation at a time in its last bits (the values are added up first).
"""

from __future__ import annotations

from bisect import bisect_left
from typing import Any


def observe(histogram: Any, value: float) -> None:
    """``histogram.observe(value)``."""
    if value != value:  # NaN: in no bucket (every comparison is false), only in the sum
        histogram.observe(value)
        return
    histogram._sum.inc(value)
    histogram._buckets[bisect_left(histogram._upper_bounds, value)].inc(1)


def observe_many(histogram: Any, values: list[float]) -> None:
    """``histogram.observe(v)`` for each of ``values``, counted per bucket first: one update of the sum and one of
    each bucket that got values, however many there are."""
    bounds = histogram._upper_bounds
    counts: dict[int, int] = {}
    total = 0.0
    for value in values:
        if value != value:
            histogram.observe(value)
            continue
        i = bisect_left(bounds, value)
        counts[i] = counts.get(i, 0) + 1
        total += value
    if counts:
        histogram._sum.inc(total)
        buckets = histogram._buckets
        for i, n in counts.items():
            buckets[i].inc(n)


def inc(metric: Any, amount: float = 1.0) -> None:
    """``metric.inc(amount)`` of a counter or gauge (``amount`` >= 0 for a counter, as ``Counter.inc`` requires)."""
    metric._value.inc(amount)


def set_gauge(gauge: Any, value: float) -> None:
    """``gauge.set(value)``."""
    gauge._value.set(float(value))
