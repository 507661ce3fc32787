"""What every peer shares: load the artifact named by BENCH_MODEL_DIR, turn images into probabilities, and Monte
Carlo dropout the way a peer's user writes it.

Imports only torch and mcnet so it runs inside the separate bench venv too.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import torch

from mcnet import CLASS_NAMES, DropoutMLP, load_artifact

MC_SAMPLES = 100  # T when a request names none (mcserve's MCSERVE_DEFAULT_SAMPLES)
MC_MAX_BATCH = 64  # requests one dynamic batch of an MC peer may hold (the largest bench concurrency)
MC_BATCH_DELAY_S = 0.005  # how long an MC peer's dynamic batcher waits to fill a batch, where it has the knob


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


def n_samples_of(body: dict[str, Any]) -> int:
    """The request's ``n_samples`` (mcserve's field), T = 100 when it names none; other fields are ignored."""
    n = body.get("n_samples")
    return MC_SAMPLES if n is None else int(n)


def mc_dropout(model: DropoutMLP, x: torch.Tensor, n_samples: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """TorchUncertainty's ``mc_dropout``: the B images repeated T times as one batch of T*B rows with dropout on
    (``mc=True``), one forward pass, reduced over T.

    Returns the mean probabilities (B, C), their population variance over T (B, C) and the mutual information (B,)
    (BALD: entropy of the mean minus the mean entropy, nats).
    """
    batch = x.shape[0]
    with torch.inference_mode():
        logits = model(x.reshape(batch, -1).repeat(n_samples, 1), mc=True)
        probs = torch.softmax(logits, dim=-1).reshape(n_samples, batch, -1)
        mean = probs.mean(dim=0)
        variance = probs.var(dim=0, unbiased=False)
        entropy = -(mean * mean.clamp_min(1e-12).log()).sum(dim=-1)
        expected = -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1).mean(dim=0)
        mutual_information = (entropy - expected).clamp_min(0.0)
    return mean, variance, mutual_information


def mc_many(
    model: DropoutMLP, items: Sequence[tuple[torch.Tensor, int]]
) -> list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]]:
    """``mc_dropout`` for a dynamic batch of requests, each ``(images, n_samples)``: requests asking for the same T
    share one forward pass; each gets back its own rows of (mean, variance, mutual information)."""
    out: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None] = [None] * len(items)
    for n in sorted({n for _, n in items}):
        members = [i for i, (_, m) in enumerate(items) if m == n]
        xs = [items[i][0] for i in members]
        mean, var, mi = mc_dropout(model, xs[0] if len(xs) == 1 else torch.cat(xs), n)
        row = 0
        for i, x in zip(members, xs, strict=True):
            k = x.shape[0]
            out[i] = (mean[row : row + k], var[row : row + k], mi[row : row + k])
            row += k
    return [r for r in out if r is not None]


def encode_mc(mean: torch.Tensor, variance: torch.Tensor, mutual_information: torch.Tensor) -> dict[str, Any]:
    """One request's MC answer in mcserve's /predict/uncertainty shape, the fields the peers compute."""
    ids = mean.argmax(dim=-1).tolist()
    rows = zip(ids, mean.tolist(), variance.tolist(), mutual_information.tolist(), strict=True)
    return {
        "predictions": [
            {"class_id": i, "label": CLASS_NAMES[i], "mean_probabilities": m, "variance": v, "mutual_information": u}
            for i, m, v, u in rows
        ]
    }


def torchserve_model(context: Any) -> DropoutMLP:
    """The artifact packed into a TorchServe archive, loaded from the archive's model directory."""
    os.environ["BENCH_MODEL_DIR"] = context.system_properties["model_dir"]
    return load_model()


def torchserve_bodies(data: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The JSON bodies of the requests TorchServe hands a handler (bytes, or already decoded)."""
    bodies = []
    for row in data:
        raw = row.get("body") or row.get("data")
        bodies.append(json.loads(raw) if isinstance(raw, bytes | bytearray) else dict(raw or {}))
    return bodies
