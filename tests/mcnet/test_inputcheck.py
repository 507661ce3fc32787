"""The pixel-space input check: its score against hand-computed cases, fitting, round trip, tamper detection."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mcnet import ArtifactError, DropoutMLP, load_artifact, save_artifact
from mcnet.inputcheck import FILE, InputCheck, load_input_check


def _axis_check(k: int = 2, threshold: float = 0.01) -> InputCheck:
    """Mean 0 and the first k pixel axes as components: the residual is everything outside pixels 0..k-1."""
    return InputCheck(torch.zeros(784), torch.eye(784)[:k], threshold, 0.99)


def test_score_is_the_mean_squared_residual_outside_the_components() -> None:
    check = _axis_check(k=2)
    x = torch.zeros(3, 784)
    x[0, :2] = 255.0  # inside the subspace: residual 0
    x[1, 2] = 255.0  # one pixel outside at 1.0: residual 1/784
    x[2, 2:4] = 127.5  # two pixels outside at 0.5: residual 2 * 0.25 / 784
    scores = check.score(x.reshape(3, 28, 28))
    assert scores.tolist() == pytest.approx([0.0, 1 / 784, 0.5 / 784])
    assert check.flags(torch.tensor([0.0, 0.02])).tolist() == [False, True]


def test_score_subtracts_the_mean_image() -> None:
    mean = torch.full((784,), 0.5)
    check = InputCheck(mean, torch.zeros(0, 784), 0.0, 0.99)
    assert check.score(torch.full((1, 784), 127.5)).tolist() == pytest.approx([0.0])
    assert check.score(torch.zeros(1, 784)).tolist() == pytest.approx([0.25])


def test_fit_finds_the_subspace_and_sets_the_threshold_at_the_quantile() -> None:
    """Images that vary along two fixed directions only: two components explain them exactly."""
    gen = torch.Generator().manual_seed(0)
    basis = torch.linalg.qr(torch.randn(784, 2, generator=gen, dtype=torch.float64)).Q.T  # (2, 784) orthonormal
    coeffs = torch.randn(500, 2, generator=gen, dtype=torch.float64)
    train = ((0.5 + 0.05 * coeffs @ basis) * 255).float()
    val = train[:100] + torch.randn(100, 784, generator=gen) * torch.linspace(0, 2, 100)[:, None]
    check = InputCheck.fit(train, val, components=2, quantile=0.9)
    assert check.components.shape == (2, 784)
    assert torch.allclose(check.components @ check.components.T, torch.eye(2), atol=1e-5)
    assert float(check.score(train).max()) < 1e-8  # the training images lie in the fitted subspace
    val_scores = check.score(val)
    assert float((val_scores > check.threshold).float().mean()) == pytest.approx(0.1, abs=0.011)


def test_round_trip_through_an_artifact(tmp_path: Path) -> None:
    check = InputCheck(torch.rand(784), torch.linalg.qr(torch.randn(784, 4)).Q.T.contiguous(), 0.02, 0.99)
    save_artifact(tmp_path / "a", DropoutMLP(), input_check=check)
    _, manifest = load_artifact(tmp_path / "a")
    assert manifest["input_check"]["components"] == 4 and manifest["input_check"]["method"] == "pca_residual"
    loaded = load_input_check(tmp_path / "a", manifest)
    assert loaded is not None
    assert torch.equal(loaded.mean, check.mean) and torch.equal(loaded.components, check.components)
    assert (loaded.threshold, loaded.quantile) == (0.02, 0.99)
    x = torch.rand(5, 28, 28) * 255
    assert torch.equal(loaded.score(x), check.score(x))


def test_artifact_without_a_check_loads_with_none(tmp_path: Path) -> None:
    save_artifact(tmp_path / "a", DropoutMLP())
    _, manifest = load_artifact(tmp_path / "a")
    assert manifest["input_check"] is None
    assert load_input_check(tmp_path / "a", manifest) is None
    assert not (tmp_path / "a" / FILE).exists()


def _saved(tmp_path: Path) -> tuple[Path, dict[str, object]]:
    out = tmp_path / "a"
    save_artifact(out, DropoutMLP(), input_check=_axis_check())
    return out, load_artifact(out)[1]


def test_flipped_byte_in_the_check_is_refused(tmp_path: Path) -> None:
    out, manifest = _saved(tmp_path)
    data = bytearray((out / FILE).read_bytes())
    data[-3] ^= 0x01
    (out / FILE).write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match=r"input_check\.safetensors.*sha256 mismatch.*python -m training"):
        load_input_check(out, manifest)


def test_missing_check_file_is_refused(tmp_path: Path) -> None:
    out, manifest = _saved(tmp_path)
    (out / FILE).unlink()
    with pytest.raises(ArtifactError, match="input check file is missing"):
        load_input_check(out, manifest)


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        ({"method": "mahalanobis"}, "method 'mahalanobis' is not supported"),
        ({"file": "../elsewhere.safetensors"}, "plain file name"),
        ({"threshold": -1.0}, "non-negative"),
        ({"components": 3}, "wrong shapes"),
        ({"threshold": "high"}, "malformed"),
    ],
)
def test_bad_manifest_sections_are_refused(tmp_path: Path, edit: dict[str, object], message: str) -> None:
    """The section is checked even when the manifest checksum would pass (a re-signed, edited manifest)."""
    out, manifest = _saved(tmp_path)
    section = dict(json.loads(json.dumps(manifest["input_check"])))
    section.update(edit)
    with pytest.raises(ArtifactError, match=message):
        load_input_check(out, {**manifest, "input_check": section})
