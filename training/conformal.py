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
    "the (method, probabilities) pair with the smallest mean set size among those whose worst-class coverage at 0.90 "
    f"is at least {WORST_CLASS_FLOOR} (among mondrian_lac's, class-conditional by construction, when none is); set "
    "sizes averaged over coverage 0.90, 0.95 and 0.99, everything measured by two-fold cross-fitting on the "
    "calibration split (each image judged by the half it was not calibrated on)"
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
    """Two-fold cross-fitted statistics on the calibration split (the default rule's evidence): every image is
    judged once, by the half it was not calibrated on; coverage and worst-class coverage at 0.90 (per class pooled
    over both halves), set size and empty fraction averaged over :data:`LEVELS`."""
    order = np.random.default_rng(seed).permutation(len(labels))
    halves = (order[: len(order) // 2], order[len(order) // 2 :])
    covered = np.zeros(len(labels), dtype=bool)
    sizes, empty = [], []
    for fit_idx, eval_idx in (halves, halves[::-1]):
        fitted = Conformal.fit(probs[fit_idx], labels[fit_idx], method, source, t)
        for level in LEVELS:
            sets = fitted.sets(probs[eval_idx], level / 100)
            if level == 90:
                covered[eval_idx] = sets[np.arange(len(eval_idx)), labels[eval_idx]]
            sizes.append(float(sets.sum(1).mean()))
            empty.append(float((sets.sum(1) == 0).mean()))
    per_class = [float(covered[labels == k].mean()) for k in np.unique(labels)]
    return SetStats(
        coverage=float(covered.mean()),
        set_size=float(np.mean(sizes)),
        worst_class_coverage=min(per_class),
        empty_fraction=float(np.mean(empty)),
    )


def choose_default(
    calib: dict[str, np.ndarray], labels: np.ndarray, t: int, seed: int
) -> tuple[str, str, dict[tuple[str, str], SetStats]]:
    """``(method, source, evidence)`` by :data:`DEFAULT_RULE`."""
    evidence = {(m, s): cross_fit(calib[s], labels, m, s, t, seed) for m in METHODS for s in SOURCES}
    eligible = [key for key, st in evidence.items() if st.worst_class_coverage >= WORST_CLASS_FLOOR]
    if not eligible:
        eligible = [("mondrian_lac", s) for s in SOURCES]
    best = min(eligible, key=lambda key: (evidence[key].set_size, METHODS.index(key[0]), SOURCES.index(key[1])))
    return best[0], best[1], evidence


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
    # abstention always judges the MC means' top class: the class_id the service answers with
    fitted = {
        (m, s): Conformal.fit(calib[s], calib_labels, m, s, mc_samples, delta, calib["mc"], "mc")
        for m in METHODS
        for s in SOURCES
    }
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
    for risk in RISKS:  # the served calibration's abstention, on the MC means it is calibrated on
        observed, accepted = selective_stats(fitted[(method, source)], test["mc"], test_labels, risk / 100)
        report[f"selective_risk_mc_at_max_risk_{risk}"] = observed
        report[f"selective_coverage_mc_at_max_risk_{risk}"] = accepted
    report["conformal_calibration_images"] = float(len(calib_labels))
    report["conformal_min_max_risk"] = fitted[(method, source)].min_risk
    return fitted[(method, source)], report, table
