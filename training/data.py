"""Fashion-MNIST as uint8 tensors in memory, a seeded validation split, and the OOD sets.

The data is read through ``torchvision.datasets.FashionMNIST``.  Debian's
``dataset-fashion-mnist`` installs the four original ``.gz`` files flat in a
read-only directory, while torchvision expects ``ROOT/FashionMNIST/raw/`` with
the decompressed files; :func:`load_fashion_mnist` decompresses them (about
55 MB) into a temporary root, reads the tensors once and deletes it.
"""

from __future__ import annotations

import functools
import gzip
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torchvision.datasets import FashionMNIST

DEFAULT_DATA_DIR = Path("/usr/share/datasets/fashion-mnist")
DATA_FILES = (
    "train-images-idx3-ubyte.gz",
    "train-labels-idx1-ubyte.gz",
    "t10k-images-idx3-ubyte.gz",
    "t10k-labels-idx1-ubyte.gz",
)


class DataNotFoundError(FileNotFoundError):
    """Fashion-MNIST is not where we looked; the message names the remedies."""

    def __init__(self, data_dir: Path) -> None:
        super().__init__(
            f"Fashion-MNIST not found in {data_dir} (expected the four original files "
            f"{', '.join(DATA_FILES)}, flat or under FashionMNIST/raw/). Remedies: install it with "
            "`apt-get install dataset-fashion-mnist` (files land in /usr/share/datasets/fashion-mnist) or point "
            "--data-dir / FASHION_MNIST_DIR at a copy; or, when online, pass --download to fetch it into --data-dir."
        )
        self.data_dir = data_dir


@dataclass(frozen=True)
class Split:
    """Images as uint8 ``(N, 28, 28)`` on the 0-255 scale and int64 labels ``(N,)``."""

    images: torch.Tensor
    labels: torch.Tensor

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    def head(self, n: int | None) -> Split:
        return self if n is None else Split(self.images[:n], self.labels[:n])


@dataclass(frozen=True)
class FashionData:
    train: Split
    val: Split
    test: Split
    calib: Split  # conformal calibration only: carved out of the held-out images, disjoint from val and train


def read_split(root: Path, train: bool) -> Split:
    """The training (60k) or test (10k) images of a torchvision root as uint8/int64 tensors."""
    ds = FashionMNIST(str(root), train=train, download=False)
    return Split(ds.data.to(torch.uint8).contiguous(), ds.targets.to(torch.int64).contiguous())


@contextmanager
def torchvision_root(data_dir: Path) -> Iterator[Path]:
    """A temporary torchvision root (``FashionMNIST/raw``, decompressed) made from a flat directory of the .gz files.

    The Debian directory is flat and read-only, while torchvision expects ``root/FashionMNIST/raw``.
    """
    with tempfile.TemporaryDirectory(prefix="fashion-mnist-") as tmp:
        raw = Path(tmp) / "FashionMNIST" / "raw"
        raw.mkdir(parents=True)
        for name in DATA_FILES:
            with gzip.open(data_dir / name, "rb") as src, open(raw / name.removesuffix(".gz"), "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        yield Path(tmp)


@functools.lru_cache(maxsize=2)
def _read_flat_gz(data_dir: Path) -> tuple[Split, Split]:
    """Read a flat .gz directory once per process (tensors are never mutated)."""
    with torchvision_root(data_dir) as root:
        return read_split(root, True), read_split(root, False)


def read_train_test(data_dir: Path, download: bool = False) -> tuple[Split, Split]:
    """Return (train 60k, test 10k) from ``data_dir``; raise :class:`DataNotFoundError` if absent."""
    if all((data_dir / name).is_file() for name in DATA_FILES):
        return _read_flat_gz(data_dir)
    raw = data_dir / "FashionMNIST" / "raw"
    if all((raw / name.removesuffix(".gz")).is_file() for name in DATA_FILES):
        return read_split(data_dir, True), read_split(data_dir, False)
    if download:
        FashionMNIST(str(data_dir), train=True, download=True)
        return read_split(data_dir, True), read_split(data_dir, False)
    raise DataNotFoundError(data_dir)


def load_fashion_mnist(
    data_dir: Path, val_size: int, seed: int, download: bool = False, calib_size: int = 0
) -> FashionData:
    """Train/validation/calibration/test splits.

    ``val_size`` images, a seeded random subset of the training set, are held out; the first ``calib_size`` of them
    (in the seeded order) form the calibration split and the rest the validation split, so the training images
    do not depend on ``calib_size``.
    """
    train, test = read_train_test(data_dir, download)
    if not 0 < val_size < len(train):
        raise ValueError(f"val_size must lie in (0, {len(train)}), got {val_size}")
    if not 0 <= calib_size < val_size:
        raise ValueError(
            f"calib_size must lie in [0, val_size={val_size}) (it is carved out of the held-out images), got "
            f"{calib_size}: lower --calib-size or raise --val-size"
        )
    perm = torch.randperm(len(train), generator=torch.Generator().manual_seed(seed))
    calib_idx, val_idx, train_idx = perm[:calib_size], perm[calib_size:val_size], perm[val_size:]
    return FashionData(
        train=Split(train.images[train_idx], train.labels[train_idx]),
        val=Split(train.images[val_idx], train.labels[val_idx]),
        test=test,
        calib=Split(train.images[calib_idx], train.labels[calib_idx]),
    )


def digits_ood() -> torch.Tensor:
    """scikit-learn's bundled handwritten digits (1,797), 8x8 -> 20x20 bilinear -> padded 28x28, 0-255 float."""
    from sklearn.datasets import load_digits

    images = torch.from_numpy(load_digits().images).to(torch.float32).unsqueeze(1)  # 0..16
    scaled = F.interpolate(images, size=(20, 20), mode="bilinear", align_corners=False)
    padded = F.pad(scaled, (4, 4, 4, 4))
    return (padded.squeeze(1) * (255.0 / 16.0)).clamp(0.0, 255.0)


def inverted(images: torch.Tensor) -> torch.Tensor:
    """Photographic negatives: 255 - x."""
    return 255.0 - images.to(torch.float32)


def uniform_noise(n: int, seed: int) -> torch.Tensor:
    """``n`` images of i.i.d. uniform noise on 0-255 (seeded)."""
    return torch.rand(n, 28, 28, generator=torch.Generator().manual_seed(seed)) * 255.0
