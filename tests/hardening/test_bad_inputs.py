"""Every malformed request of the catalogue gets its documented 4xx, in the one error shape, naming the field.

Run against a real uvicorn process; after each case the service must still be ready and
still answer a good request.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest
from catalogue import MC, PREDICT, Case, cases
from hardening_support import LIMITS, Server

_IMAGE_CACHE: dict[str, np.ndarray] = {}


def first_test_image(fashion_dir: Path) -> np.ndarray:
    """Image 0 of the real Fashion-MNIST test set (an ankle boot), uint8 28x28."""
    key = str(fashion_dir)
    if key not in _IMAGE_CACHE:
        with gzip.open(fashion_dir / "t10k-images-idx3-ubyte.gz") as fh:
            _IMAGE_CACHE[key] = np.frombuffer(fh.read(16 + 784), dtype=np.uint8, offset=16).reshape(28, 28).copy()
    return _IMAGE_CACHE[key]


@pytest.fixture(scope="module")
def http(hardened: Server) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hardened.url, timeout=30) as client:
        yield client


def _catalogue() -> list[Case]:
    image = first_test_image(Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist")))
    return cases(image, LIMITS)


@pytest.mark.parametrize("case", _catalogue(), ids=str)
def test_bad_input_gets_documented_4xx_naming_the_field(case: Case, http: httpx.Client) -> None:
    r = http.post(case.path, content=case.body, headers={"content-type": case.content_type})
    assert r.status_code == case.status, f"{case.name}: {r.status_code} {r.text[:300]}"
    assert r.headers["content-type"].startswith("application/json")
    error = r.json()["error"]
    assert set(error) == {"code", "message", "field"}
    assert error["field"] == case.field, error
    assert case.field is not None and case.field.split("[")[0] in error["message"], error
    assert http.get("/readyz").status_code == 200


def test_service_still_serves_after_the_catalogue(http: httpx.Client, fashion_dir: Path) -> None:
    image = first_test_image(fashion_dir).tolist()
    for case in _catalogue():  # all of them once more, back to back, then good requests on both endpoints
        http.post(case.path, content=case.body, headers={"content-type": case.content_type})
    assert http.post(PREDICT, json={"images": [image]}).status_code == 200
    r = http.post(MC, json={"images": [image], "n_samples": 20, "seed": 1})
    assert r.status_code == 200 and len(r.json()["predictions"]) == 1
    assert http.get("/readyz").status_code == 200


def test_every_rejection_is_counted_under_its_route_and_status(hardened: Server) -> None:
    """The request counter is exact for refused requests too (413s from the body limit included)."""
    catalogue = _catalogue()
    keys = {(c.path, str(c.status)) for c in catalogue}
    before = {k: hardened.metric("mcserve_http_requests_total", route=k[0], method="POST", status=k[1]) for k in keys}
    with httpx.Client(base_url=hardened.url, timeout=30) as client:
        for case in catalogue:
            client.post(case.path, content=case.body, headers={"content-type": case.content_type})
    for path, status in keys:
        sent = sum(1 for c in catalogue if (c.path, str(c.status)) == (path, status))
        after = hardened.metric("mcserve_http_requests_total", route=path, method="POST", status=status)
        assert after - before[(path, status)] == sent, (path, status)


@pytest.mark.parametrize(
    ("method", "path", "status", "allow"),
    [
        ("PUT", PREDICT, 405, "POST"),
        ("GET", PREDICT, 405, "POST"),
        ("PATCH", MC, 405, "POST"),
        ("POST", "/livez", 405, "GET"),
        ("DELETE", "/info", 405, "GET"),
        ("GET", "/no-such-route", 404, None),
    ],
)
def test_wrong_method_or_route_gets_the_error_shape(
    http: httpx.Client, method: str, path: str, status: int, allow: str | None
) -> None:
    r = http.request(method, path)
    assert r.status_code == status and r.headers.get("allow") == allow
    assert r.json()["error"]["code"] in ("method_not_allowed", "not_found")
