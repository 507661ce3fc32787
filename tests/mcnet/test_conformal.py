"""Conformal prediction sets and SGR abstention: hand-computed cases, a cross-check against crepes, the coverage and
risk guarantees by simulation, and the artifact round trip with tamper detection."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from crepes import ConformalClassifier
from scipy.stats import beta

import mcnet
from mcnet import ArtifactError, DropoutMLP, read_manifest, save_artifact
from mcnet.conformal import (
    FILE,
    Conformal,
    class_scores,
    rank_of,
    risk_table,
    search_steps,
    sgr_search,
    smallest_risk,
    threshold_of,
    true_class_scores,
)

LEVELS = (0.9, 0.95, 0.99)


def _dirichlet_data(rng: np.random.Generator, n: int, k: int, alpha: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """``n`` probability rows over ``k`` classes and labels drawn from them (a calibrated model, exchangeable)."""
    probs = rng.dirichlet(np.full(k, alpha), size=n)
    labels = (rng.random((n, 1)) > np.cumsum(probs, axis=1)).sum(1).clip(max=k - 1)
    return probs, labels


# --- hand-computed cases -------------------------------------------------------------------------------------------


def test_rank_and_threshold_by_hand() -> None:
    scores = np.arange(1, 10) / 10  # 0.1 .. 0.9, n = 9
    assert rank_of(9, 0.8) == 8  # ceil(10 * 0.8)
    assert threshold_of(scores, 0.8) == pytest.approx(0.8)
    assert rank_of(9, 0.9) == 9  # 10 * 0.9 is 9.000000000000002 in floating point: still rank 9
    assert threshold_of(scores, 0.9) == pytest.approx(0.9)
    assert threshold_of(scores, 0.5) == pytest.approx(0.5)
    assert rank_of(9, 0.95) == 10  # ceil(9.5) > n: no finite threshold
    assert threshold_of(scores, 0.95) == math.inf
    assert threshold_of(np.array([0.3]), 0.5) == pytest.approx(0.3)  # ceil(2 * 0.5) = 1


def test_class_scores_by_hand() -> None:
    probs = np.array([[0.5, 0.3, 0.2], [0.2, 0.5, 0.3], [0.4, 0.4, 0.2]])
    assert class_scores(probs, "lac") == pytest.approx(1 - probs)
    assert class_scores(probs, "mondrian_lac") == pytest.approx(1 - probs)
    # APS: the total probability of the classes ranked at or above k (ties ranked by class index)
    assert class_scores(probs, "aps") == pytest.approx(np.array([[0.5, 0.8, 1.0], [1.0, 0.5, 0.8], [0.4, 0.8, 1.0]]))
    assert true_class_scores(probs, np.array([1, 2, 0]), "aps") == pytest.approx([0.8, 0.8, 0.4])
    with pytest.raises(ValueError, match="unknown conformal method"):
        class_scores(probs, "raps")


def test_sets_by_hand() -> None:
    risk = np.array([[0.9, 0.01]])
    conformal = Conformal("lac", "eval", 1, (np.arange(1, 10) / 10,), risk, 0.05)
    probs = np.array([[0.5, 0.3, 0.2], [0.1, 0.1, 0.8]])  # LAC scores [0.5, 0.7, 0.8] and [0.9, 0.9, 0.2]
    assert conformal.sets(probs, 0.8).tolist() == [[True, True, True], [False, False, True]]  # threshold 0.8
    assert conformal.sets(probs, 0.5).tolist() == [[True, False, False], [False, False, True]]  # threshold 0.5
    assert conformal.sets(probs, 0.95).all()  # threshold inf: every class
    aps = Conformal("aps", "eval", 1, (np.arange(1, 10) / 10,), risk, 0.05)
    # APS scores [0.5, 0.8, 1.0] and [0.9, 1.0, 0.8]
    assert aps.sets(probs, 0.8).tolist() == [[True, True, False], [False, False, True]]


def test_mondrian_thresholds_are_per_class() -> None:
    # class 0: true-class probabilities 0.9, 0.8, 0.7, 0.6 (scores 0.1..0.4); class 1: 0.95, 0.5, 0.75
    p_true = np.array([0.9, 0.8, 0.7, 0.6, 0.95, 0.5, 0.75])
    labels = np.array([0, 0, 0, 0, 1, 1, 1])
    probs = np.where(labels[:, None] == np.arange(2), p_true[:, None], 1 - p_true[:, None])
    conformal = Conformal.fit(probs, labels, "mondrian_lac", "mc", 30)
    assert conformal.mondrian and len(conformal.scores) == 2
    assert conformal.scores[0] == pytest.approx([0.1, 0.2, 0.3, 0.4])
    assert conformal.scores[1] == pytest.approx([0.05, 0.25, 0.5])
    # 0.6: class 0 rank ceil(5 * 0.6) = 3 -> 0.3; class 1 rank ceil(4 * 0.6) = 3 -> 0.5
    assert conformal.thresholds(0.6) == pytest.approx([0.3, 0.5])
    # 0.8: class 0 rank 4 -> 0.4; class 1 rank ceil(3.2) = 4 > 3 -> inf
    assert conformal.thresholds(0.8).tolist() == [pytest.approx(0.4), math.inf]
    # the marginal LAC threshold pools both classes instead: rank ceil(8 * 0.6) = 5 of the 7 sorted scores
    pooled = Conformal.fit(probs, labels, "lac", "mc", 30)
    assert pooled.thresholds(0.6) == pytest.approx([0.3])
    # column k is compared with class k's threshold: 1 - 0.65 = 0.35 > 0.3 for class 0, 0.35 <= 0.5 for class 1
    assert conformal.sets(np.array([[0.65, 0.65]]), 0.6).tolist() == [[False, True]]


# --- cross-check with crepes ---------------------------------------------------------------------------------------
# crepes puts class k in the set when its (non-smoothed) p-value (#{cal >= s} + 1) / (n + 1) is >= 1 - c; that
# includes the boundary rank when (n + 1)(1 - c) is an integer, which standard split conformal (the
# ceil((n + 1) c)-th smallest score as threshold) excludes. Away from that boundary the two are the same set, so
# the calibration sizes here make (n + 1) c a non-integer for every level (2001 * c for the marginal methods; per
# class for Mondrian, where the test asserts it for its seed).


def _crepes_data() -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    cal_probs, cal_labels = _dirichlet_data(rng, 2000, 10)
    test_probs, _ = _dirichlet_data(rng, 500, 10)
    return cal_probs, cal_labels, test_probs


def test_crepes_differs_only_on_the_boundary_rank() -> None:
    """n = 19, c = 0.9: (n + 1) c = 18 is an integer; conformal's threshold is the 18th score, crepes also takes
    the 19th (its p-value 1/20 is >= 1 - 0.9). With n = 18 (19 * 0.9 = 17.1) both stop at the 18th."""
    for n, ours_top, crepes_top in [(19, 18, 19), (18, 18, 18)]:
        cal = np.arange(1, n + 1) / 100
        test = cal[:, None]  # one test image per calibration score
        conformal = Conformal("lac", "eval", 1, (cal,), np.array([[0.9, 0.01]]), 0.05)
        ours = conformal.sets(1 - test, 0.9)[:, 0]  # LAC score 1 - p = the calibration score itself
        theirs = ConformalClassifier().fit(alphas=cal).predict_set(test, confidence=0.9, smoothing=False)[:, 0]
        assert int(ours.sum()) == ours_top and int(theirs.sum()) == crepes_top


def _off_boundary(n: int) -> bool:
    return all(abs((n + 1) * c - round((n + 1) * c)) > 1e-6 for c in LEVELS)


@pytest.mark.parametrize("method", ["lac", "aps"])
def test_sets_match_crepes(method: str) -> None:
    cal_probs, cal_labels, test_probs = _crepes_data()
    assert _off_boundary(len(cal_labels))
    conformal = Conformal.fit(cal_probs, cal_labels, method, "eval", 1)
    crepes = ConformalClassifier().fit(alphas=true_class_scores(cal_probs, cal_labels, method))
    alphas_test = class_scores(test_probs, method)
    for c in LEVELS:
        expected = crepes.predict_set(alphas_test, confidence=c, smoothing=False).astype(bool)
        ours = conformal.sets(test_probs, c)
        assert 1.0 < ours.sum(1).mean() < 10.0  # neither trivial nor everything
        assert np.array_equal(ours, expected), c


def test_mondrian_sets_match_crepes() -> None:
    cal_probs, cal_labels, test_probs = _crepes_data()
    counts = np.bincount(cal_labels, minlength=10)
    assert all(_off_boundary(int(n)) for n in counts), counts  # the seed's class sizes avoid the boundary
    conformal = Conformal.fit(cal_probs, cal_labels, "mondrian_lac", "eval", 1)
    crepes = ConformalClassifier().fit(alphas=true_class_scores(cal_probs, cal_labels, "lac"), bins=cal_labels)
    alphas_test = class_scores(test_probs, "lac")
    n_test = len(test_probs)
    for c in LEVELS:
        # crepes' bins are per row: ask column k with every test row put in class k's bin
        expected = np.concatenate(
            [
                crepes.predict_set(alphas_test[:, [k]], bins=np.full(n_test, k), confidence=c, smoothing=False)
                for k in range(10)
            ],
            axis=1,
        ).astype(bool)
        assert np.array_equal(conformal.sets(test_probs, c), expected), c


# --- coverage guarantee --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("coverage", [0.8, 0.9])
def test_average_coverage_meets_the_guarantee(coverage: float) -> None:
    """Over many exchangeable calibration/test draws the mean coverage lies in [c, c + 1/(n + 1)] (marginal) and in
    [c, c + mean 1/(n_k + 1)] for every class (Mondrian), up to sampling noise."""
    rng = np.random.default_rng(11)
    draws, n_cal, n_test, k = 200, 100, 100, 4
    marginal_hits = 0
    class_hits, class_total, class_upper = np.zeros(k), np.zeros(k), np.zeros(k)
    for _ in range(draws):
        cal_probs, cal_labels = _dirichlet_data(rng, n_cal, k)
        test_probs, test_labels = _dirichlet_data(rng, n_test, k)
        rows = np.arange(n_test)
        lac = Conformal.fit(cal_probs, cal_labels, "lac", "eval", 1)
        marginal_hits += int(lac.sets(test_probs, coverage)[rows, test_labels].sum())
        mondrian = Conformal.fit(cal_probs, cal_labels, "mondrian_lac", "eval", 1)
        covered = mondrian.sets(test_probs, coverage)[rows, test_labels]
        n_k = np.bincount(cal_labels, minlength=k)
        for cls in range(k):
            mine = test_labels == cls
            class_hits[cls] += covered[mine].sum()
            class_total[cls] += mine.sum()
            class_upper[cls] += mine.sum() * (coverage + 1 / (n_k[cls] + 1))
    tol = 0.015
    marginal = marginal_hits / (draws * n_test)
    assert coverage - tol <= marginal <= coverage + 1 / (n_cal + 1) + tol
    per_class = class_hits / class_total
    assert np.all(per_class >= coverage - 2 * tol), per_class
    assert np.all(per_class <= class_upper / class_total + 2 * tol), (per_class, class_upper / class_total)


# --- selection with guaranteed risk --------------------------------------------------------------------------------


def test_risk_table_by_hand_with_ties() -> None:
    confidence = np.array([0.8, 0.9, 0.6, 0.8, 0.7])
    correct = np.array([False, True, False, True, True])
    delta = 0.1
    table = risk_table(confidence, correct, delta)
    assert search_steps(5) == 3
    level = 1 - delta / 3
    # strictest first: 0.9 (1 image, 0 wrong), 0.8 twice (the tie is accepted together: 3 images, 1 wrong),
    # 0.7 (4 images, 1 wrong), 0.6 (5 images, 2 wrong)
    assert table[:, 0].tolist() == [0.9, 0.8, 0.8, 0.7, 0.6]
    expected = [beta.ppf(level, e + 1, m - e) for e, m in [(0, 1), (1, 3), (1, 3), (1, 4), (2, 5)]]
    assert table[:, 1] == pytest.approx(expected, rel=1e-12)
    # every accepted image wrong: the bound is 1 (Clopper-Pearson's upper end)
    assert risk_table(np.array([0.9, 0.5]), np.array([False, True]), delta)[0, 1] == 1.0


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 7, 8, 9, 31, 33, 64, 100, 500, 512])
def test_sgr_search_finds_the_largest_passing_prefix_for_monotone_bounds(n: int) -> None:
    bounds = np.linspace(0.01, 0.4, n)
    risk = np.stack([np.linspace(1.0, 0.5, n), bounds], axis=1)
    for max_risk in [0.005, 0.01, 0.0100001, 0.05, 0.1, 0.2, 0.3999, 0.4, 0.41, 1.0]:
        assert sgr_search(risk, max_risk) == int((bounds < max_risk).sum()), max_risk


@pytest.mark.parametrize("n", [1, 2, 4, 8, 64, 512, 2500])  # powers of two once needed one more step
def test_sgr_search_accepts_everything_when_every_bound_passes(n: int) -> None:
    risk = np.stack([np.linspace(1.0, 0.5, n), np.full(n, 0.01)], axis=1)
    assert sgr_search(risk, 0.05) == n


def test_sgr_guarantee_holds_by_simulation() -> None:
    """Confidence u ~ Uniform(0, 1), wrong with probability max(0, 1 - 2u): the true error rate among the images
    with u >= t is (0.5 - t)^2 / (1 - t) for t < 0.5 (0 above). Over many calibration draws, the chosen threshold's
    true risk exceeds max_risk in at most a delta share of them."""

    def true_risk(t: float) -> float:
        return max(0.0, 0.5 - t) ** 2 / (1 - t)

    rng = np.random.default_rng(3)
    draws, n, delta, max_risk = 300, 500, 0.1, 0.05
    ideal = 0.5 - (0.05 + math.sqrt(0.05**2 + 4 * 0.05 * 0.5)) / 2  # true_risk(ideal) == max_risk
    assert true_risk(ideal) == pytest.approx(max_risk)
    violations, accepted = 0, []
    for _ in range(draws):
        u = rng.random(n)
        correct = rng.random(n) >= np.maximum(0.0, 1 - 2 * u)
        risk = risk_table(u, correct, delta)
        z = sgr_search(risk, max_risk)
        threshold = risk[z - 1, 0] if z else 1.0
        violations += true_risk(threshold) > max_risk
        accepted.append(1 - threshold)
    assert violations / draws <= delta + 0.03
    assert 0.5 < np.mean(accepted) <= 1 - ideal + 0.02  # not vacuous: it accepts most of what it could (ideal 0.685)


def test_smallest_risk_is_the_edge_of_acceptance() -> None:
    rng = np.random.default_rng(5)
    probs, labels = _dirichlet_data(rng, 400, 10, alpha=0.2)
    conformal = Conformal.fit(probs, labels, "lac", "mc", 30, delta=0.05)
    assert conformal.min_risk == smallest_risk(conformal.risk) < 1.0
    assert sgr_search(conformal.risk, conformal.min_risk) > 0
    assert sgr_search(conformal.risk, conformal.min_risk - 1e-4) == 0
    assert conformal.risk_threshold(conformal.min_risk - 1e-4) is None
    assert conformal.abstain(probs, conformal.min_risk - 1e-4).all()
    threshold = conformal.risk_threshold(conformal.min_risk + 0.05)
    assert threshold is not None
    assert np.array_equal(conformal.abstain(probs, conformal.min_risk + 0.05), probs.max(1) < threshold)
    assert smallest_risk(np.zeros((0, 2))) == 1.0


# --- artifact round trip -------------------------------------------------------------------------------------------


def _fitted(method: str = "mondrian_lac") -> Conformal:
    probs, labels = _dirichlet_data(np.random.default_rng(2), 600, 10, alpha=0.3)
    return Conformal.fit(probs, labels, method, "mc", 30, delta=0.05)


@pytest.mark.parametrize("method", ["lac", "aps", "mondrian_lac"])
def test_round_trip_through_an_artifact(tmp_path: Path, method: str) -> None:
    conformal = _fitted(method)
    save_artifact(tmp_path / "a", DropoutMLP(), conformal=conformal)
    manifest = read_manifest(tmp_path / "a")
    section = manifest["conformal"]
    assert (section["file"], section["method"], section["groups"]) == (FILE, method, len(conformal.scores))
    assert section["calibration_images"] == 600 and section["mc_samples"] == 30
    loaded = mcnet.conformal.load_conformal(tmp_path / "a", manifest)
    assert loaded is not None
    assert (loaded.method, loaded.source, loaded.mc_samples, loaded.delta) == (method, "mc", 30, 0.05)
    assert loaded.min_risk == conformal.min_risk
    assert len(loaded.scores) == len(conformal.scores)
    assert all(np.array_equal(a, b) for a, b in zip(loaded.scores, conformal.scores, strict=True))
    assert np.array_equal(loaded.risk, conformal.risk)


def test_artifact_without_conformal_loads_with_none(tmp_path: Path) -> None:
    save_artifact(tmp_path / "a", DropoutMLP())
    manifest = read_manifest(tmp_path / "a")
    assert manifest["conformal"] is None
    assert mcnet.conformal.load_conformal(tmp_path / "a", manifest) is None
    assert not (tmp_path / "a" / FILE).exists()


def test_flipped_byte_in_the_calibration_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "a"
    save_artifact(out, DropoutMLP(), conformal=_fitted())
    manifest = read_manifest(out)
    data = bytearray((out / FILE).read_bytes())
    data[-3] ^= 0x01
    (out / FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"conformal\.safetensors.*sha256 mismatch.*python -m training"):
        mcnet.conformal.load_conformal(out, manifest)


@pytest.mark.parametrize(("method", "groups"), [("mondrian_lac", 1), ("mondrian_lac", 9), ("lac", 0)])
def test_wrong_group_count_in_a_resigned_manifest_is_refused(tmp_path: Path, method: str, groups: int) -> None:
    """The section is checked even when the manifest's own checksum passes (an edited, re-signed manifest)."""
    out = tmp_path / "a"
    save_artifact(out, DropoutMLP(), conformal=_fitted(method))
    mpath = out / mcnet.MANIFEST_FILE
    manifest = json.loads(mpath.read_text())
    manifest["conformal"]["groups"] = groups
    manifest["manifest_sha256"] = mcnet.artifact.manifest_checksum(manifest)
    mpath.write_text(json.dumps(manifest))
    expected = 10 if method == "mondrian_lac" else 1
    with pytest.raises(ArtifactError, match=f"{groups} score groups, expected {expected}"):
        mcnet.conformal.load_conformal(out, read_manifest(out))


def test_abstention_can_be_calibrated_on_other_probabilities_and_round_trips(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    sets_probs = rng.dirichlet(np.ones(10), size=300)
    risk_probs = rng.dirichlet(np.full(10, 0.2), size=300)
    labels = rng.integers(0, 10, 300)
    fitted = Conformal.fit(sets_probs, labels, "lac", "eval", 7, 0.05, risk_probs=risk_probs, risk_source="mc")
    alone = Conformal.fit(risk_probs, labels, "lac", "mc", 7, 0.05)
    assert fitted.risk_source == "mc" and fitted.source == "eval"
    np.testing.assert_array_equal(fitted.risk, alone.risk)  # the risk table comes from risk_probs alone
    out = tmp_path / "model"
    save_artifact(out, DropoutMLP(), conformal=fitted)
    loaded = mcnet.conformal.load_conformal(out, read_manifest(out))
    assert loaded is not None and (loaded.source, loaded.risk_source) == ("eval", "mc")
