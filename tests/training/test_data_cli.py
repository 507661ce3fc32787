"""Data loading, the OOD sets, missing-data errors and the command line."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

import mcnet
from training.cli import build_parser, config_from_args, main
from training.data import DataNotFoundError, digits_ood, load_fashion_mnist

pytestmark = pytest.mark.slow  # real servers, child processes or training runs: `make test`, not test-fast


def test_real_splits_are_seeded_and_disjoint(fashion_dir: Path) -> None:
    a = load_fashion_mnist(fashion_dir, 5000, seed=0)
    b = load_fashion_mnist(fashion_dir, 5000, seed=0)
    c = load_fashion_mnist(fashion_dir, 5000, seed=1)
    assert (len(a.train), len(a.val), len(a.test)) == (55000, 5000, 10000)
    assert a.train.images.dtype == torch.uint8 and a.train.images.shape[1:] == (28, 28)
    assert torch.equal(a.val.labels, b.val.labels) and torch.equal(a.val.images, b.val.images)
    assert not torch.equal(a.val.images, c.val.images)
    assert torch.bincount(a.test.labels).tolist() == [1000] * 10  # the original test set, untouched


def test_digits_are_28x28_on_the_pixel_scale() -> None:
    digits = digits_ood()
    assert digits.shape == (1797, 28, 28)
    assert float(digits.min()) == 0.0 and float(digits.max()) == 255.0
    assert float(digits[:, :4].abs().sum()) == 0.0 and float(digits[:, :, -4:].abs().sum()) == 0.0  # the padding


def test_missing_data_names_both_remedies(tmp_path: Path) -> None:
    with pytest.raises(DataNotFoundError) as info:
        load_fashion_mnist(tmp_path, 5000, seed=0)
    message = str(info.value)
    assert str(tmp_path) in message
    assert "apt-get install dataset-fashion-mnist" in message and "FASHION_MNIST_DIR" in message
    assert "--download" in message


def test_cli_missing_data_exits_non_zero(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "training", "--out", str(tmp_path / "m"), "--data-dir", str(tmp_path / "nothing")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0
    assert "dataset-fashion-mnist" in proc.stderr and "--download" in proc.stderr
    assert not (tmp_path / "m").exists()


def test_cli_reads_env_and_presets(tmp_path: Path) -> None:
    args = build_parser().parse_args(["--out", str(tmp_path), "--preset", "d2l", "--epochs", "3"])
    cfg = config_from_args(args, environ={"FASHION_MNIST_DIR": "/somewhere"})
    assert cfg.data_dir == Path("/somewhere")
    assert (cfg.preset, cfg.optimizer, cfg.lr, cfg.batch_size, cfg.init, cfg.epochs) == (
        "d2l",
        "sgd",
        0.5,
        256,
        "normal001",
        3,
    )
    # the book's network and procedure: no batch norm, no input noise, no temperature, best-val-loss epoch
    assert (cfg.batch_norm, cfg.input_noise, cfg.temperature, cfg.select) == (False, 0.0, False, "val_loss")
    args = build_parser().parse_args(["--out", str(tmp_path), "--preset", "plain", "--seed", "3"])
    cfg = config_from_args(args, environ={})
    assert (cfg.preset, cfg.batch_norm, cfg.input_noise, cfg.weight_decay, cfg.select, cfg.temperature) == (
        "plain",
        False,
        0.0,
        0.2,
        "val_loss",
        False,
    )
    assert cfg.seed == 3 and cfg.epochs == 50
    args = build_parser().parse_args(["--out", str(tmp_path), "--mc-samples", "7", "--no-plots", "--train-limit", "9"])
    cfg = config_from_args(args, environ={})
    assert cfg.data_dir == Path("/usr/share/datasets/fashion-mnist")
    assert (cfg.preset, cfg.eval_mc_samples, cfg.plots, cfg.train_limit) == ("default", 7, False, 9)
    assert (cfg.batch_norm, cfg.input_noise, cfg.weight_decay, cfg.select, cfg.temperature) == (
        True,
        0.1,
        0.5,
        "last",
        True,
    )


def test_skip_if_valid_does_not_train(tmp_path: Path) -> None:
    out = tmp_path / "m"
    mcnet.save_artifact(out, mcnet.DropoutMLP(), uncertainty_threshold=0.1, uncertainty_rule="test")
    before = (out / "manifest.json").read_bytes()
    # a data dir that does not exist proves no training was attempted
    assert main(["--out", str(out), "--skip-if-valid", "--data-dir", str(tmp_path / "none")]) == 0
    assert (out / "manifest.json").read_bytes() == before
    assert main(["--out", str(tmp_path / "empty"), "--skip-if-valid", "--data-dir", str(tmp_path / "none")]) == 2
