"""Split-conformal prediction sets and abstention with a guaranteed risk: what training calibrates, what serving uses.

**Prediction sets.** A nonconformity score ``s(x, k)`` says how unusual class ``k`` is for image ``x`` given the
network's probabilities ``p`` (MC-dropout means or eval-mode softmax):

* ``lac`` (least ambiguous set-valued classifier): ``s = 1 - p_k``; the smallest sets on average;
* ``aps`` (adaptive prediction sets, not randomised): ``s`` = the total probability of the classes ranked at or
  above ``k``; sets grow with the image's ambiguity;
* ``mondrian_lac``: LAC scores with one threshold per class (class-conditional, "Mondrian" conformal), so every
  class gets the coverage, not only the average image.

With ``n`` calibration images (scores of their true class) the threshold for coverage ``c`` is the
``ceil((n + 1) c)``-th smallest calibration score (infinite when that exceeds ``n``), and the set is every class
whose score does not exceed it. For calibration and test images that are exchangeable, the true class is in the
set with probability at least ``c`` (marginally, over images and calibration draws; Mondrian: per true class).

**Abstention.** For a requested ``max_risk`` the service accepts an image when its confidence (the top class's
probability) reaches a threshold chosen by selection with guaranteed risk (SGR, Geifman and El-Yaniv 2017): a
binary search over the calibration images' confidences for the most lenient threshold whose Clopper-Pearson upper
bound on the error rate among accepted images stays below ``max_risk``, each bound at level ``delta / k`` for the
search's ``k = ceil(log2(n + 1))`` steps. Then, with probability at least ``1 - delta`` over the calibration draw, the
error rate among accepted images is at most ``max_risk``. Training stores every threshold's bound, so a request
needs ``k`` comparisons.

Stored as ``conformal.safetensors`` (no pickle) with its own sha256 in the manifest's ``conformal`` section;
numpy and safetensors only, so the service needs no training code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import load_file, save_file

from mcnet.artifact import ArtifactError, sha256_file, verified_file

FILE = "conformal.safetensors"
METHODS = ("lac", "aps", "mondrian_lac")
SOURCES = ("mc", "eval")  # MC-dropout mean probabilities, or the eval-mode (dropout off) softmax
COVERAGE_RANGE = (0.5, 0.999)  # what a request may ask for; above 0.999 the sets are all ten classes anyway
MAX_RISK_LIMIT = 0.5  # a request's max_risk must lie below this (and above the smallest risk the data can promise)
_EPS = 1e-9  # (n + 1) * c computed in floating point can land a hair above an integer


def class_scores(probs: np.ndarray, method: str) -> np.ndarray:
    """``(N, K)`` nonconformity score of every class of every image (lower = more plausible)."""
    p = np.asarray(probs, dtype=np.float64)
    if method in ("lac", "mondrian_lac"):
        return 1.0 - p
    if method == "aps":
        order = np.argsort(-p, axis=1, kind="stable")
        cumulative = np.cumsum(np.take_along_axis(p, order, axis=1), axis=1)
        scores = np.empty_like(p)
        np.put_along_axis(scores, order, cumulative, axis=1)
        return scores
    raise ValueError(f"unknown conformal method {method!r} (one of {', '.join(METHODS)})")


def true_class_scores(probs: np.ndarray, labels: np.ndarray, method: str) -> np.ndarray:
    """``(N,)`` score of each image's true class."""
    scores = class_scores(probs, method)
    return scores[np.arange(len(scores)), np.asarray(labels, dtype=np.int64)]


def rank_of(n: int, coverage: float) -> int:
    """The 1-based rank ``ceil((n + 1) * coverage)`` of the calibration score that is the threshold."""
    return math.ceil((n + 1) * coverage - _EPS)


def threshold_of(sorted_scores: np.ndarray, coverage: float) -> float:
    """The conformal threshold of ascending calibration scores for ``coverage``; ``inf`` when it exceeds them all."""
    k = rank_of(len(sorted_scores), coverage)
    return math.inf if k > len(sorted_scores) else float(sorted_scores[k - 1])


def binomial_upper_bounds(errors: np.ndarray, accepted: np.ndarray, delta: float) -> np.ndarray:
    """Clopper-Pearson ``1 - delta`` upper bounds on an error rate seen as ``errors`` of ``accepted`` (training only:
    it needs scipy)."""
    from scipy.stats import beta

    errors = np.asarray(errors, dtype=np.float64)
    accepted = np.asarray(accepted, dtype=np.float64)
    bounds = np.ones_like(errors)
    ok = errors < accepted
    bounds[ok] = beta.ppf(1.0 - delta, errors[ok] + 1.0, accepted[ok] - errors[ok])
    return bounds


def search_steps(n: int) -> int:
    """How many bounds the binary search of :func:`sgr_search` looks at for ``n`` calibration images."""
    return max(1, n.bit_length())  # ceil(log2(n + 1)): enough halvings to tell apart the n + 1 outcomes 0..n


def risk_table(confidence: np.ndarray, correct: np.ndarray, delta: float) -> np.ndarray:
    """``(n, 2)`` rows ``(threshold, bound)``, strictest threshold first: row ``z - 1`` accepts the images whose
    confidence is at least the ``z``-th highest (ties included), and ``bound`` is the Clopper-Pearson upper bound
    of their error rate at level ``delta / search_steps(n)`` (the union bound over the binary search's tests)."""
    conf = np.asarray(confidence, dtype=np.float64)
    order = np.argsort(-conf, kind="stable")
    conf_sorted, wrong = conf[order], ~np.asarray(correct, dtype=bool)[order]
    errors = np.r_[0, np.cumsum(wrong)]
    accepted = np.searchsorted(-conf_sorted, -conf_sorted, side="right")  # images with conf >= each threshold
    bounds = binomial_upper_bounds(errors[accepted], accepted, delta / search_steps(len(conf)))
    return np.stack([conf_sorted, bounds], axis=1)


def sgr_search(risk: np.ndarray, max_risk: float) -> int:
    """Selection with guaranteed risk (Geifman and El-Yaniv, 2017): binary search for the most images accepted
    whose bound stays below ``max_risk``, in ``search_steps(n)`` steps; returns how many (0: none can be)."""
    lo, hi = 0, len(risk)
    for _ in range(search_steps(len(risk))):
        if lo >= hi:
            break
        mid = (lo + hi + 1) // 2
        if risk[mid - 1, 1] < max_risk:
            lo = mid
        else:
            hi = mid - 1
    return lo


def smallest_risk(risk: np.ndarray, resolution: float = 1e-4) -> float:
    """The smallest ``max_risk`` (on a ``resolution`` grid) for which :func:`sgr_search` accepts any image."""
    if len(risk) == 0 or sgr_search(risk, 1.0) == 0:
        return 1.0
    lo, hi = 0, round(1.0 / resolution)
    while lo + 1 < hi:  # the search accepts more as max_risk grows: bisect on the grid
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if sgr_search(risk, mid * resolution) > 0 else (mid, hi)
    return hi * resolution


@dataclass(frozen=True)
class Conformal:
    """A conformal calibration: sorted true-class scores per group, and the abstention table."""

    method: str
    source: str
    mc_samples: int  # T of the MC means it was calibrated on (the service's n_samples must match when source="mc")
    scores: tuple[np.ndarray, ...]  # ascending true-class scores; one array (marginal) or one per class (Mondrian)
    risk: np.ndarray  # (n, 2) threshold, bound (see :func:`risk_table`)
    delta: float
    min_risk: float = 1.0  # the smallest max_risk it can guarantee (:func:`smallest_risk`; 1.0: none)
    risk_source: str = "mc"  # the probabilities abstention is calibrated on: its verdict is about their top class

    def __post_init__(self) -> None:
        if self.method not in METHODS or self.source not in SOURCES or self.risk_source not in SOURCES:
            raise ValueError(f"unknown conformal method {self.method!r} or source {self.source!r}/{self.risk_source!r}")
        if not 0.0 < self.delta < 1.0 or self.mc_samples < 1:
            raise ValueError("delta must lie in (0, 1) and mc_samples be positive")

    @property
    def mondrian(self) -> bool:
        return self.method.startswith("mondrian_")

    @property
    def score_method(self) -> str:
        return self.method.removeprefix("mondrian_")

    @classmethod
    def fit(
        cls,
        probs: np.ndarray,
        labels: np.ndarray,
        method: str,
        source: str,
        mc_samples: int,
        delta: float = 0.05,
        risk_probs: np.ndarray | None = None,
        risk_source: str | None = None,
    ) -> Conformal:
        """Calibrate the sets on ``probs`` ``(N, K)`` of images with true ``labels``, and abstention on
        ``risk_probs`` of the same images (default: ``probs``; ``risk_source`` says which they are)."""
        labels = np.asarray(labels, dtype=np.int64)
        scores = true_class_scores(probs, labels, method)
        if method.startswith("mondrian_"):
            groups = tuple(np.sort(scores[labels == k]) for k in range(np.asarray(probs).shape[1]))
        else:
            groups = (np.sort(scores),)
        p = np.asarray(probs if risk_probs is None else risk_probs, dtype=np.float64)
        risk = risk_table(p.max(1), p.argmax(1) == labels, delta)
        return cls(method, source, mc_samples, groups, risk, delta, smallest_risk(risk), risk_source or source)

    def thresholds(self, coverage: float) -> np.ndarray:
        """One threshold per group for ``coverage``."""
        return np.array([threshold_of(s, coverage) for s in self.scores])

    def sets(self, probs: np.ndarray, coverage: float) -> np.ndarray:
        """``(N, K)`` boolean: class ``k`` is in image ``n``'s set."""
        return class_scores(probs, self.score_method) <= self.thresholds(coverage)[None, :]

    def risk_threshold(self, max_risk: float) -> float | None:
        """The confidence an image needs to be accepted under ``max_risk``; None when no threshold guarantees it."""
        z = sgr_search(self.risk, max_risk)
        return None if z == 0 else float(self.risk[z - 1, 0])

    def abstain(self, probs: np.ndarray, max_risk: float) -> np.ndarray:
        """``(N,)`` boolean: abstain on the image (its confidence is below the threshold for ``max_risk``); ``probs``
        are the :attr:`risk_source` probabilities, and an accepted image's prediction is their top class."""
        threshold = self.risk_threshold(max_risk)
        conf = np.asarray(probs, dtype=np.float64).max(1)
        return np.ones(len(conf), dtype=bool) if threshold is None else conf < threshold

    def save(self, directory: Path) -> dict[str, Any]:
        """Write :data:`FILE` into ``directory``; returns the manifest's ``conformal`` section."""
        path = directory / FILE
        tensors = {f"scores_{i}": np.ascontiguousarray(s) for i, s in enumerate(self.scores)}
        tensors["risk"] = np.ascontiguousarray(self.risk)
        save_file(tensors, str(path))
        return {
            "file": FILE,
            "sha256": sha256_file(path),
            "method": self.method,
            "source": self.source,
            "mc_samples": self.mc_samples,
            "groups": len(self.scores),
            "calibration_images": int(sum(len(s) for s in self.scores)),
            "delta": self.delta,
            "min_max_risk": self.min_risk,
            "risk_source": self.risk_source,
            "coverage_range": list(COVERAGE_RANGE),
            "rule": (
                f"split conformal ({self.method}, {self.source} probabilities"
                + (f", T={self.mc_samples}" if self.source == "mc" else "")
                + ") on the calibration split with the (n + 1) correction; abstention by selection with guaranteed "
                f"risk on the {self.risk_source} probabilities' top class (Geifman and El-Yaniv 2017; Clopper-Pearson "
                f"bounds, delta={self.delta:g})"
            ),
        }


def load_conformal(directory: Path | str, manifest: Mapping[str, Any]) -> Conformal | None:
    """The verified calibration of an artifact read by ``mcnet.read_manifest``; None when it has none."""
    section = manifest.get("conformal")
    if section is None:
        return None
    mpath = Path(directory) / "manifest.json"
    try:
        name, expected = str(section["file"]), str(section["sha256"])
        method, source = str(section["method"]), str(section["source"])
        mc_samples, groups, delta = int(section["mc_samples"]), int(section["groups"]), float(section["delta"])
        min_risk = float(section["min_max_risk"])
        risk_source = str(section.get("risk_source", source))
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(mpath, f"manifest conformal section is malformed ({exc!r})") from None
    path = verified_file(directory, name, expected, "conformal calibration")
    try:
        tensors = load_file(str(path))
        scores = tuple(tensors[f"scores_{i}"].astype(np.float64) for i in range(groups))
        risk = tensors["risk"].astype(np.float64)
    except Exception as exc:  # safetensors raises several types for malformed files
        raise ArtifactError(path, f"conformal calibration file is not valid ({exc})") from None
    expected_groups = len(manifest.get("class_names", ())) if method.startswith("mondrian_") else 1
    if groups != expected_groups or any(s.ndim != 1 or len(s) == 0 for s in scores):
        raise ArtifactError(path, f"conformal calibration has {groups} score groups, expected {expected_groups}")
    if risk.ndim != 2 or risk.shape[1] != 2 or any(np.any(np.diff(s) < 0) for s in scores):
        raise ArtifactError(path, "conformal calibration tensors have the wrong shape or are not sorted")
    try:
        return Conformal(method, source, mc_samples, scores, risk, delta, min_risk, risk_source)
    except ValueError as exc:
        raise ArtifactError(mpath, f"manifest conformal section is invalid ({exc})") from None
