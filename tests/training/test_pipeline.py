"""End to end on the real data: a short run exports a verified artifact, reproducibly."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

import mcnet
from mcnet.inputcheck import load_input_check
from training.config import TrainConfig, plain_preset
from training.pipeline import run

pytestmark = pytest.mark.slow  # real servers, child processes or training runs: `make test`, not test-fast

REPORT_KEYS = (
    "test_accuracy_eval",
    "test_accuracy_mc",
    "test_nll_eval",
    "test_nll_mc",
    "test_ece_eval",
    "test_ece_mc",
    "test_brier_mc",
    "ood_auroc_digits_max_softmax",
    "ood_auroc_digits_entropy",
    "ood_auroc_digits_mutual_information",
    "selective_accuracy_mc_at_80",
    "selective_accuracy_mc_at_90",
    "train_seconds",
    "mc_samples",
)


def tiny_config(out: Path, data_dir: Path, **overrides: Any) -> TrainConfig:
    base: dict[str, Any] = dict(
        out_dir=out,
        data_dir=data_dir,
        epochs=1,
        train_limit=500,
        batch_size=50,
        eval_mc_samples=4,
        ood_noise_samples=100,
        device="cpu",
    )
    base.update(overrides)
    return TrainConfig(**base)


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory: pytest.TempPathFactory, fashion_dir: Path) -> tuple[Path, dict[str, float]]:
    out = tmp_path_factory.mktemp("tiny") / "model"
    report = run(tiny_config(out, fashion_dir, plots=True))
    return out, report


def test_short_real_run_writes_everything(tiny_run: tuple[Path, dict[str, float]]) -> None:
    out, report = tiny_run
    names = {p.name for p in out.iterdir()}
    expected = {"model.safetensors", "input_check.safetensors", "manifest.json", "report.json", "history.jsonl"}
    assert expected | {"training_curves.png", "reliability.png", "mi_histogram.png"} <= names
    assert not any(n.startswith(".") for n in names)
    on_disk = json.loads((out / "report.json").read_text())
    assert on_disk == pytest.approx(report)
    for key in REPORT_KEYS:
        assert isinstance(on_disk[key], float), key
    assert on_disk["mc_samples"] == 4.0
    assert 0.4 < report["test_accuracy_eval"] <= 1.0  # 10 steps on 500 real images: far above chance (0.1)
    history = [json.loads(line) for line in (out / "history.jsonl").read_text().splitlines()]
    assert [row["epoch"] for row in history] == [1]
    assert {"train_loss", "train_accuracy", "val_loss", "val_accuracy"} <= set(history[0])
    for png in ("training_curves.png", "reliability.png", "mi_histogram.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_artifact_loads_and_describes_itself(tiny_run: tuple[Path, dict[str, float]]) -> None:
    out, report = tiny_run
    model, manifest = mcnet.load_artifact(out)
    assert manifest["class_names"][0] == "T-shirt/top" and manifest["class_names"][9] == "Ankle boot"
    assert manifest["uncertainty"]["threshold"] == pytest.approx(report["uncertainty_threshold"])
    assert "95th percentile" in manifest["uncertainty"]["rule"]
    assert manifest["training"]["train_limit"] == 500 and manifest["training"]["epochs"] == 1
    assert manifest["metrics"]["test_accuracy_eval"] == pytest.approx(report["test_accuracy_eval"])
    assert {"torch", "safetensors", "torchvision", "numpy"} <= set(manifest["versions"])
    assert manifest["input"]["mean"] == pytest.approx(0.2860) and manifest["input"]["scale_max"] == 255.0
    probs = torch.softmax(model(torch.zeros(2, 28, 28)), 1)
    assert probs.shape == (2, 10)
    # the default trains with batch norm, folded away at export (plain fc1/fc2/fc3), and fits a temperature
    assert set(model.state_dict()) == {f"fc{i}.{p}" for i in (1, 2, 3) for p in ("weight", "bias")}
    training = manifest["training"]
    assert (training["preset"], training["batch_norm"], training["select"]) == ("default", True, "last")
    assert manifest["calibration"]["temperature"] == report["temperature"]
    assert 0.5 <= report["temperature"] <= 3.0 and "validation" in manifest["calibration"]["rule"]


def test_input_check_is_exported_and_flags_far_ood(tiny_run: tuple[Path, dict[str, float]]) -> None:
    """The pixel-space check fitted on 500 training images already separates inverted images and noise."""
    out, report = tiny_run
    _, manifest = mcnet.load_artifact(out)
    check = load_input_check(out, manifest)
    assert check is not None and check.components.shape == (32, 784)
    section = manifest["input_check"]
    assert section["threshold"] == pytest.approx(report["input_check_threshold"]) == pytest.approx(check.threshold)
    assert section["quantile"] == 0.99 and "99th percentile" in section["rule"]
    assert report["ood_input_flagged_fraction_inverted"] == 1.0 and report["ood_input_flagged_fraction_noise"] == 1.0
    assert report["ood_auroc_inverted_input_residual"] > 0.99 and report["ood_auroc_noise_input_residual"] > 0.99
    assert report["test_input_flagged_fraction"] < 0.05
    # the service's "uncertain" flag (MI or input) covers at least what either one flags
    either = max(report["test_input_flagged_fraction"], report["test_uncertain_fraction"])
    assert report["test_flagged_fraction"] >= either


def test_plain_preset_has_no_batch_norm_and_no_temperature(tmp_path: Path, fashion_dir: Path) -> None:
    tiny = dict(epochs=1, train_limit=500, batch_size=50, eval_mc_samples=4, ood_noise_samples=10, device="cpu")
    report = run(plain_preset(out_dir=tmp_path / "m", data_dir=fashion_dir, plots=False, **tiny))
    _, manifest = mcnet.load_artifact(tmp_path / "m")
    training = manifest["training"]
    assert (training["preset"], training["batch_norm"], training["select"]) == ("plain", False, "val_loss")
    assert (training["weight_decay"], training["input_noise"]) == (0.2, 0.0)
    assert manifest["calibration"] == {"temperature": 1.0, "rule": None}
    assert report["temperature"] == 1.0 and 0.4 < report["test_accuracy_eval"] <= 1.0


def test_flipped_weight_byte_is_refused(tiny_run: tuple[Path, dict[str, float]], tmp_path: Path) -> None:
    out, _ = tiny_run
    copy = tmp_path / "copy"
    copy.mkdir()
    for name in ("model.safetensors", "manifest.json"):
        (copy / name).write_bytes((out / name).read_bytes())
    weights = bytearray((copy / "model.safetensors").read_bytes())
    weights[-10] ^= 0x01
    (copy / "model.safetensors").write_bytes(bytes(weights))
    with pytest.raises(mcnet.ArtifactError, match=r"model\.safetensors.*sha256 mismatch"):
        mcnet.load_artifact(copy)


def test_edited_manifest_is_refused(tiny_run: tuple[Path, dict[str, float]], tmp_path: Path) -> None:
    out, _ = tiny_run
    copy = tmp_path / "copy"
    copy.mkdir()
    (copy / "model.safetensors").write_bytes((out / "model.safetensors").read_bytes())
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["uncertainty"]["threshold"] = 10.0
    (copy / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(mcnet.ArtifactError, match=r"manifest\.json.*checksum mismatch"):
        mcnet.load_artifact(copy)


def test_same_seed_gives_identical_weights(tmp_path: Path, fashion_dir: Path) -> None:
    cfg = dict(train_limit=300, eval_mc_samples=2, ood_noise_samples=10, plots=False, val_size=1000, calib_size=500)
    run(tiny_config(tmp_path / "a", fashion_dir, **cfg))
    run(tiny_config(tmp_path / "b", fashion_dir, **cfg))
    run(tiny_config(tmp_path / "c", fashion_dir, seed=1, **cfg))
    a, b, c = ((tmp_path / d / "model.safetensors").read_bytes() for d in "abc")
    assert a == b
    assert a != c
    sha = [json.loads((tmp_path / d / "manifest.json").read_text())["weights"]["sha256"] for d in "ab"]
    assert sha[0] == sha[1]


def test_crash_leaves_previous_artifact_untouched(
    tmp_path: Path, fashion_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    out = tmp_path / "model"
    previous = mcnet.save_artifact(out, mcnet.DropoutMLP(), uncertainty_threshold=0.5, uncertainty_rule="old")

    def crash(*args: object, **kwargs: object) -> None:
        raise RuntimeError("simulated crash after the weights were staged")

    monkeypatch.setattr("training.pipeline.plots.write_all", crash)
    with pytest.raises(RuntimeError, match="simulated crash"):
        run(tiny_config(out, fashion_dir, train_limit=200, eval_mc_samples=2, ood_noise_samples=10))
    _, manifest = mcnet.load_artifact(out)
    assert manifest["weights"]["sha256"] == previous["weights"]["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no staging directory left behind
