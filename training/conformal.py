"""Conformal calibration at training time: every method on MC and eval-mode probabilities, the default by a stated
rule, and the report (``mcnet.conformal`` holds the method itself, shared with the service).

The calibration split is carved out of the held-out validation images and used for nothing else (weights,
temperature, MI threshold and input check never see it). The default is chosen on the calibration split alone, by
two-fold cross-fitting (calibrate on one half, measure on the other, both ways; the test set plays no part):
:data:`DEFAULT_RULE`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from mcnet.conformal import METHODS, SOURCES, Conformal

LEVELS = (90, 95, 99)  # the report's coverage levels, in percent
RISKS = (2, 5)  # the report's max_risk levels, in percent
WORST_CLASS_FLOOR = 0.85  # a default must give every class at least this coverage at 0.90
DEFAULT_RULE = (
    "the method whose worst-class coverage at 0.90 is at least "
    f"{WORST_CLASS_FLOOR} (mondrian_lac, class-conditional by construction, when none is) with the smallest mean set "
    "size, then the probabilities (mc or eval) giving that method the smaller mean set size; set sizes are averaged "
    "over coverage 0.90, 0.95 and 0.99, everything measured by two-fold cross-fitting on the calibration split"
)


@dataclass(frozen=True)
class SetStats:
    """What a calibration's sets do on labelled images at one coverage level."""

    coverage: float
    set_size: float
    worst_class_coverage: float
    empty_fraction: float


def set_stats(conformal: Conformal, probs: np.ndarray, labels: np.ndarray, coverage: float) -> SetStats:
    sets = conformal.sets(probs, coverage)
    covered = sets[np.arange(len(labels)), labels]
    per_class = [float(covered[labels == k].mean()) for k in range(sets.shape[1]) if np.any(labels == k)]
    return SetStats(
        coverage=float(covered.mean()),
        set_size=float(sets.sum(1).mean()),
        worst_class_coverage=min(per_class),
        empty_fraction=float((sets.sum(1) == 0).mean()),
    )


def selective_stats(
    conformal: Conformal, probs: np.ndarray, labels: np.ndarray, max_risk: float
) -> tuple[float, float]:
    """``(risk, coverage)``: the error rate among accepted images (0 when none is accepted) and the share accepted."""
    accepted = ~conformal.abstain(probs, max_risk)
    wrong = probs.argmax(1) != labels
    risk = float(wrong[accepted].mean()) if accepted.any() else 0.0
    return risk, float(accepted.mean())


def cross_fit(probs: np.ndarray, labels: np.ndarray, method: str, source: str, t: int, seed: int) -> SetStats:
    """Two-fold cross-fitted statistics on the calibration split (the default rule's evidence): coverage and
    worst-class coverage at 0.90, set size and empty fraction averaged over :data:`LEVELS`."""
    order = np.random.default_rng(seed).permutation(len(labels))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    at_90, sizes, empty = [], [], []
    for fit_idx, eval_idx in (halves, halves[::-1]):
        fitted = Conformal.fit(probs[fit_idx], labels[fit_idx], method, source, t)
        for level in LEVELS:
            st = set_stats(fitted, probs[eval_idx], labels[eval_idx], level / 100)
            at_90 += [st] if level == 90 else []
            sizes.append(st.set_size)
            empty.append(st.empty_fraction)
    return SetStats(
        coverage=float(np.mean([st.coverage for st in at_90])),
        set_size=float(np.mean(sizes)),
        worst_class_coverage=float(np.mean([st.worst_class_coverage for st in at_90])),
        empty_fraction=float(np.mean(empty)),
    )


def choose_default(
    calib: dict[str, np.ndarray], labels: np.ndarray, t: int, seed: int
) -> tuple[str, str, dict[tuple[str, str], SetStats]]:
    """``(method, source, evidence)`` by :data:`DEFAULT_RULE`."""
    evidence = {(m, s): cross_fit(calib[s], labels, m, s, t, seed) for m in METHODS for s in SOURCES}

    def size(method: str) -> float:
        return min(evidence[(method, s)].set_size for s in SOURCES)

    eligible = [m for m in METHODS if any(evidence[(m, s)].worst_class_coverage >= WORST_CLASS_FLOOR for s in SOURCES)]
    method = min(eligible, key=lambda m: (size(m), METHODS.index(m))) if eligible else "mondrian_lac"
    source = min(SOURCES, key=lambda s: (evidence[(method, s)].set_size, SOURCES.index(s)))
    return method, source, evidence


def calibrate(
    calib: dict[str, np.ndarray],
    calib_labels: np.ndarray,
    test: dict[str, np.ndarray],
    test_labels: np.ndarray,
    mc_samples: int,
    delta: float,
    seed: int,
) -> tuple[Conformal, dict[str, Any], dict[str, Any]]:
    """``(default calibration, report keys, full table)``. ``calib``/``test`` map "mc"/"eval" to ``(N, 10)``
    probabilities."""
    method, source, evidence = choose_default(calib, calib_labels, mc_samples, seed)
    fitted = {(m, s): Conformal.fit(calib[s], calib_labels, m, s, mc_samples, delta) for m in METHODS for s in SOURCES}
    table: dict[str, Any] = {"default": {"method": method, "source": source, "rule": DEFAULT_RULE}, "methods": []}
    for (m, s), conformal in fitted.items():
        row: dict[str, Any] = {"method": m, "source": s, "cross_fit": vars(evidence[(m, s)])}
        for level in LEVELS:
            row[f"test_at_{level}"] = vars(set_stats(conformal, test[s], test_labels, level / 100))
        table["methods"].append(row)
    report: dict[str, Any] = {"conformal_method": method, "conformal_source": source}
    for s in SOURCES:
        for level in LEVELS:
            st = set_stats(fitted[(method, s)], test[s], test_labels, level / 100)
            report[f"conformal_coverage_{s}_at_{level}"] = st.coverage
            report[f"conformal_set_size_{s}_at_{level}"] = st.set_size
            if level == 90:
                report[f"conformal_worst_class_coverage_{s}_at_90"] = st.worst_class_coverage
                report[f"conformal_empty_set_fraction_{s}_at_90"] = st.empty_fraction
        for risk in RISKS:
            observed, accepted = selective_stats(fitted[(method, s)], test[s], test_labels, risk / 100)
            report[f"selective_risk_{s}_at_max_risk_{risk}"] = observed
            report[f"selective_coverage_{s}_at_max_risk_{risk}"] = accepted
    report["conformal_calibration_images"] = float(len(calib_labels))
    report["conformal_min_max_risk"] = fitted[(method, source)].min_risk
    return fitted[(method, source)], report, table
