"""The overload bench's records and arithmetic: what one run saw (:class:`Answer`, :class:`Observed`) and the
``overload`` section's keys from it (:func:`summarise`). No I/O; ``bench.overload`` drives the run."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any


@dataclass(frozen=True)
class Answer:
    """One request as the client saw it: status (0 = no HTTP answer), seconds from send to last byte read."""

    status: int
    seconds: float
    retry_after: str | None = None
    code: str | None = None  # ``error.code`` of a JSON error body, or the exception's name for status 0


@dataclass
class Observed:
    """Everything one overload run recorded, before any arithmetic."""

    clients: int
    duration_s: float
    flood: list[Answer]
    probes: dict[str, list[Answer]]
    rss_mb: list[float]  # every sample, in order; [0] is the start (after warm-up, before the flood)
    rss_end_mb: float  # after every flood answer came back
    flood_work: dict[str, int] = field(default_factory=dict)  # images, n_samples, body_bytes
    probes_skipped: dict[str, int] = field(default_factory=dict)
    server_cpu_s: float | None = None  # the server's user+system CPU during the flood
    flood_client_cpu_s: float | None = None  # the flood process's own


# ---------------------------------------- pure parts


def percentile(values: Sequence[float], q: float) -> float | None:
    """The ``q``-th percentile (0..100) with linear interpolation between ranks (numpy's default); None if empty."""
    if not values:
        return None
    if not 0 <= q <= 100:
        raise ValueError(f"percentile {q} outside 0..100")
    ordered = sorted(values)
    rank = (len(ordered) - 1) * q / 100
    low = math.floor(rank)
    high = min(low + 1, len(ordered) - 1)
    return ordered[low] + (ordered[high] - ordered[low]) * (rank - low)


def error_code(body: bytes) -> str | None:
    """``error.code`` of the service's error shape ``{"error": {"code", ...}}``, or None."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    error = data.get("error") if isinstance(data, dict) else None
    code = error.get("code") if isinstance(error, dict) else None
    return code if isinstance(code, str) else None


def _round(value: float | None, digits: int) -> float | None:
    return None if value is None else round(value, digits)


def _ms(value: float | None) -> float | None:
    return None if value is None else round(value * 1e3, 2)


def _statuses(answers: Sequence[Answer]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for a in answers:
        counts[str(a.status)] = counts.get(str(a.status), 0) + 1
    return dict(sorted(counts.items()))


def summarise(obs: Observed) -> dict[str, Any]:
    """The ``overload`` section's keys (seconds unless the key says ms; memory in MiB)."""
    flood = obs.flood
    flood_s = [a.seconds for a in flood]
    flood_503 = [a for a in flood if a.status == 503]
    small = obs.probes.get("small", [])
    small_ok = [a.seconds for a in small if a.status == 200]
    small_503 = [a for a in small if a.status == 503]
    invalid = obs.probes.get("invalid", [])
    predict = obs.probes.get("predict", [])
    rss_peak = max([*obs.rss_mb, obs.rss_end_mb])
    rss_start = obs.rss_mb[0] if obs.rss_mb else obs.rss_end_mb
    return {
        "overload_clients": obs.clients,
        "overload_duration_s": obs.duration_s,
        "overload_flood_requests": len(flood),
        "overload_flood_ok": sum(a.status == 200 for a in flood),
        "overload_flood_503": len(flood_503),
        "overload_flood_bad_statuses": sum(a.status not in (200, 503) for a in flood),
        "overload_flood_statuses": _statuses(flood),
        "overload_flood_ok_per_s": _round(sum(a.status == 200 for a in flood) / obs.duration_s, 2),
        "overload_flood_p50_s": _round(percentile(flood_s, 50), 4),
        "overload_flood_p95_s": _round(percentile(flood_s, 95), 4),
        "overload_flood_max_s": _round(max(flood_s) if flood_s else None, 4),
        "overload_flood_503_p95_s": _round(percentile([a.seconds for a in flood_503], 95), 4),
        "overload_flood_503_retry_after": all(a.retry_after for a in flood_503),
        "overload_small_requests": len(small),
        "overload_small_ok": len(small_ok),
        "overload_small_statuses": _statuses(small),
        "overload_small_p50_s": _round(percentile(small_ok, 50), 4),
        "overload_small_p95_s": _round(percentile(small_ok, 95), 4),
        "overload_small_max_s": _round(max(small_ok) if small_ok else None, 4),
        "overload_small_503_fraction": _round(len(small_503) / len(small), 4) if small else None,
        "overload_small_503_p95_s": _round(percentile([a.seconds for a in small_503], 95), 4),
        "overload_small_503_retry_after": all(a.retry_after for a in small_503),  # vacuously true with no 503
        "overload_invalid_requests": len(invalid),
        "overload_invalid_not_422": sum(a.status != 422 for a in invalid),
        "overload_invalid_p50_ms": _ms(percentile([a.seconds for a in invalid], 50)),
        "overload_invalid_p95_ms": _ms(percentile([a.seconds for a in invalid], 95)),
        "overload_invalid_max_ms": _ms(max((a.seconds for a in invalid), default=None)),
        "overload_predict_requests": len(predict),
        "overload_predict_not_200": sum(a.status != 200 for a in predict),
        "overload_predict_p50_ms": _ms(percentile([a.seconds for a in predict], 50)),
        "overload_predict_p95_ms": _ms(percentile([a.seconds for a in predict], 95)),
        "overload_predict_max_ms": _ms(max((a.seconds for a in predict), default=None)),
        "overload_rss_start_mb": round(rss_start, 1),
        "overload_rss_peak_mb": round(rss_peak, 1),
        "overload_rss_end_mb": round(obs.rss_end_mb, 1),
        "overload_rss_growth_mb": round(obs.rss_end_mb - rss_start, 1),
        "overload_probes_skipped": dict(sorted(obs.probes_skipped.items())),
        "overload_server_cpu_s": _round(obs.server_cpu_s, 2),
        "overload_flood_client_cpu_s": _round(obs.flood_client_cpu_s, 2),
    }
