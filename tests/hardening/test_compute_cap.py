"""Compute cap: one uncertainty request may not ask for more than MCSERVE_MAX_WORK = n_samples x images.

Checked at the boundary on a real server with ``max_work=800, max_samples=200, max_batch=8``,
for list and PNG inputs; the refusal happens before any decoding or inference.
"""

from __future__ import annotations

import base64
import io

import httpx
import numpy as np
import pytest
from hardening_support import LIMITS, Server
from PIL import Image

BLANK = [0] * 784


def _png() -> str:
    buf = io.BytesIO()
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


# (images, n_samples, allowed): work = images x n_samples against max_work = 800
BOUNDARY = [
    (4, 200, True),  # 800: exactly the cap, and n_samples at its own max
    (5, 160, True),  # 800
    (8, 100, True),  # 800 with a full batch
    (5, 161, False),  # 805
    (8, 101, False),  # 808
    (5, 200, False),  # 1000
    (8, None, True),  # default_samples 10 x 8 = 80
]


@pytest.mark.parametrize("form", ["images", "images_png"])
@pytest.mark.parametrize(("count", "n_samples", "allowed"), BOUNDARY)
def test_work_cap_boundary(hardened: Server, form: str, count: int, n_samples: int | None, allowed: bool) -> None:
    assert LIMITS["max_work"] == 800 and LIMITS["max_samples"] == 200
    item = BLANK if form == "images" else _png()
    body: dict[str, object] = {form: [item] * count, "seed": 3}
    if n_samples is not None:
        body["n_samples"] = n_samples
    r = httpx.post(f"{hardened.url}/predict/uncertainty", json=body, timeout=60)
    if allowed:
        assert r.status_code == 200, r.text
        assert r.json()["n_samples"] == (n_samples or LIMITS["default_samples"])
    else:
        assert r.status_code == 422, r.text
        error = r.json()["error"]
        assert error["field"] == "n_samples" and error["code"] == "validation_error"
        assert f"= {count * n_samples} exceeds the per-request work limit 800" in error["message"], error  # type: ignore[operator]


def test_info_reports_the_cap(hardened: Server) -> None:
    limits = httpx.get(f"{hardened.url}/info", timeout=10).json()["limits"]
    assert limits["max_work"] == LIMITS["max_work"] and limits["max_samples"] == LIMITS["max_samples"]


def test_the_cap_is_checked_before_the_images(hardened: Server) -> None:
    """Too much work with broken images: the cap answers first, so no decoding is spent on a refused request."""
    r = httpx.post(
        f"{hardened.url}/predict/uncertainty", json={"images": [[1, 2, 3]] * 8, "n_samples": 200}, timeout=30
    )
    assert r.status_code == 422 and r.json()["error"]["field"] == "n_samples"
