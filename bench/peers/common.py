"""What every peer shares: load the artifact named by BENCH_MODEL_DIR and turn images into probabilities.

Imports only torch and mcnet so it runs inside the separate bench venv too.
"""

from __future__ import annotations

import os
from typing import Any

import torch

from mcnet import CLASS_NAMES, DropoutMLP, load_artifact


def load_model() -> DropoutMLP:
    threads = int(os.environ.get("BENCH_TORCH_THREADS", "1"))
    torch.set_num_threads(threads)
    model, _ = load_artifact(os.environ["BENCH_MODEL_DIR"])
    return model


def to_tensor(images: Any) -> torch.Tensor:
    x = torch.tensor(images, dtype=torch.float32)
    return x.reshape(x.shape[0], -1)


def predict(model: DropoutMLP, x: torch.Tensor) -> torch.Tensor:
    with torch.inference_mode():
        return torch.softmax(model(x), dim=-1)


def encode(probs: torch.Tensor) -> dict[str, Any]:
    """The same response shape as mcserve's /predict (without the model block)."""
    rows = probs.tolist()
    ids = probs.argmax(dim=-1).tolist()
    return {
        "predictions": [
            {"class_id": i, "label": CLASS_NAMES[i], "probabilities": row} for i, row in zip(ids, rows, strict=True)
        ]
    }
