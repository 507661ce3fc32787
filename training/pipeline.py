"""One training run end to end: data, training, evaluation, plots, atomic artifact export."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import safetensors
import torch
import torchvision

import mcnet
from mcnet.inputcheck import InputCheck
from training import calibrate, conformal, plots
from training.config import TrainConfig
from training.data import DEFAULT_DATA_DIR, load_fashion_mnist
from training.evaluate import evaluate, predict
from training.train import append_history, train

UNCERTAINTY_RULE = (
    "uncertain if the MC-dropout mutual information (T={t} passes) exceeds the {q:g}th percentile "
    "of the mutual information on the {n} held-out validation images"
)
TEMPERATURE_RULE = (
    "fc3 divided by the temperature that minimises the NLL of the MC-averaged softmax on the validation split"
)
HEADLINE = (
    "test_accuracy_eval",
    "test_accuracy_mc",
    "test_nll_mc",
    "test_ece_mc",
    "ood_auroc_digits_mutual_information",
    "selective_accuracy_mc_at_80",
    "train_seconds",
)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("--device cuda was requested but no CUDA device is available")
    return torch.device(name)


def _seed_everything(config: TrainConfig) -> None:
    torch.manual_seed(config.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.set_num_threads(config.threads)


def run(config: TrainConfig) -> dict[str, Any]:
    """Train, evaluate and export; returns the report (also written to ``out_dir/report.json``)."""
    _seed_everything(config)
    device = resolve_device(config.device)
    data_dir = config.data_dir or DEFAULT_DATA_DIR
    data = load_fashion_mnist(
        Path(data_dir), config.val_size, config.seed, download=config.download, calib_size=config.calib_size
    )
    train_split = data.train.head(config.train_limit)
    print(
        f"training on {len(train_split)} images ({len(data.val)} validation, {len(data.calib)} calibration, "
        f"{len(data.test)} test) on {device}",
        file=sys.stderr,
    )
    with mcnet.atomic_directory(config.out_dir) as staging:
        history_path = staging / "history.jsonl"
        result = train(config, train_split, data.val, device, on_epoch=lambda row: append_history(history_path, row))
        t0 = time.perf_counter()
        temperature = 1.0
        if config.temperature:
            logits = calibrate.mc_logits(result.model, data.val.images, config.temperature_mc_samples, config.seed + 2)
            temperature = calibrate.fit_temperature(logits, data.val.labels)
            calibrate.fold_temperature(result.model, temperature)
        calibrate_seconds = time.perf_counter() - t0
        print(f"temperature {temperature:.2f} ({calibrate_seconds:.1f} s)", file=sys.stderr)
        t0 = time.perf_counter()
        check = InputCheck.fit(
            train_split.images, data.val.images, config.input_check_components, config.input_check_quantile
        )
        check_seconds = time.perf_counter() - t0
        t0 = time.perf_counter()
        report, preds, threshold = evaluate(
            result.model,
            data.val,
            data.test,
            config.eval_mc_samples,
            config.ood_noise_samples,
            config.uncertainty_quantile,
            config.seed,
            check,
        )
        report["eval_seconds"] = time.perf_counter() - t0
        t0 = time.perf_counter()
        fitted, conformal_table = None, None
        if len(data.calib):
            torch.manual_seed(config.seed + 3)  # the calibration images' own dropout masks
            calib = predict(result.model, data.calib.images, config.eval_mc_samples)
            fitted, conformal_report, conformal_table = conformal.calibrate(
                {"mc": calib.mc_probs.numpy(), "eval": calib.eval_probs.double().numpy()},
                data.calib.labels.numpy(),
                {"mc": preds["test"].mc_probs.numpy(), "eval": preds["test"].eval_probs.double().numpy()},
                data.test.labels.numpy(),
                config.eval_mc_samples,
                config.conformal_delta,
                config.seed,
            )
            report.update(conformal_report)
            (staging / "conformal_report.json").write_text(json.dumps(conformal_table, indent=2) + "\n")
        report["conformal_seconds"] = time.perf_counter() - t0
        report["input_check_seconds"] = check_seconds
        report["calibrate_seconds"] = calibrate_seconds
        report["temperature"] = temperature
        report["train_seconds"] = result.train_seconds
        report["best_epoch"] = float(result.best_epoch)
        report["epochs"] = float(config.epochs)
        report["train_images"] = float(len(train_split))
        rule = UNCERTAINTY_RULE.format(t=config.eval_mc_samples, q=config.uncertainty_quantile * 100, n=len(data.val))
        versions = {
            "torch": torch.__version__,
            "safetensors": safetensors.__version__,
            "torchvision": torchvision.__version__,
            "numpy": np.__version__,
            "python": sys.version.split()[0],
        }
        manifest = mcnet.write_artifact_files(
            staging,
            result.model.cpu(),
            uncertainty_threshold=threshold,
            uncertainty_rule=rule,
            input_check=check,
            conformal=fitted,
            extra={
                "training": config.to_json(),
                "metrics": {k: report[k] for k in HEADLINE},
                "calibration": {"temperature": temperature, "rule": TEMPERATURE_RULE if config.temperature else None},
                "versions": versions,
            },
        )
        report = {k: v if isinstance(v, str) else float(v) for k, v in sorted(report.items())}
        (staging / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        if config.plots:
            plots.write_all(staging, result.history, preds, data.test.labels, threshold)
            if conformal_table is not None:
                plots.conformal_curves(conformal_table, staging / "conformal.png")
        print(f"artifact {manifest['version']} written to {config.out_dir}", file=sys.stderr)
    return report
