"""Command line: ``python -m training --out DIR`` (console script ``mcserve-train``)."""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from training.config import PRESETS, TrainConfig
from training.data import DEFAULT_DATA_DIR, DataNotFoundError

_TUNABLE = (
    ("epochs", int),
    ("seed", int),
    ("batch_size", int),
    ("lr", float),
    ("weight_decay", float),
    ("dropout1", float),
    ("dropout2", float),
    ("hidden", int),
    ("val_size", int),
    ("calib_size", int),
    ("train_limit", int),
    ("threads", int),
    ("input_check_components", int),
    ("input_check_quantile", float),
)


def build_parser() -> argparse.ArgumentParser:
    defaults = TrainConfig()
    p = argparse.ArgumentParser(
        prog="python -m training",
        description="Train the d2l §4.6 dropout MLP on Fashion-MNIST, evaluate its MC-dropout uncertainty and "
        "export a verified artifact (model.safetensors + manifest.json, report.json, history.jsonl, plots).",
    )
    p.add_argument("--out", type=Path, required=True, help="artifact directory (replaced atomically)")
    p.add_argument(
        "--preset",
        choices=sorted(PRESETS),
        default="default",
        help="'plain': the earlier recipe without batch norm (~0.900); 'd2l': the book's exact recipe",
    )
    for name, kind in _TUNABLE:
        flag = "--" + name.replace("_", "-")
        p.add_argument(flag, type=kind, default=None, help=f"default {getattr(defaults, name)} (preset's value)")
    p.add_argument("--mc-samples", type=int, default=None, help="MC dropout passes per image (default 100)")
    p.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        help=f"Fashion-MNIST directory (default: $FASHION_MNIST_DIR, else {DEFAULT_DATA_DIR})",
    )
    p.add_argument("--device", choices=("cpu", "cuda", "auto"), default=None, help="default auto")
    p.add_argument("--download", action="store_true", help="download Fashion-MNIST into --data-dir when missing")
    p.add_argument("--no-plots", action="store_true", help="skip the PNG plots")
    p.add_argument(
        "--skip-if-valid", action="store_true", help="exit 0 without training if --out already holds a valid artifact"
    )
    return p


def config_from_args(args: argparse.Namespace, environ: dict[str, str] | None = None) -> TrainConfig:
    env = os.environ if environ is None else environ
    overrides: dict[str, Any] = {name: getattr(args, name) for name, _ in _TUNABLE if getattr(args, name) is not None}
    if args.mc_samples is not None:
        overrides["eval_mc_samples"] = args.mc_samples
    if args.device is not None:
        overrides["device"] = args.device
    data_dir = args.data_dir or (Path(env["FASHION_MNIST_DIR"]) if env.get("FASHION_MNIST_DIR") else DEFAULT_DATA_DIR)
    overrides.update(out_dir=args.out, data_dir=data_dir, plots=not args.no_plots, download=args.download)
    config = PRESETS[args.preset](**overrides)
    return dataclasses.replace(config, preset=args.preset)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.skip_if_valid:
        import mcnet
        from mcnet.inputcheck import load_input_check

        try:
            _, manifest = mcnet.load_artifact(args.out)
            load_input_check(args.out, manifest)
        except mcnet.ArtifactError as exc:
            print(f"no valid artifact yet ({exc.problem}); training", file=sys.stderr)
        else:
            print(f"{args.out} already holds valid artifact {manifest['version']}; not training", file=sys.stderr)
            return 0
    config = config_from_args(args)
    from training.pipeline import run

    try:
        report = run(config)
    except DataNotFoundError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(json.dumps(report, indent=2))
    return 0
