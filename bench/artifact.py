"""The model the benchmarks serve, and one real image to send."""

from __future__ import annotations

import gzip
from pathlib import Path

import torch

from mcnet import DropoutMLP, save_artifact

FASHION_TEST_IMAGES = Path("/usr/share/datasets/fashion-mnist/t10k-images-idx3-ubyte.gz")


def resolve(model_dir: Path | None, scratch: Path) -> tuple[Path, str]:
    """``model_dir`` if given, else a random-weight artifact written to ``scratch`` (throughput is weight-blind)."""
    if model_dir is not None:
        return model_dir.resolve(), f"artifact {model_dir}"
    torch.manual_seed(0)
    save_artifact(scratch, DropoutMLP().eval())
    return scratch, "random-weight artifact (seed 0); throughput does not depend on weight values"


def without_sets(model_dir: Path, scratch: Path) -> tuple[Path, str]:
    """``model_dir`` again without its conformal calibration, written to ``scratch`` (the same weights, version,
    threshold and input check), or ``model_dir`` itself when it has none. For perf_analyzer: it asks for every
    output a model lists, and the v2 MC model's set outputs need a ``coverage`` / ``max_risk`` parameter that
    perf_analyzer 2.51 cannot send over HTTP."""
    from mcnet import load_artifact
    from mcnet.inputcheck import load_input_check

    model, manifest = load_artifact(model_dir)
    if manifest.get("conformal") is None:
        return model_dir, "the artifact (it has no conformal sets)"
    uncertainty = manifest["uncertainty"]
    save_artifact(
        scratch, model, class_names=tuple(manifest["class_names"]), uncertainty_threshold=uncertainty["threshold"],
        uncertainty_rule=uncertainty["rule"], input_check=load_input_check(model_dir, manifest),
    )  # fmt: skip
    return scratch, "the artifact's weights, threshold and input check without its conformal sets (perf_analyzer asks "
    "for every output; the set outputs need a parameter it cannot send over HTTP)"


def idx_image(raw: bytes, index: int) -> list[int]:
    """Image ``index`` of an IDX3 file's bytes as 784 ints."""
    if raw[:4] != b"\x00\x00\x08\x03":
        raise ValueError("not an IDX3 unsigned-byte file")
    start = 16 + index * 784
    return list(raw[start : start + 784])


def sample_image(index: int = 0) -> list[int]:
    """A real Fashion-MNIST test image (the request body's realistic length), or a seeded random one."""
    try:
        return idx_image(gzip.decompress(FASHION_TEST_IMAGES.read_bytes()), index)
    except OSError:
        gen = torch.Generator().manual_seed(index)
        return torch.randint(0, 256, (784,), generator=gen).tolist()


def test_images(count: int) -> tuple[torch.Tensor, str]:
    """The first ``count`` real test images as a float (count, 784) tensor, or seeded noise if the data is absent.

    The MC kernel's cost depends on the images: its active-unit path skips the hidden units the
    ReLU switched off, and noise activates a different number of units than garments do.
    """
    try:
        raw = gzip.decompress(FASHION_TEST_IMAGES.read_bytes())
    except OSError as exc:
        gen = torch.Generator().manual_seed(count)
        noise = torch.randint(0, 256, (count, 784), generator=gen).float()
        return noise, f"seeded uniform noise ({FASHION_TEST_IMAGES} unreadable: {exc.strerror})"
    pixels = torch.frombuffer(bytearray(raw[16 : 16 + count * 784]), dtype=torch.uint8)
    return pixels.view(count, 784).float(), f"the first {count} Fashion-MNIST test images"
