"""Compose smoke test, client side: POST real Fashion-MNIST test images to both endpoints and
check the answers, then keep some traffic flowing so every dashboard query has data.

    python3 scripts/smoke_requests.py --url http://127.0.0.1:18200 [--images 32] [--traffic-s 20]

Standard library only (runs with any python3). Exit 1 with a message on the first wrong answer.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import struct
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

DATA = Path("/usr/share/datasets/fashion-mnist")


class SmokeError(AssertionError):
    pass


def load_test_images(n: int, data_dir: Path = DATA) -> tuple[list[list[int]], list[int]]:
    """The first ``n`` images (flat 784 lists of 0-255) and labels of the real t10k split."""
    with gzip.open(data_dir / "t10k-images-idx3-ubyte.gz", "rb") as fh:
        magic, count, rows, cols = struct.unpack(">IIII", fh.read(16))
        if magic != 2051 or (rows, cols) != (28, 28) or count < n:
            raise SmokeError(f"unexpected image file header {magic, count, rows, cols}")
        raw = fh.read(n * 784)
    with gzip.open(data_dir / "t10k-labels-idx1-ubyte.gz", "rb") as fh:
        magic, count = struct.unpack(">II", fh.read(8))
        if magic != 2049:
            raise SmokeError(f"unexpected label file header {magic}")
        labels = list(fh.read(n))
    return [list(raw[i * 784 : (i + 1) * 784]) for i in range(n)], labels


def call(url: str, body: dict[str, Any] | None = None, expect: int = 200) -> Any:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=60) as resp:
            status, payload = resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
    if status != expect:
        raise SmokeError(f"{'POST' if body else 'GET'} {url}: HTTP {status}, expected {expect}: {payload[:300]!r}")
    return json.loads(payload) if payload.startswith(b"{") else payload.decode()


def check_probabilities(probs: list[float], where: str) -> None:
    if len(probs) != 10 or abs(sum(probs) - 1.0) > 1e-3 or min(probs) < 0:
        raise SmokeError(f"{where}: not a distribution over 10 classes: {probs}")


def check_predict(base: str, images: list[list[int]], labels: list[int], classes: list[str]) -> float:
    out = call(f"{base}/predict", {"images": images})
    preds = out["predictions"]
    if len(preds) != len(images):
        raise SmokeError(f"/predict: {len(preds)} predictions for {len(images)} images")
    for i, p in enumerate(preds):
        check_probabilities(p["probabilities"], f"/predict image {i}")
        if p["label"] != classes[p["class_id"]] or p["class_id"] != max(range(10), key=p["probabilities"].__getitem__):
            raise SmokeError(f"/predict image {i}: inconsistent answer {p}")
    accuracy: float = sum(p["class_id"] == y for p, y in zip(preds, labels, strict=True)) / len(labels)
    if accuracy < 0.5:  # even one quick epoch gets ~80% on these; 10 classes give 10% by chance
        raise SmokeError(f"/predict: accuracy {accuracy:.2f} on {len(labels)} real test images (expected >= 0.5)")
    return accuracy


def check_uncertainty(base: str, images: list[list[int]], n_samples: int) -> float:
    body = {"images": images, "n_samples": n_samples, "seed": 7}
    out = call(f"{base}/predict/uncertainty", body)
    if out["n_samples"] != n_samples or len(out["predictions"]) != len(images):
        raise SmokeError(f"/predict/uncertainty: wrong shape of answer: n_samples={out['n_samples']}")
    for i, p in enumerate(out["predictions"]):
        check_probabilities(p["mean_probabilities"], f"/predict/uncertainty image {i}")
        mi, pe = p["mutual_information"], p["predictive_entropy"]
        if not (math.isfinite(mi) and -1e-6 <= mi <= pe + 1e-6 <= math.log(10) + 1e-3):
            raise SmokeError(f"/predict/uncertainty image {i}: need 0 <= MI <= entropy <= ln 10, got MI={mi} H={pe}")
        if p["uncertain"] != (mi > out["uncertainty_threshold"] or p.get("input_outlier") is True):
            raise SmokeError(f"/predict/uncertainty image {i}: 'uncertain' disagrees with the threshold")
    again = call(f"{base}/predict/uncertainty", body)
    if again["predictions"] != out["predictions"]:
        raise SmokeError("/predict/uncertainty: the same seed gave a different answer")
    flagged: int = sum(bool(p["uncertain"]) for p in out["predictions"])
    return flagged / len(images)


def check_sets(base: str, images: list[list[int]], labels: list[int], conformal: dict[str, object] | None) -> str:
    """Conformal prediction sets and abstention, when the artifact has a calibration."""
    if conformal is None:
        return "no conformal calibration"
    n = conformal["mc_samples"]
    risk = max(0.2, float(str(conformal["min_max_risk"])))
    out = call(f"{base}/predict/uncertainty", {"images": images, "n_samples": n, "coverage": 0.9, "max_risk": risk})
    if out["coverage"] != 0.9 or out["conformal_method"] != conformal["method"]:
        raise SmokeError(
            f"/predict/uncertainty with coverage: not echoed ({out['coverage']}, {out['conformal_method']})"
        )
    covered = 0
    for i, (p, y) in enumerate(zip(out["predictions"], labels, strict=True)):
        members = p["prediction_set"]
        if not isinstance(members, list) or not all(0 <= k < 10 for k in members) or not isinstance(p["abstain"], bool):
            raise SmokeError(f"/predict/uncertainty image {i}: bad prediction_set {members} / abstain {p['abstain']}")
        covered += y in members
    return f"coverage 0.9 sets hold the label for {covered}/{len(labels)}"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--n-samples", type=int, default=50)
    ap.add_argument("--traffic-s", type=float, default=20.0, help="seconds of extra traffic for the dashboard")
    args = ap.parse_args(argv)
    base = args.url.rstrip("/")
    images, labels = load_test_images(args.images)
    try:
        call(f"{base}/livez")
        ready = call(f"{base}/readyz")
        if ready.get("mc_code") != "c":  # the image's nativegen stage built the C kernel; this CPU has AVX2 and FMA
            raise SmokeError(f"/readyz: the MC kernel is not the C one: {ready}")
        info = call(f"{base}/info")
        accuracy = check_predict(base, images, labels, info["class_names"])
        share = check_uncertainty(base, images, args.n_samples)
        sets = check_sets(base, images, labels, info.get("conformal"))
        set_body = {} if info.get("conformal") is None else {"coverage": 0.9}
        set_samples = 20 if info.get("conformal") is None else info["conformal"]["mc_samples"]
        call(f"{base}/predict", {"images": [[0] * 783]}, expect=422)  # a client error, seen on the errors panel
        deadline = time.monotonic() + args.traffic_s
        requests = 0
        while time.monotonic() < deadline:
            call(f"{base}/predict", {"images": images[: 1 + requests % 8]})
            body = {"images": images[:4], "n_samples": set_samples, "seed": requests, **set_body}
            call(f"{base}/predict/uncertainty", body)
            requests += 2
            time.sleep(0.2)
    except SmokeError as exc:
        print(f"smoke_requests: FAIL: {exc}", file=sys.stderr)
        return 1
    model = info["model"]
    print(
        f"smoke_requests: OK: model {model['name']} {model['version']}, MC kernel {ready['mc_code']} in "
        f"{ready['mc_kernel']}, /predict accuracy {accuracy:.2f} on "
        f"{len(labels)} real test images, uncertain share {share:.2f}, {sets}, {requests} more requests for the "
        "dashboard"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
