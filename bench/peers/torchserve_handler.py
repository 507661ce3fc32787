"""TorchServe handler (module-level ``handle``) for the mcnet artifact packed into the .mar as extra files."""

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
    bodies = common.torchserve_bodies(data)
    return [common.encode(common.predict(_model, common.to_tensor(body["images"]))) for body in bodies]
