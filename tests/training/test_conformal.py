"""Training-time conformal calibration: the report keys, the full table and the default rule (cross-fitted on the
calibration split)."""

from __future__ import annotations

import numpy as np
import pytest

from mcnet.conformal import METHODS, SOURCES, Conformal
from training.conformal import WORST_CLASS_FLOOR, calibrate, choose_default, cross_fit

K = 10


def _labels_from(rng: np.random.Generator, probs: np.ndarray) -> np.ndarray:
    return (rng.random((len(probs), 1)) > np.cumsum(probs, axis=1)).sum(1).clip(max=K - 1)


def _sources(rng: np.random.Generator, n: int) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """``eval`` probabilities are the model the labels are drawn from; ``mc`` the same blurred by per-image noise
    (less informative, so larger sets)."""
    evals = rng.dirichlet(np.full(K, 0.3), size=n)
    noisy = evals * rng.lognormal(0.0, 1.0, size=(n, K))
    return {"mc": noisy / noisy.sum(1, keepdims=True), "eval": evals}, _labels_from(rng, evals)


REPORT_KEYS = [
    *(f"conformal_coverage_mc_at_{c}" for c in (90, 95, 99)),
    *(f"conformal_set_size_mc_at_{c}" for c in (90, 95, 99)),
    *(f"conformal_set_size_eval_at_{c}" for c in (90, 95, 99)),
    "conformal_worst_class_coverage_mc_at_90",
    "conformal_empty_set_fraction_mc_at_90",
    "conformal_method",
    *(f"selective_risk_mc_at_max_risk_{r}" for r in (2, 5)),
    *(f"selective_coverage_mc_at_max_risk_{r}" for r in (2, 5)),
]


def test_calibrate_returns_the_default_and_the_report() -> None:
    rng = np.random.default_rng(0)
    calib, calib_labels = _sources(rng, 1500)
    test, test_labels = _sources(rng, 1500)
    conformal, report, table = calibrate(calib, calib_labels, test, test_labels, mc_samples=30, delta=0.05, seed=1)
    assert isinstance(conformal, Conformal)
    assert (conformal.method, conformal.source) == (report["conformal_method"], report["conformal_source"])
    assert (conformal.mc_samples, conformal.delta) == (30, 0.05)
    assert sum(len(s) for s in conformal.scores) == 1500 == report["conformal_calibration_images"]
    assert report["conformal_min_max_risk"] == conformal.min_risk
    missing = [key for key in REPORT_KEYS if key not in report]
    assert not missing
    for key in REPORT_KEYS:
        if key == "conformal_method":
            assert report[key] in METHODS
        elif "set_size" in key:
            assert 0.0 <= report[key] <= K, key
        else:
            assert 0.0 <= report[key] <= 1.0, key
    # the test split is exchangeable with the calibration split: the coverage is met up to sampling noise
    assert report["conformal_coverage_mc_at_90"] >= 0.87
    assert report["conformal_set_size_mc_at_90"] <= report["conformal_set_size_mc_at_99"]
    assert report["selective_coverage_mc_at_max_risk_2"] <= report["selective_coverage_mc_at_max_risk_5"]
    assert report["selective_risk_mc_at_max_risk_5"] <= 0.05 + 0.02
    # the table: every method on both sources, the default and its rule
    assert len(table["methods"]) == 6
    assert {(row["method"], row["source"]) for row in table["methods"]} == {(m, s) for m in METHODS for s in SOURCES}
    assert table["default"]["method"] == conformal.method and table["default"]["source"] == conformal.source
    assert "cross-fitting" in table["default"]["rule"]
    for row in table["methods"]:
        assert set(row) == {"method", "source", "cross_fit", "test_at_90", "test_at_95", "test_at_99"}
        assert set(row["test_at_90"]) == {"coverage", "set_size", "worst_class_coverage", "empty_fraction"}
    # the default is what choose_default picks on the calibration split alone
    assert choose_default(calib, calib_labels, 30, seed=1)[:2] == (conformal.method, conformal.source)


def test_default_is_the_smallest_set_eligible_method() -> None:
    """Plentiful exchangeable data (1,000 images per class per half, so the worst class's cross-fitted coverage is
    well above the floor): every method is eligible, LAC has the smallest sets, and the informative eval
    probabilities beat the blurred mc ones."""
    rng = np.random.default_rng(2)
    n = 20000
    evals = rng.dirichlet(np.full(K, 0.1), size=n)
    noisy = evals * rng.lognormal(0.0, 1.0, size=(n, K))
    calib = {"mc": noisy / noisy.sum(1, keepdims=True), "eval": evals}
    method, source, evidence = choose_default(calib, _labels_from(rng, evals), 30, seed=0)
    assert set(evidence) == {(m, s) for m in METHODS for s in SOURCES}
    assert all(st.worst_class_coverage >= WORST_CLASS_FLOOR for st in evidence.values())
    assert all(st.coverage == pytest.approx(0.9, abs=0.01) for st in evidence.values())
    assert (method, source) == min(evidence, key=lambda ms: evidence[ms].set_size) == ("lac", "eval")


def _templated(n: int, hard: np.ndarray, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Probability rows from two templates, so every class's true-class scores tie and Mondrian covers every class
    exactly (coverage 1, whatever the split). Easy image of class k >= 1: p_k = 0.9, p_0 = 0.05, the rest 0.05 / 8.
    Hard image (class 0): p_0 = 0.02, ranked last, the rest 0.98 / 9."""
    labels = np.where(hard, 0, rng.integers(1, K, size=n))
    probs = np.full((n, K), 0.05 / 8)
    probs[np.arange(n), labels] = 0.9
    probs[:, 0] = 0.05
    probs[hard] = 0.98 / 9
    probs[hard, 0] = 0.02
    return probs, labels


def test_smaller_sets_of_an_ineligible_method_are_passed_over() -> None:
    """0.5% hard class-0 images: the marginal thresholds at 0.90, 0.95 and 0.99 (LAC 0.1, APS 0.9) lie below every
    class-0 score, so LAC and APS never cover class 0 (LAC sets: one class, none for hard images); Mondrian covers
    every class and adds class 0 to every set (two classes). The default is Mondrian despite its larger sets."""
    rng = np.random.default_rng(3)
    n = 2000
    probs, labels = _templated(n, np.arange(n) % 200 == 0, rng)
    method, source, evidence = choose_default({"mc": probs, "eval": probs}, labels, 30, seed=0)
    for s in SOURCES:
        assert evidence[("lac", s)].worst_class_coverage == evidence[("aps", s)].worst_class_coverage == 0.0
        assert evidence[("mondrian_lac", s)].worst_class_coverage == 1.0
        assert evidence[("lac", s)].set_size < 1.0 < 1.9 < evidence[("mondrian_lac", s)].set_size
    assert (method, source) == ("mondrian_lac", "mc")  # equal sources: the tie goes to the first


def test_mondrian_is_the_fallback_when_no_method_reaches_the_floor() -> None:
    """Data that is not exchangeable across cross_fit's two halves (it reproduces their permutation): confident,
    correct images in one half and confidently wrong ones in the other, so every method calibrated on one half
    misses the other and no worst-class coverage reaches the floor."""
    n, seed = 2000, 4
    order = np.random.default_rng(seed).permutation(n)  # the halves cross_fit draws
    first = np.zeros(n, dtype=bool)
    first[order[: n // 2]] = True
    rng = np.random.default_rng(5)
    labels = rng.integers(0, K, size=n)
    p_true = np.where(first, rng.uniform(0.9, 0.99, n), rng.uniform(0.01, 0.05, n))
    rest = rng.dirichlet(np.full(K - 1, 0.1), size=n) * (1 - p_true)[:, None]
    probs = np.empty((n, K))
    for i, y in enumerate(labels):
        probs[i] = np.insert(rest[i], y, p_true[i])
    calib = {"mc": probs, "eval": probs**2 / (probs**2).sum(1, keepdims=True)}
    method, source, evidence = choose_default(calib, labels, 30, seed=seed)
    assert all(st.worst_class_coverage < WORST_CLASS_FLOOR for st in evidence.values())
    assert method == "mondrian_lac"
    assert source == min(SOURCES, key=lambda s: evidence[("mondrian_lac", s)].set_size)
    # the same evidence from cross_fit directly, whose first half is the confident one
    assert cross_fit(calib["mc"], labels, "lac", "mc", 30, seed) == evidence[("lac", "mc")]
