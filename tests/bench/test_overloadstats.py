"""The overload bench's records and arithmetic: percentiles, error codes and the summary's keys (no timing)."""

from __future__ import annotations

import json

import numpy as np
import pytest

from bench import overloadstats
from bench.overloadstats import Answer, Observed


def test_percentile_interpolates_between_ranks_as_numpy_does() -> None:
    values = [0.5, 0.1, 0.3, 0.2, 0.4, 2.0, 0.05]
    for q in (0, 10, 50, 90, 95, 99, 100):
        assert overloadstats.percentile(values, q) == pytest.approx(float(np.percentile(values, q)))
    assert overloadstats.percentile([7.0], 95) == 7.0
    assert overloadstats.percentile([], 50) is None
    with pytest.raises(ValueError, match="outside"):
        overloadstats.percentile([1.0], 101)


def test_error_code_reads_the_service_error_shape_only() -> None:
    assert (
        overloadstats.error_code(b'{"error":{"code":"overloaded","message":"retry later","field":null}}')
        == "overloaded"
    )
    assert overloadstats.error_code(b'{"detail":"Not Found"}') is None
    assert overloadstats.error_code(b'{"error":"overloaded"}') is None
    assert overloadstats.error_code(b"[1, 2]") is None
    assert overloadstats.error_code(b"<html>bad gateway</html>") is None


def _observed() -> Observed:
    flood = [Answer(200, 1.0), Answer(200, 3.0), Answer(503, 0.2, "1", "overloaded"), Answer(0, 60.0, None, "x")]
    flood += [Answer(503, 0.4, None, "overloaded")]
    small = [Answer(200, 0.1), Answer(200, 0.3), Answer(503, 0.05, "1", "overloaded"), Answer(200, 0.2)]
    invalid = [Answer(422, 0.01, None, "validation_error"), Answer(422, 0.03, None, "validation_error")]
    predict = [Answer(200, 0.002), Answer(500, 0.004, None, "internal")]
    return Observed(
        clients=48,
        duration_s=2.0,
        flood=flood,
        probes={"small": small, "invalid": invalid, "predict": predict},
        rss_mb=[600.0, 700.0, 900.0, 800.0],
        rss_end_mb=650.0,
        probes_skipped={"small": 0, "invalid": 1, "predict": 0},
        server_cpu_s=3.456,
        flood_client_cpu_s=0.5,
    )


def test_summarise_counts_statuses_and_takes_percentiles_per_class() -> None:
    out = overloadstats.summarise(_observed())
    assert out["overload_clients"] == 48 and out["overload_duration_s"] == 2.0
    assert (out["overload_flood_requests"], out["overload_flood_ok"], out["overload_flood_503"]) == (5, 2, 2)
    assert out["overload_flood_bad_statuses"] == 1  # the transport failure (status 0)
    assert out["overload_flood_statuses"] == {"0": 1, "200": 2, "503": 2}
    assert out["overload_flood_ok_per_s"] == 1.0
    assert out["overload_flood_max_s"] == 60.0
    assert out["overload_flood_p50_s"] == 1.0  # over every flood answer
    assert out["overload_flood_503_retry_after"] is False  # one 503 came without Retry-After
    # the small probe: p50/p95 over the 200s only, the 503s apart
    assert out["overload_small_requests"] == 4 and out["overload_small_ok"] == 3
    assert out["overload_small_p50_s"] == 0.2
    assert out["overload_small_p95_s"] == pytest.approx(np.percentile([0.1, 0.3, 0.2], 95))
    assert out["overload_small_max_s"] == 0.3
    assert out["overload_small_503_fraction"] == 0.25
    assert out["overload_small_503_p95_s"] == 0.05
    assert out["overload_small_503_retry_after"] is True
    assert out["overload_invalid_not_422"] == 0 and out["overload_invalid_p95_ms"] == pytest.approx(29.0)
    assert out["overload_predict_not_200"] == 1 and out["overload_predict_max_ms"] == 4.0
    assert out["overload_rss_start_mb"] == 600.0 and out["overload_rss_peak_mb"] == 900.0
    assert out["overload_rss_end_mb"] == 650.0 and out["overload_rss_growth_mb"] == 50.0
    assert out["overload_probes_skipped"] == {"invalid": 1, "predict": 0, "small": 0}
    assert out["overload_server_cpu_s"] == 3.46 and out["overload_flood_client_cpu_s"] == 0.5
    json.dumps(out)  # the results file takes it as it is


def test_summarise_with_nothing_shed_or_answered_gives_none_not_errors() -> None:
    obs = Observed(clients=1, duration_s=1.0, flood=[], probes={}, rss_mb=[], rss_end_mb=500.0)
    out = overloadstats.summarise(obs)
    assert out["overload_flood_requests"] == 0 and out["overload_flood_max_s"] is None
    assert out["overload_small_p95_s"] is None and out["overload_small_503_fraction"] is None
    assert out["overload_small_503_p95_s"] is None and out["overload_small_503_retry_after"] is True
    assert out["overload_invalid_p95_ms"] is None and out["overload_predict_max_ms"] is None
    assert out["overload_rss_start_mb"] == out["overload_rss_peak_mb"] == 500.0
    assert out["overload_rss_growth_mb"] == 0.0
    assert out["overload_server_cpu_s"] is None


def test_the_required_keys_are_all_there() -> None:
    required = {
        "overload_clients",
        "overload_duration_s",
        "overload_flood_requests",
        "overload_flood_ok",
        "overload_flood_503",
        "overload_flood_bad_statuses",
        "overload_flood_max_s",
        "overload_flood_p50_s",
        "overload_small_p50_s",
        "overload_small_p95_s",
        "overload_small_503_fraction",
        "overload_small_503_p95_s",
        "overload_small_503_retry_after",
        "overload_invalid_p95_ms",
        "overload_predict_p95_ms",
        "overload_rss_start_mb",
        "overload_rss_peak_mb",
        "overload_rss_growth_mb",
    }
    assert required <= set(overloadstats.summarise(_observed()))
