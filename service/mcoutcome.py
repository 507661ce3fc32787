"""One Monte Carlo request's answer before encoding (:class:`MCOutcome`) and what every adapter and the metrics
read of it: the input check's verdicts, the one flag to act on, and the per-image summary (:func:`summarise`).

:meth:`service.core.Core.uncertainty` builds the outcome where the request's last tile was computed; the REST
encoders (``service.encode``) and the v2 data plane (``service.v2.dataplane``) read it, so a request's labels and
flags are the same whichever protocol carried it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .encode import argmax
from .engine import Engine
from .inference import MCResult
from .metrics import MCSummary
from .sets import SetAnswer


@dataclass(slots=True)
class MCOutcome:
    """One Monte Carlo request's answer, before any encoding: summaries on CPU and the input-check scores."""

    result: MCResult
    residuals: np.ndarray | None  # (B,) float64 input-check scores; None when the artifact has no check
    n_samples: int
    seed: int
    seconds: float  # model time
    queued_s: float = 0.0  # waiting for a worker thread (MCSERVE_MAX_CONCURRENCY) before the model ran
    sets: SetAnswer | None = None  # prediction sets / abstention, when the request asked for them
    summary: MCSummary | None = None  # what the metrics record of it, per image (class ids and flags too)


def to_cpu(result: MCResult) -> MCResult:
    if result.on_cpu:
        return result
    return MCResult(
        mean_probs=result.mean_probs.cpu(),
        variance=result.variance.cpu(),
        std=result.std.cpu(),
        predictive_entropy=result.predictive_entropy.cpu(),
        expected_entropy=result.expected_entropy.cpu(),
        mutual_information=result.mutual_information.cpu(),
        n_samples=result.n_samples,
    )


def outliers_of(engine: Engine, residuals: np.ndarray | None, n: int) -> list[bool | None]:
    """Per image: the input check's verdict on its score, or None when the artifact has no check."""
    check = engine.loaded.input_check
    if residuals is None or check is None:
        return [None] * n
    limit = check.threshold
    return [r > limit for r in residuals.tolist()]  # Python floats: each comparison is a bool


def uncertain_flags(engine: Engine, mi: list[float], outliers: list[bool | None]) -> list[bool]:
    """The one flag to act on: MI above the manifest's threshold, or an input outlier."""
    threshold = engine.loaded.threshold
    return [m > threshold or o is True for m, o in zip(mi, outliers, strict=True)]


def summarise(engine: Engine, outcome: MCOutcome) -> MCSummary:
    lists = outcome.result.lists()
    names = engine.loaded.class_names
    mi = lists.mi
    outliers = outliers_of(engine, outcome.residuals, len(mi))
    uncertain = uncertain_flags(engine, mi, outliers)
    class_ids = [argmax(mean) for mean in lists.mean]
    return MCSummary(
        labels=[names[i] for i in class_ids],
        outliers=outliers,
        predictive_entropy=lists.pe,
        mutual_information=mi,
        uncertain=uncertain,
        n_samples=outcome.n_samples,
        set_sizes=() if outcome.sets is None else outcome.sets.sizes,
        abstained=0 if outcome.sets is None or outcome.sets.abstain is None else sum(outcome.sets.abstain),
        class_ids=class_ids,
    )
