"""TorchServe handler (module-level ``handle``) for the mcnet artifact packed into the .mar as extra files."""

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
    model = _model
    if data is None:  # TorchServe calls handle(None, ctx) once at load time
        return None
    out = []
    for row in data:
        raw = row.get("body") or row.get("data")
        body: dict[str, Any] = json.loads(raw) if isinstance(raw, bytes | bytearray) else dict(raw or {})
        out.append(common.encode(common.predict(model, common.to_tensor(body["images"]))))
    return out
