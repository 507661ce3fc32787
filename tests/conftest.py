"""Shared fixtures. Tests that need the real Fashion-MNIST fail loudly if it is missing."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

# In-process apps start no gRPC server unless a test asks for one (each would otherwise bind port 8001);
# servers started as subprocesses with a cleaned environment keep the default.
os.environ.setdefault("MCSERVE_GRPC_PORT", "0")

DEFAULT_DATA_DIR = "/usr/share/datasets/fashion-mnist"
FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


@pytest.fixture(scope="session")
def fashion_dir() -> Path:
    """Directory holding the four original Fashion-MNIST .gz files (never skipped)."""
    path = Path(os.environ.get("FASHION_MNIST_DIR", DEFAULT_DATA_DIR))
    missing = [f for f in FILES if not (path / f).is_file()]
    if missing:
        pytest.fail(
            f"Fashion-MNIST not found in {path} (missing {missing}). "
            "Run `make install` (installs Debian's dataset-fashion-mnist) or set FASHION_MNIST_DIR.",
            pytrace=False,
        )
    return path


@pytest.fixture(scope="session")
def trained_artifact(tmp_path_factory: pytest.TempPathFactory, fashion_dir: Path) -> Path:
    """A real exported artifact: the training pipeline run briefly on real Fashion-MNIST (1 epoch, 2000 images)."""
    from training.config import TrainConfig
    from training.pipeline import run

    out = tmp_path_factory.mktemp("trained") / "model"
    run(TrainConfig(out_dir=out, data_dir=fashion_dir, epochs=1, train_limit=2000, eval_mc_samples=10, plots=False))
    return out
