"""The C Monte Carlo kernel (``service/native``, ``service.mcnative``): the numbers of the numpy kernel to float32
rounding, for every dropout layout and for layer widths that are not a multiple of the vector loops; the choice of
kernel (``MCSERVE_MC_NATIVE``) and its failures; the build script.

The library must be built (``make install``): the tests that need it fail, never skip, when it is not.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from mcnet import Architecture, DropoutMLP, load_artifact
from service import mcnative
from service.engine import Engine
from service.mcrequest import mc_tiled
from service.native import build as native_build

FIELDS = ("mean_probs", "variance", "std", "predictive_entropy", "expected_entropy", "mutual_information")


@pytest.fixture(autouse=True)
def _auto_afterwards() -> Iterator[None]:
    yield
    mcnative.configure("auto")


@pytest.fixture(scope="module")
def trained(trained_artifact: Path) -> DropoutMLP:
    return load_artifact(trained_artifact, "cpu")[0]


@pytest.fixture(scope="module")
def pixels(test_images: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return test_images[0][:16].astype(np.float32)


def _both(model: DropoutMLP, x: np.ndarray, n_samples: int, seed: int) -> tuple[dict[str, np.ndarray], ...]:
    answers = []
    for mode in ("on", "off"):
        assert mcnative.configure(mode).native == (mode == "on")
        result = mc_tiled(model, x, n_samples, seed)
        answers.append({f: getattr(result, f).numpy().astype(np.float64) for f in FIELDS})
    return answers[0], answers[1]


@pytest.mark.parametrize(("images", "n_samples", "seed"), [(1, 1, 0), (1, 100, 7), (7, 300, 2**64 - 1), (16, 128, 3)])
def test_the_c_kernel_gives_the_numpy_kernels_numbers(
    trained: DropoutMLP, pixels: np.ndarray, images: int, n_samples: int, seed: int
) -> None:
    """The same tiles, random words and dropped units: only the order of float32 sums differs (the C kernel adds the
    kept rows where numpy multiplies a 0/1 mask in a GEMM), so the answers agree to about 1e-6."""
    c, numpy_ = _both(trained, pixels[:images], n_samples, seed)
    for field in FIELDS:
        assert np.abs(c[field] - numpy_[field]).max() < 2e-5, field
    assert np.allclose(c["mean_probs"].sum(axis=1), 1.0, atol=1e-5)
    other, _ = _both(trained, pixels[:images], n_samples, seed ^ 1)  # another seed: other masks, other numbers
    assert n_samples == 1 or np.abs(other["mean_probs"] - c["mean_probs"]).max() > 1e-4


@pytest.mark.parametrize(
    "arch",
    [
        Architecture(dropout=(0.5, 0.2)),  # layer 1 in 8-bit lanes, layer 2 in 16-bit lanes
        Architecture(dropout=(0.0, 0.0)),  # no dropout: every pass is the eval forward
        Architecture(dropout=(0.3, 0.5), hidden=(100, 72)),  # widths past the 64-column loops
        Architecture(dropout=(0.2, 0.5), num_classes=20),  # fc3 padded to 32 outputs: the general fc3 loop
    ],
    ids=["lanes8-lanes16", "no-dropout", "odd-widths", "20-classes"],
)
def test_every_mask_layout_and_shape_matches_numpy(arch: Architecture, pixels: np.ndarray) -> None:
    torch.manual_seed(0)
    model = DropoutMLP(arch).eval()
    c, numpy_ = _both(model, pixels[:5], 200, 11)
    for field in FIELDS:
        assert np.abs(c[field] - numpy_[field]).max() < 2e-5, (field, arch)
    if arch.dropout == (0.0, 0.0):  # every pass alike: no spread at all
        assert c["mutual_information"].max() < 1e-5 and c["variance"].max() < 1e-9


def test_on_fails_with_what_to_do_when_the_library_is_missing(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setattr(mcnative, "LIBRARY", tmp_path / "libmckernel.so")
    with pytest.raises(mcnative.NativeKernelError, match=r"not built .*make install.*MCSERVE_MC_NATIVE=auto"):
        mcnative.configure("on")
    auto = mcnative.configure("auto")
    assert not auto.native and "not built" in auto.reason and mcnative.choice() is auto
    sums = np.zeros((1, 10))
    assert mcnative.summaries(sums, sums, np.zeros(1), 1, 1, 1) is None  # the numpy kernel's summaries, then
    off = mcnative.configure("off")
    assert not off.native and off.name == "numpy"


def test_the_service_refuses_to_start_without_it_when_told_on(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, trained_artifact: Path, make_settings: object,
    capsys: pytest.CaptureFixture[str],
) -> None:  # fmt: skip
    from service.__main__ import main

    monkeypatch.setattr(mcnative, "LIBRARY", tmp_path / "missing.so")
    with pytest.raises(mcnative.NativeKernelError):
        Engine(make_settings(trained_artifact, mc_native="on")).load()  # type: ignore[operator]
    for name, value in {"MCSERVE_MODEL_DIR": str(trained_artifact), "MCSERVE_MC_NATIVE": "on"}.items():
        monkeypatch.setenv(name, value)
    assert main() != 0
    assert "MCSERVE_MC_NATIVE=on but the C Monte Carlo kernel cannot run" in capsys.readouterr().err
    engine = Engine(make_settings(trained_artifact, mc_native="auto"))  # type: ignore[operator]
    engine.load()
    assert engine.mc_code == "numpy"  # auto: the numpy kernel, with a warning


def test_a_library_from_another_source_is_refused(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A stale build whose structs differ from this mcnative.py would read garbage: it is not loaded."""
    source = tmp_path / "stale.c"
    source.write_text(
        native_build.SOURCE.read_text().replace("int64_t mc_sizeof_tile(void) { return (int64_t)sizeof(TileIn); }",
                                                "int64_t mc_sizeof_tile(void) { return 1; }")
    )  # fmt: skip
    stale = tmp_path / "libstale.so"
    assert native_build.build(source, stale)
    monkeypatch.setattr(mcnative, "LIBRARY", stale)
    with pytest.raises(mcnative.NativeKernelError, match=r"another version of mckernel\.c; rebuild it"):
        mcnative.configure("on")


def test_the_build_script_builds_once_and_says_what_to_do_without_a_compiler(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    out = tmp_path / "libmckernel.so"
    assert native_build.build(out=out) is True and out.stat().st_size > 0
    assert native_build.build(out=out) is False  # up to date
    assert native_build.main(["--out", str(out), "--force"]) == 0
    monkeypatch.setenv("CC", str(tmp_path / "no-such-cc"))
    with pytest.raises(native_build.BuildError, match=r"no C compiler .*apt-get install gcc"):
        native_build.build(out=tmp_path / "other.so")
    broken = tmp_path / "broken.c"
    broken.write_text("this is not C\n")
    monkeypatch.delenv("CC")
    with pytest.raises(native_build.BuildError, match="failed"):
        native_build.build(broken, tmp_path / "broken.so")
    assert not (tmp_path / "broken.so").exists() and not (tmp_path / "broken.so.tmp").exists()
