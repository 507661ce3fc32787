"""The error catalogue over HTTP: every bad input gets its status, a stable code, the field, never a 500."""

from __future__ import annotations

import base64
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service import Settings, create_app

ZERO = [0] * 784


def _with(index: int, value: Any) -> list[Any]:
    flat: list[Any] = [0] * 784
    flat[index] = value
    return flat


def _png(size: int) -> str:
    buf = io.BytesIO()
    Image.new("L", (size, size)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


@pytest.fixture(scope="module")
def small(trained_artifact: Path, make_settings: Callable[..., Settings]) -> Iterator[TestClient]:
    """Tight limits so that every limit can be hit with small requests."""
    settings = make_settings(trained_artifact, max_batch=4, max_samples=50, max_work=100, max_body_bytes=64 * 1024)
    with TestClient(create_app(settings)) as c:
        yield c


JSON_CASES: list[tuple[str, str, Any, int, str, str | None, str]] = [
    # (name, path, json body, status, code, field, text in message)
    ("wrong shape", "/predict", {"images": [[0] * 783]}, 422, "validation_error", "images[0]", "783 values"),
    ("bad row", "/predict", {"images": [[[0] * 28] * 27 + [[0] * 3]]}, 422, "validation_error", "images[0][27]", "3"),
    ("out of range", "/predict", {"images": [_with(5, 255.5)]}, 422, "validation_error", "images[0]", "0-255"),
    ("negative", "/predict", {"images": [ZERO, _with(0, -1)]}, 422, "validation_error", "images[1]", "0-255"),
    ("string pixel", "/predict", {"images": [_with(1, "9")]}, 422, "validation_error", "images[0]", "is str"),
    ("empty batch", "/predict", {"images": []}, 422, "validation_error", "images", "empty"),
    ("oversized batch", "/predict", {"images": [ZERO] * 5}, 422, "validation_error", "images", "limit is 4"),
    ("no images", "/predict", {}, 422, "validation_error", "images", "exactly one"),
    ("both inputs", "/predict", {"images": [ZERO], "images_png": [_png(28)]}, 422, "validation_error", "images", ""),
    ("unknown field", "/predict", {"images": [ZERO], "extra": 1}, 422, "validation_error", "extra", "not permitted"),
    ("images not a list", "/predict", {"images": "abc"}, 422, "validation_error", "images", "list"),
    ("body not an object", "/predict", [ZERO], 422, "validation_error", "body", ""),
    ("png wrong size", "/predict", {"images_png": [_png(32)]}, 422, "validation_error", "images_png[0]", "32x32"),
    ("bad base64", "/predict", {"images_png": ["@@@"]}, 400, "undecodable_input", "images_png[0]", "base64"),
    ("not a png", "/predict", {"images_png": ["QUJDRA=="]}, 400, "undecodable_input", "images_png[0]", "PNG"),
    ("n_samples 0", "/predict/uncertainty", {"images": [ZERO], "n_samples": 0}, 422, "validation_error",
     "n_samples", "between 1 and 50"),
    ("n_samples too big", "/predict/uncertainty", {"images": [ZERO], "n_samples": 51}, 422, "validation_error",
     "n_samples", "between 1 and 50"),
    ("n_samples not int", "/predict/uncertainty", {"images": [ZERO], "n_samples": "many"}, 422, "validation_error",
     "n_samples", ""),
    ("work limit", "/predict/uncertainty", {"images": [ZERO] * 3, "n_samples": 50}, 422, "validation_error",
     "n_samples", "work limit"),
    ("negative seed", "/predict/uncertainty", {"images": [ZERO], "seed": -1}, 422, "validation_error", "seed", ""),
]  # fmt: skip


@pytest.mark.parametrize(("name", "path", "payload", "status", "code", "field", "text"), JSON_CASES)
def test_json_errors(
    small: TestClient, name: str, path: str, payload: Any, status: int, code: str, field: str | None, text: str
) -> None:
    r = small.post(path, json=payload)
    assert r.status_code == status, r.text
    err = r.json()["error"]
    assert set(err) == {"code", "message", "field"}
    assert err["code"] == code and err["field"] == field and text in err["message"], err


@pytest.mark.parametrize("raw", [b"NaN", b"Infinity", b"-Infinity"])
def test_non_finite_pixels_are_422(small: TestClient, raw: bytes) -> None:
    content = b'{"images": [[' + b"0," * 100 + raw + b"," + b"0," * 682 + b"0]]}"
    r = small.post("/predict", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["field"] == "images[0]" and "non-finite" in r.json()["error"]["message"]


def test_invalid_json_is_400(small: TestClient) -> None:
    r = small.post("/predict", content=b'{"images": [', headers={"content-type": "application/json"})
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"


def test_body_over_the_limit_is_413_by_content_length(small: TestClient) -> None:
    content = b'{"images": [' + b"0," * 40_000 + b"0]}"
    r = small.post("/predict", content=content, headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"
    assert "65536" in r.json()["error"]["message"]


def test_chunked_body_over_the_limit_is_413(small: TestClient) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"images": ['
        for _ in range(100):
            yield b"0," * 1000
        yield b"0]}"

    r = small.post("/predict", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


def test_unknown_route_and_wrong_method_use_the_error_shape(small: TestClient) -> None:
    r = small.get("/nope")
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = small.get("/predict")
    assert r.status_code == 405 and r.json()["error"]["code"] == "method_not_allowed"


def test_no_input_makes_a_500(small: TestClient) -> None:
    """A sweep of odd payloads: every answer is a 2xx/4xx in the common shape."""
    odd: list[Any] = [None, 0, "x", [], {}, {"images": None}, {"images": [None]}, {"images": [[]]},
                      {"images": [[[]]]}, {"images": [{}]}, {"images_png": [None]}, {"images_png": [""]},
                      {"images_png": "x"}, {"images": [ZERO], "n_samples": 1e308}, {"images": [ZERO], "seed": 2**70},
                      {"images": [[1e308] * 784]}, {"images": [[10**30] * 784]}]  # fmt: skip
    for payload in odd:
        for path in ("/predict", "/predict/uncertainty"):
            r = small.post(path, json=payload)
            assert r.status_code < 500, (path, payload, r.text)
            if r.status_code >= 400:
                assert set(r.json()["error"]) == {"code", "message", "field"}
