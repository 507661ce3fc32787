"""Fixtures for the service tests: real Fashion-MNIST test images, settings and an in-process client."""

from __future__ import annotations

import base64
import gzip
import io
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from service import Settings, create_app


@pytest.fixture(scope="session")
def test_images(fashion_dir: Path) -> tuple[np.ndarray, np.ndarray]:
    """The first 256 Fashion-MNIST test images (uint8, 256x28x28) and their labels, read from the .gz files."""
    with gzip.open(fashion_dir / "t10k-images-idx3-ubyte.gz") as fh:
        images = np.frombuffer(fh.read(), dtype=np.uint8, offset=16).reshape(-1, 28, 28)[:256].copy()
    with gzip.open(fashion_dir / "t10k-labels-idx1-ubyte.gz") as fh:
        labels = np.frombuffer(fh.read(), dtype=np.uint8, offset=8)[:256].copy()
    return images, labels


def _png_b64(array: np.ndarray, mode: str = "L") -> str:
    buf = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def _make_settings(model_dir: Path, **overrides: Any) -> Settings:
    # The MC kernel runs in the app's own threads here (a kernel process per test app would cost seconds each);
    # test_mcprocess.py runs it in its process, and the real servers of the e2e and v2 tests use their defaults.
    # The C MC kernel must be built (make install): "on" fails loudly when it is not.
    values: dict[str, Any] = {
        "model_dir": model_dir, "device": "cpu", "default_samples": 20, "mc_process": "off", "mc_native": "on",
    }  # fmt: skip
    values |= overrides
    return Settings(**values)


@pytest.fixture(scope="session")
def png_b64() -> Callable[..., str]:
    """``png_b64(uint8 array, mode="L")`` -> base64 PNG of that image converted to ``mode``."""
    return _png_b64


@pytest.fixture(scope="session")
def make_settings() -> Callable[..., Settings]:
    """``make_settings(model_dir, **overrides)`` -> CPU settings for tests."""
    return _make_settings


@pytest.fixture(scope="module")
def client(trained_artifact: Path) -> Iterator[TestClient]:
    """In-process client of an app that has loaded and warmed up the trained artifact."""
    with TestClient(create_app(_make_settings(trained_artifact))) as c:
        yield c
