"""Conformal prediction sets and abstention through the REST API (``/predict/uncertainty``), on real images.

The artifact is the real training pipeline's (one short epoch on real Fashion-MNIST, calibrated on its own 2,500
calibration images): the split-conformal guarantee holds for any network, so coverage is checked on test images
the training report never looked at one by one (5,000-6,999 of the official test set).
"""

from __future__ import annotations

import gzip
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from mcnet import CLASS_NAMES, DropoutMLP, read_manifest, save_artifact
from mcnet.conformal import Conformal
from service import create_app

from .conftest import _make_settings

FIRST, LAST = 5000, 7000  # test images used here (the report only aggregates over all 10,000)


@pytest.fixture(scope="module")
def held_out(fashion_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    with gzip.open(fashion_dir / "t10k-images-idx3-ubyte.gz") as fh:
        images = np.frombuffer(fh.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)[FIRST:LAST].copy()
    with gzip.open(fashion_dir / "t10k-labels-idx1-ubyte.gz") as fh:
        labels = np.frombuffer(fh.read(), dtype=np.uint8, offset=8)[FIRST:LAST].copy()
    return images, labels


@pytest.fixture(scope="module")
def calibration(trained_artifact: Path) -> dict[str, Any]:
    section = read_manifest(trained_artifact)["conformal"]
    assert section is not None, "the training pipeline must export a conformal calibration"
    return section


@pytest.fixture(scope="module")
def sets_client(trained_artifact: Path) -> Iterator[TestClient]:
    with TestClient(create_app(_make_settings(trained_artifact))) as c:
        yield c


def _ask(client: TestClient, images: np.ndarray, n: int, **fields: Any) -> Any:
    r = client.post("/predict/uncertainty", json={"images": images.tolist(), "n_samples": n, **fields})
    assert r.status_code == 200, r.text
    return r.json()


@pytest.mark.parametrize(("coverage", "tolerance"), [(0.90, 0.025), (0.99, 0.01)])
def test_coverage_holds_through_the_api(
    sets_client: TestClient, held_out: tuple[np.ndarray, np.ndarray], calibration: dict[str, Any], coverage: float,
    tolerance: float,
) -> None:  # fmt: skip
    images, labels = held_out
    covered, sizes = [], []
    for start in range(0, len(images), 250):
        body = _ask(sets_client, images[start : start + 250], calibration["mc_samples"], coverage=coverage, seed=start)
        assert body["coverage"] == coverage and body["conformal_method"] == calibration["method"]
        for prediction, label in zip(body["predictions"], labels[start : start + 250], strict=True):
            members = prediction["prediction_set"]
            assert len(set(members)) == len(members) and all(0 <= k < 10 for k in members)
            assert prediction["prediction_set_labels"] == [CLASS_NAMES[k] for k in members]
            covered.append(int(label) in members)
            sizes.append(len(members))
    # 2,500 calibration and 2,000 test images: about 2.8 standard deviations of the two sampling noises
    assert abs(np.mean(covered) - coverage) <= tolerance, (np.mean(covered), np.mean(sizes))


def test_sets_are_ordered_most_probable_first_and_nested_in_coverage(
    sets_client: TestClient, held_out: tuple[np.ndarray, np.ndarray], calibration: dict[str, Any]
) -> None:
    images = held_out[0][:64]
    n = calibration["mc_samples"]
    small = _ask(sets_client, images, n, coverage=0.8, seed=3)["predictions"]
    large = _ask(sets_client, images, n, coverage=0.99, seed=3)["predictions"]
    plain = _ask(sets_client, images, n, seed=3)
    assert plain["coverage"] is None and plain["conformal_method"] is None
    for a, b, p in zip(small, large, plain["predictions"], strict=True):
        assert set(a["prediction_set"]) <= set(b["prediction_set"])
        assert p["prediction_set"] is None and p["abstain"] is None
        assert a["mean_probabilities"] == p["mean_probabilities"]  # asking for sets changes no other number
    if calibration["source"] == "mc":  # ordered by the probabilities the sets come from
        for a in large:
            probs = a["mean_probabilities"]
            assert [probs[k] for k in a["prediction_set"]] == sorted(
                (probs[k] for k in a["prediction_set"]), reverse=True
            )


def test_abstention_accepts_only_confident_images_and_keeps_the_risk(
    sets_client: TestClient, held_out: tuple[np.ndarray, np.ndarray], calibration: dict[str, Any]
) -> None:
    images, labels = held_out
    risk = max(0.05, calibration["min_max_risk"])
    accepted = wrong = 0
    for start in range(0, len(images), 250):
        body = _ask(sets_client, images[start : start + 250], calibration["mc_samples"], max_risk=risk, seed=start)
        assert body["max_risk"] == risk
        for prediction, label in zip(body["predictions"], labels[start : start + 250], strict=True):
            assert isinstance(prediction["abstain"], bool) and prediction["prediction_set"] is None
            if not prediction["abstain"]:
                accepted += 1
                wrong += prediction["class_id"] != int(label)
    assert accepted > 0
    assert wrong / accepted <= risk + 0.02, (wrong, accepted)  # the bound holds w.p. 0.95, plus test noise


BAD = [
    ({"coverage": 0}, "coverage"),
    ({"coverage": 1}, "coverage"),
    ({"coverage": 0.3}, "coverage"),
    ({"coverage": 0.9995}, "coverage"),
    ({"coverage": 1.5}, "coverage"),
    ({"coverage": -0.9}, "coverage"),
    ({"coverage": "0.9"}, "coverage"),
    ({"coverage": True}, "coverage"),
    ({"coverage": [0.9]}, "coverage"),
    ({"max_risk": 0}, "max_risk"),
    ({"max_risk": 1.0}, "max_risk"),
    ({"max_risk": 1e-9}, "max_risk"),
    ({"max_risk": "low"}, "max_risk"),
    ({"max_risk": -0.1}, "max_risk"),
]


@pytest.mark.parametrize(("fields", "field"), BAD)
def test_bad_coverage_and_max_risk_are_422s_naming_the_field(
    sets_client: TestClient, held_out: tuple[np.ndarray, np.ndarray], calibration: dict[str, Any],
    fields: dict[str, Any], field: str,
) -> None:  # fmt: skip
    body = {"images": held_out[0][:1].tolist(), "n_samples": calibration["mc_samples"], **fields}
    r = sets_client.post("/predict/uncertainty", json=body)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == field


def _hand_artifact(tmp_path: Path, conformal: Conformal | None) -> Path:
    out = tmp_path / "model"
    save_artifact(out, DropoutMLP(), conformal=conformal)
    return out


def test_mc_calibration_needs_its_own_number_of_passes(tmp_path: Path, held_out: tuple[np.ndarray, np.ndarray]) -> None:
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(10), size=500)
    conformal = Conformal.fit(probs, rng.integers(0, 10, 500), "lac", "mc", mc_samples=12)
    with TestClient(create_app(_make_settings(_hand_artifact(tmp_path, conformal)))) as c:
        image = held_out[0][:1].tolist()
        r = c.post("/predict/uncertainty", json={"images": image, "n_samples": 20, "coverage": 0.9})
        assert r.status_code == 422 and r.json()["error"]["field"] == "n_samples", r.text
        assert "12" in r.json()["error"]["message"]
        r = c.post("/predict/uncertainty", json={"images": image, "n_samples": 12, "coverage": 0.9})
        assert r.status_code == 200 and isinstance(r.json()["predictions"][0]["prediction_set"], list)


def test_an_artifact_without_calibration_still_serves_and_says_sets_are_unavailable(
    tmp_path: Path, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    with TestClient(create_app(_make_settings(_hand_artifact(tmp_path, None)))) as c:
        image = held_out[0][:1].tolist()
        assert c.post("/predict/uncertainty", json={"images": image}).status_code == 200
        for field in ("coverage", "max_risk"):
            r = c.post("/predict/uncertainty", json={"images": image, field: 0.9 if field == "coverage" else 0.1})
            assert r.status_code == 422 and r.json()["error"]["field"] == field, r.text
            assert "no conformal calibration" in r.json()["error"]["message"]
            assert "python -m training" in r.json()["error"]["message"]


def test_set_sizes_and_abstentions_reach_the_metrics(
    sets_client: TestClient, held_out: tuple[np.ndarray, np.ndarray], calibration: dict[str, Any]
) -> None:
    def count() -> float:
        for line in sets_client.get("/metrics").text.splitlines():
            if line.startswith('mcserve_prediction_set_size_count{protocol="rest"}'):
                return float(line.split()[-1])
        raise AssertionError("mcserve_prediction_set_size_count missing")

    before = count()
    _ask(sets_client, held_out[0][:7], calibration["mc_samples"], coverage=0.9, max_risk=0.5, seed=1)
    assert count() == before + 7


def test_abstention_judges_the_answered_class_on_the_mc_means(
    tmp_path: Path, held_out: tuple[np.ndarray, np.ndarray]
) -> None:
    """Sets from eval-mode probabilities (no n_samples constraint), abstention calibrated on the MC means (it is
    about ``class_id``, their top class): it needs the calibration's passes and uses the answered means."""
    rng = np.random.default_rng(1)
    probs = rng.dirichlet(np.full(10, 0.3), size=800)
    labels = np.array([rng.choice(10, p=p) for p in probs])
    conformal = Conformal.fit(probs, labels, "lac", "eval", 12, 0.05, risk_probs=probs, risk_source="mc")
    assert conformal.risk_source == "mc" and conformal.min_risk < 0.5
    with TestClient(create_app(_make_settings(_hand_artifact(tmp_path, conformal)))) as c:
        image = held_out[0][:4].tolist()
        r = c.post("/predict/uncertainty", json={"images": image, "n_samples": 20, "coverage": 0.9})
        assert r.status_code == 200, r.text
        r = c.post("/predict/uncertainty", json={"images": image, "n_samples": 20, "max_risk": 0.5})
        assert r.status_code == 422 and r.json()["error"]["field"] == "n_samples", r.text
        body = c.post("/predict/uncertainty", json={"images": image, "n_samples": 12, "max_risk": 0.5, "seed": 9})
        predictions = body.json()["predictions"]
        means = np.array([p["mean_probabilities"] for p in predictions])
        assert [p["abstain"] for p in predictions] == conformal.abstain(means, 0.5).tolist()
