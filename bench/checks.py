"""Answer checks for ``bench http`` and ``bench v2``: an endpoint is timed only once its first answer has the right
shape (one prediction per image, probabilities summing to 1; MC answers with variance and mutual information)."""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

Check = Callable[[Any], None]


def _floats(value: Any, n: int, what: str) -> list[float]:
    if not isinstance(value, list) or len(value) != n or not all(isinstance(v, int | float) for v in value):
        raise ValueError(f"{what}: expected {n} numbers, got {str(value)[:200]}")
    if not all(math.isfinite(v) for v in value):
        raise ValueError(f"{what}: not finite: {value}")
    return [float(v) for v in value]


def _check_mc_row(mean: Any, variance: Any, mi: Any, classes: int) -> None:
    probs = _floats(mean, classes, "mean probabilities")
    if abs(sum(probs) - 1.0) > 1e-3 or min(probs) < -1e-6:
        raise ValueError(f"mean probabilities do not sum to 1: {sum(probs):.6f}")
    if min(_floats(variance, classes, "variance")) < -1e-6:
        raise ValueError(f"negative variance: {variance}")
    if _floats([mi] if not isinstance(mi, list) else mi, 1, "mutual information")[0] < -1e-5:
        raise ValueError(f"negative mutual information: {mi}")


def check_predictions(images: int, classes: int = 10) -> Check:
    """``/predict``'s shape: ``predictions``, one per image, each with ``classes`` probabilities summing to 1."""

    def check(payload: Any) -> None:
        rows = payload.get("predictions") if isinstance(payload, dict) else None
        if not isinstance(rows, list) or len(rows) != images:
            raise ValueError(f"expected {images} predictions, got {str(payload)[:300]}")
        for row in rows:
            probs = _floats(row.get("probabilities"), classes, "probabilities")
            if abs(sum(probs) - 1.0) > 1e-3:
                raise ValueError(f"probabilities do not sum to 1: {sum(probs):.6f}")

    return check


def check_mc_predictions(images: int, classes: int = 10) -> Check:
    """mcserve's ``/predict/uncertainty`` shape (the peers' JSON too): one prediction per image with
    ``mean_probabilities`` summing to 1, ``variance`` and ``mutual_information``."""

    def check(payload: Any) -> None:
        rows = payload.get("predictions") if isinstance(payload, dict) else None
        if not isinstance(rows, list) or len(rows) != images:
            raise ValueError(f"expected {images} MC predictions, got {str(payload)[:300]}")
        for row in rows:
            _check_mc_row(row.get("mean_probabilities"), row.get("variance"), row.get("mutual_information"), classes)

    return check


def check_v2_mc(images: int, classes: int = 10) -> Check:
    """A KServe v2 answer with ``mean_probabilities`` [B, C], ``variance`` [B, C] and ``mutual_information`` [B, 1]."""

    def check(payload: Any) -> None:
        outputs = {o.get("name"): o for o in payload.get("outputs", [])} if isinstance(payload, dict) else {}
        want = {
            "mean_probabilities": [images, classes],
            "variance": [images, classes],
            "mutual_information": [images, 1],
        }
        for name, shape in want.items():
            if name not in outputs or list(outputs[name].get("shape", [])) != shape:
                raise ValueError(f"v2 output {name} {shape} missing or misshapen: {str(payload)[:300]}")
        for i in range(images):
            rows = {name: outputs[name]["data"][i * s[1] : (i + 1) * s[1]] for name, s in want.items()}
            _check_mc_row(rows["mean_probabilities"], rows["variance"], rows["mutual_information"], classes)

    return check


def check_json_object(payload: Any) -> None:
    """The floors' constant: any JSON object."""
    if not isinstance(payload, dict):
        raise ValueError(f"expected a JSON object, got {str(payload)[:200]}")
