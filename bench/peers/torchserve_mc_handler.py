"""TorchServe handler (module-level ``handle``) for Monte Carlo dropout of the mcnet artifact packed into the .mar.

TorchServe's batch aggregator hands ``handle`` up to ``batchSize`` requests at once (the archive's model-config.yaml
turns it on); each body is mcserve's ``/predict/uncertainty`` JSON (``images``, ``n_samples``, default 100; other
fields ignored). Requests asking for the same T share one forward pass (``common.mc_many``: dropout on, the input
repeated T times); each gets its mean probabilities, variance and mutual information.
"""

from __future__ import annotations

from typing import Any

from bench.peers import common

_model: Any = None


def handle(data: list[dict[str, Any]] | None, context: Any) -> list[dict[str, Any]] | None:
    global _model
    if _model is None:
        _model = common.torchserve_model(context)
    if data is None:  # TorchServe calls handle(None, ctx) once at load time
        return None
    items = [(common.to_tensor(b["images"]), common.n_samples_of(b)) for b in common.torchserve_bodies(data)]
    return [common.encode_mc(*answer) for answer in common.mc_many(_model, items)]
