"""Per-model counters for Triton's statistics extension (``GET /v2/models/{m}/stats``, gRPC ModelStatistics)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

DURATIONS = ("success", "fail", "queue", "compute_input", "compute_infer", "compute_output", "cache_hit", "cache_miss")


@dataclass
class ModelStats:
    """Counts and cumulative nanoseconds, as Triton reports them.

    ``queue``: waiting for the forward pass (eval: the shared batch; MC: a worker thread); ``compute_input``:
    decoding the input tensor; ``compute_infer``: the model; ``compute_output``: building the output tensors
    (serialising them is the adapter's and not counted). Nothing is cached, so the cache entries stay 0."""

    inference_count: int = 0  # images
    execution_count: int = 0  # requests
    last_inference_ms: int = 0
    durations: dict[str, list[int]] = field(default_factory=lambda: {k: [0, 0] for k in DURATIONS})

    def timed(self, kind: str, ns: int) -> None:
        entry = self.durations[kind]
        entry[0] += 1
        entry[1] += ns

    def succeeded(self, ns: int, images: int) -> None:
        self.timed("success", ns)
        self.inference_count += images
        self.execution_count += 1
        self.last_inference_ms = int(time.time() * 1000)

    def failed(self, ns: int) -> None:
        self.timed("fail", ns)

    def to_json(self, name: str, version: str) -> dict[str, Any]:
        return {
            "name": name,
            "version": version,
            "last_inference": self.last_inference_ms,
            "inference_count": self.inference_count,
            "execution_count": self.execution_count,
            "inference_stats": {k: {"count": c, "ns": ns} for k, (c, ns) in self.durations.items()},
            "batch_stats": [],
        }
