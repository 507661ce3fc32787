"""Conformal prediction sets and abstention for one MC request: the checks every adapter shares, and the answer.

A request may ask for ``coverage`` (a prediction set per image that holds the true class with that probability)
and ``max_risk`` (abstain on an image unless accepting it keeps the error rate among accepted images at most
that). Both come from the artifact's calibration (``mcnet.conformal``); the adapters only translate their wire
formats into :class:`SetRequest` and map :func:`set_problem`'s answer to their error shapes. Nothing here knows
about HTTP or gRPC.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from mcnet.conformal import COVERAGE_RANGE, Conformal


@dataclass(frozen=True)
class SetRequest:
    """What one request asked for; both None: no sets, no abstention."""

    coverage: float | None = None
    max_risk: float | None = None

    @property
    def wanted(self) -> bool:
        return self.coverage is not None or self.max_risk is not None


@dataclass(frozen=True)
class SetAnswer:
    """Per image: the prediction set (class ids, most probable first) and the abstention verdict."""

    request: SetRequest
    method: str
    sets: list[list[int]] | None  # None when no coverage was asked for
    abstain: list[bool] | None  # None when no max_risk was asked for
    sizes: list[int]  # the set sizes (empty when no coverage), for the metrics


def _is_number(value: object) -> bool:
    return type(value) in (int, float)  # a JSON number; bool is not one


def set_problem(
    conformal: Conformal | None, request: SetRequest, n_samples: int, names: tuple[str, str, str]
) -> tuple[str, str] | None:
    """``(field, message)`` for the first thing wrong with ``request``, or None. ``names`` are the adapter's names
    of coverage, max_risk and n_samples (e.g. ``mc_samples`` on v2)."""
    coverage_name, risk_name, samples_name = names
    for name, value in ((coverage_name, request.coverage), (risk_name, request.max_risk)):
        if value is None:
            continue
        if not _is_number(value):
            return name, f"must be a number, got {type(value).__name__}"
        if conformal is None:
            return name, (
                "this model's artifact has no conformal calibration (it was exported before prediction sets existed "
                "or trained without a calibration split): retrain it with `python -m training` to use "
                f"{coverage_name} and {risk_name}"
            )
    if conformal is None:
        return None
    low, high = COVERAGE_RANGE
    if request.coverage is not None and not low <= request.coverage <= high:
        return (
            coverage_name,
            f"must lie in [{low:g}, {high:g}] (the range the calibration supports), got {request.coverage!r}",
        )
    if request.max_risk is not None and not conformal.min_risk <= request.max_risk < 1.0:
        return risk_name, (
            f"must lie in [{conformal.min_risk:.4g}, 1) (the calibration's {sum(len(s) for s in conformal.scores)} "
            f"images cannot guarantee a lower error rate), got {request.max_risk!r}"
        )
    for name, value, source in (
        (coverage_name, request.coverage, conformal.source),
        (risk_name, request.max_risk, conformal.risk_source),
    ):
        if value is not None and source == "mc" and n_samples != conformal.mc_samples:
            return samples_name, (
                f"{name} is calibrated on MC means of {conformal.mc_samples} passes; ask for "
                f"{samples_name}={conformal.mc_samples} (or leave it out if that is the default) with {name}"
            )
    return None


def answer(conformal: Conformal, request: SetRequest, probs: dict[str, np.ndarray]) -> SetAnswer:
    """The sets and verdicts from ``probs`` (``(B, K)`` by source: "mc" means, "eval"-mode softmax; only the
    calibration's sources are needed)."""
    p = np.asarray(probs[conformal.source], dtype=np.float64)
    sets = sizes = None
    if request.coverage is not None:
        mask = conformal.sets(p, request.coverage)
        order = np.argsort(-p, axis=1, kind="stable")
        sets = [[int(k) for k in row if member[k]] for row, member in zip(order.tolist(), mask, strict=True)]
        sizes = [len(s) for s in sets]
    abstain = None
    if request.max_risk is not None:
        abstain = conformal.abstain(probs[conformal.risk_source], request.max_risk).tolist()
    return SetAnswer(request, conformal.method, sets, abstain, sizes or [])
