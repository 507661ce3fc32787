"""Turn model outputs into response payloads (plain dicts, the shapes of ``schemas``).

The FastAPI routes and the fast path both encode through these functions (and run MC
requests through :meth:`service.core.Core.uncertainty`), so a request gets the same payload
whichever way it was served.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from .engine import LoadedModel
from .inference import MCLists

if TYPE_CHECKING:
    from .mcoutcome import MCOutcome
    from .metrics import MCSummary
    from .sets import SetAnswer


def argmax(values: Sequence[float]) -> int:
    """The index of the first largest value (as ``numpy.argmax`` for finite values)."""
    try:
        return values.index(max(values))  # a quarter of max(range(n), key=...)'s cost
    except ValueError:  # NaN among the values (max then returns a value index cannot find)
        return max(range(len(values)), key=values.__getitem__)


def _input_fields(loaded: LoadedModel, residuals: list[float] | None, n: int) -> list[tuple[float | None, bool | None]]:
    """Per image ``(input_residual, input_outlier)``; ``(None, None)`` when the artifact has no input check."""
    check = loaded.input_check
    if residuals is None or check is None:
        return [(None, None)] * n
    return [(r, r > check.threshold) for r in residuals]


def predict_payload(loaded: LoadedModel, scored: list[list[float]]) -> dict[str, Any]:
    """``PredictResponse`` for one request's ``Engine.predict_scored`` rows (probabilities, then the check's score).

    Takes the rows over: each loses its last value."""
    names = loaded.class_names
    residuals = [row.pop() for row in scored]
    probs = scored
    fields = _input_fields(loaded, residuals, len(probs))
    predictions = []
    for p, (residual, outlier) in zip(probs, fields, strict=True):
        i = argmax(p)
        predictions.append(
            {"class_id": i, "label": names[i], "probabilities": p, "input_residual": residual, "input_outlier": outlier}
        )
    return {"model": loaded.ref, "predictions": predictions}


def uncertainty_payload(
    loaded: LoadedModel,
    out: MCLists,
    residuals: list[float] | None,
    n_samples: int,
    seed: int,
    sets: SetAnswer | None = None,
    summary: MCSummary | None = None,
) -> dict[str, Any]:
    """``UncertaintyResponse`` from an MC result's :meth:`~service.inference.MCResult.lists`, the input-check scores
    and the conformal answer (``summary``: the request's metrics summary, whose class ids and flags it reuses).

    ``uncertain`` is the one flag to act on: the mutual information exceeds the manifest's threshold (the
    network's dropout passes disagree) *or* the input check says the image is unlike the training images.
    """
    names, threshold = loaded.class_names, loaded.threshold
    n = len(out.mean)
    fields = _input_fields(loaded, residuals, n)
    if summary is None:
        ids = [argmax(mean) for mean in out.mean]
        flags = [mi > threshold or outlier is True for mi, (_, outlier) in zip(out.mi, fields, strict=True)]
    else:
        ids, flags = list(summary.class_ids), list(summary.uncertain)
    predictions = []
    for mean, variance, std, pe, ee, mi, (residual, outlier), cid, flag in zip(*out, fields, ids, flags, strict=True):
        predictions.append(
            {
                "class_id": cid,
                "label": names[cid],
                "mean_probabilities": mean,
                "variance": variance,
                "std": std,
                "predictive_entropy": pe,
                "expected_entropy": ee,
                "mutual_information": mi,
                "input_residual": residual,
                "input_outlier": outlier,
                "uncertain": flag,
                "prediction_set": None,
                "prediction_set_labels": None,
                "abstain": None,
            }
        )
    if sets is not None:
        for b, prediction in enumerate(predictions):
            if sets.sets is not None:
                prediction["prediction_set"] = sets.sets[b]
                prediction["prediction_set_labels"] = [names[k] for k in sets.sets[b]]
            if sets.abstain is not None:
                prediction["abstain"] = sets.abstain[b]
    check = loaded.input_check
    return {
        "model": loaded.ref,
        "n_samples": n_samples,
        "seed": seed,
        "uncertainty_threshold": threshold,
        "input_check_threshold": None if check is None else check.threshold,
        "coverage": None if sets is None else sets.request.coverage,
        "max_risk": None if sets is None else sets.request.max_risk,
        "conformal_method": None if sets is None else sets.method,
        "predictions": predictions,
    }


def uncertainty_payload_of(loaded: LoadedModel, outcome: MCOutcome) -> dict[str, Any]:
    """``UncertaintyResponse`` for one :meth:`service.core.Core.uncertainty` outcome (runs in its worker thread)."""
    residuals = None if outcome.residuals is None else outcome.residuals.tolist()
    lists = outcome.result.lists()
    return uncertainty_payload(loaded, lists, residuals, outcome.n_samples, outcome.seed, outcome.sets, outcome.summary)
