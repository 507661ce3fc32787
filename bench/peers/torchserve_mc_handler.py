"""TorchServe handler (module-level ``handle``) for Monte Carlo dropout of the mcnet artifact packed into the .mar.

TorchServe's batch aggregator hands ``handle`` up to ``batchSize`` requests at once (the archive's model-config.yaml
turns it on); each body is mcserve's ``/predict/uncertainty`` JSON (``images``, ``n_samples``, default 100; other
fields ignored). Requests asking for the same T share one forward pass (``common.mc_many``: dropout on, the input
repeated T times); each gets its mean probabilities, variance and mutual information.
"""

from __future__ import annotations

import json
from typing import Any

from bench.peers import common

_model: Any = None


def _initialise(context: Any) -> None:
    global _model
    import os

    os.environ["BENCH_MODEL_DIR"] = context.system_properties["model_dir"]
    _model = common.load_model()


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[dict[str, Any]] | None:
    if _model is None:
        _initialise(context)
    if data is None:  # TorchServe calls handle(None, ctx) once at load time
        return None
    items = []
    for row in data:
        raw = row.get("body") or row.get("data")
        body: dict[str, Any] = json.loads(raw) if isinstance(raw, bytes | bytearray) else dict(raw or {})
        items.append((common.to_tensor(body["images"]), common.n_samples_of(body)))
    return [common.encode_mc(*answer) for answer in common.mc_many(_model, items)]
