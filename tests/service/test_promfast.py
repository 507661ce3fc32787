"""service.promfast against prometheus-client's own calls: the same exposition, bucket for bucket, including values
on a bound, above every bound, negative, infinite and NaN; labelled and unlabelled; counters and gauges."""

from __future__ import annotations

import math
import random

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from service import promfast

BUCKETS = (0.001, 0.01, 0.1, 0.5, 1.0, 2.5)
VALUES = [0.0, 0.001, 0.0010001, 0.01, 0.5, 1.0, 2.5, 2.6, 1e9, -1.0, math.inf, -math.inf, math.nan, 0.3]


def _metrics(registry: CollectorRegistry) -> tuple[Histogram, Histogram, Counter, Gauge]:
    return (
        Histogram("h_seconds", "h", ["p"], buckets=BUCKETS, registry=registry),
        Histogram("plain_seconds", "plain", buckets=BUCKETS, registry=registry),
        Counter("c", "c", ["p"], registry=registry),
        Gauge("g", "g", registry=registry),
    )


def test_fast_calls_expose_exactly_what_prometheus_clients_own_calls_do() -> None:
    rng = random.Random(0)
    values = VALUES + [rng.uniform(-0.5, 3.0) for _ in range(200)] + list(BUCKETS)
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    (h1, p1, c1, g1), (h2, p2, c2, g2) = _metrics(ours), _metrics(theirs)
    for k, value in enumerate(values):
        promfast.observe(h1.labels(str(k % 3)), value)
        h2.labels(str(k % 3)).observe(value)
        promfast.observe(p1, value)
        p2.observe(value)
        promfast.inc(c1.labels("x"), k % 4)
        c2.labels("x").inc(k % 4)
        promfast.inc(g1, -1.0 if k % 2 else 2.0)
        g2.inc(-1.0 if k % 2 else 2.0)
    promfast.set_gauge(g1, 7)  # then a set overrides what the incs left
    g2.set(7)
    finite = [v for v in values if math.isfinite(v)]
    promfast.observe_many(h1.labels("many"), [*finite, math.nan])
    for value in [*finite, math.nan]:
        h2.labels("many").observe(value)
    mine = [ln for ln in generate_latest(ours).decode().splitlines() if "_created" not in ln]
    theirs_lines = [ln for ln in generate_latest(theirs).decode().splitlines() if "_created" not in ln]
    assert [ln for ln in mine if 'p="many"' not in ln] == [ln for ln in theirs_lines if 'p="many"' not in ln]
    assert any('h_seconds_bucket{le="0.001",p="1"}' in ln for ln in mine)  # the comparison saw real buckets
    many, theirs_many = _samples(ours, "many"), _samples(theirs, "many")
    assert many.keys() == theirs_many.keys() and len(many) == len(BUCKETS) + 3  # buckets, +Inf, count, sum
    for name, value in many.items():  # observe_many adds the values up first: the sum may differ in its last bits
        assert value == theirs_many[name] if not name.endswith("_sum") else math.isnan(value)  # NaN went in


def test_observe_many_sums_finite_values_like_one_at_a_time_to_rounding() -> None:
    ours, theirs = CollectorRegistry(), CollectorRegistry()
    (h1, *_), (h2, *_) = _metrics(ours), _metrics(theirs)
    values = [random.Random(1).uniform(0.0, 3.0) for _ in range(500)]
    promfast.observe_many(h1.labels("a"), values)
    for value in values:
        h2.labels("a").observe(value)
    many, one_by_one = _samples(ours, "a"), _samples(theirs, "a")
    assert {k: v for k, v in many.items() if not k.endswith("_sum")} == {
        k: v for k, v in one_by_one.items() if not k.endswith("_sum")
    }
    assert math.isclose(many["h_seconds_sum"], one_by_one["h_seconds_sum"], rel_tol=1e-12)


def _samples(registry: CollectorRegistry, label: str) -> dict[str, float]:
    """``name{le}`` -> value of the ``h_seconds`` samples labelled ``p=label``."""
    out = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.labels.get("p") == label and not sample.name.endswith("_created"):
                out[sample.name + sample.labels.get("le", "")] = sample.value
    return out
