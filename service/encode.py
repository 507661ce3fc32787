"""Turn model outputs into response payloads (plain dicts, the shapes of ``schemas``).

The FastAPI routes and the fast path both encode through these functions, so a
request gets the same payload whichever way it was served.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .engine import LoadedModel
from .inference import MCResult


def argmax(values: Sequence[float]) -> int:
    return max(range(len(values)), key=values.__getitem__)


def predict_payload(loaded: LoadedModel, probs: list[list[float]]) -> dict[str, Any]:
    """``PredictResponse`` for the ``(B, C)`` probabilities of one request."""
    names = loaded.class_names
    predictions = []
    for p in probs:
        i = argmax(p)
        predictions.append({"class_id": i, "label": names[i], "probabilities": p})
    return {"model": loaded.ref, "predictions": predictions}


def mc_lists(result: MCResult) -> dict[str, list[Any]]:
    """The per-image summaries of an MC result as Python lists (moves them off the device)."""
    return {
        "mean": result.mean_probs.cpu().tolist(),
        "variance": result.variance.cpu().tolist(),
        "std": result.std.cpu().tolist(),
        "pe": result.predictive_entropy.cpu().tolist(),
        "ee": result.expected_entropy.cpu().tolist(),
        "mi": result.mutual_information.cpu().tolist(),
    }


def uncertainty_payload(loaded: LoadedModel, out: dict[str, list[Any]], n_samples: int, seed: int) -> dict[str, Any]:
    """``UncertaintyResponse`` from :func:`mc_lists` output."""
    names, threshold = loaded.class_names, loaded.threshold
    predictions = []
    for b, mean in enumerate(out["mean"]):
        cid = argmax(mean)
        mi = out["mi"][b]
        predictions.append(
            {
                "class_id": cid,
                "label": names[cid],
                "mean_probabilities": mean,
                "variance": out["variance"][b],
                "std": out["std"][b],
                "predictive_entropy": out["pe"][b],
                "expected_entropy": out["ee"][b],
                "mutual_information": mi,
                "uncertain": mi > threshold,
            }
        )
    return {
        "model": loaded.ref,
        "n_samples": n_samples,
        "seed": seed,
        "uncertainty_threshold": threshold,
        "predictions": predictions,
    }
