"""PNG plots (matplotlib, Agg backend): training curves, reliability diagram, MI histograms."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from training import metrics
from training.evaluate import Predictions


def training_curves(history: list[dict[str, Any]], path: Path) -> None:
    epochs = [row["epoch"] for row in history]
    fig, (ax_loss, ax_acc) = plt.subplots(1, 2, figsize=(10, 4))
    for split, style in (("train", "-"), ("val", "--")):
        ax_loss.plot(epochs, [row[f"{split}_loss"] for row in history], style, label=split)
        ax_acc.plot(epochs, [row[f"{split}_accuracy"] for row in history], style, label=split)
    ax_loss.set(title="Cross-entropy loss", xlabel="epoch", ylabel="loss")
    ax_acc.set(title="Accuracy", xlabel="epoch", ylabel="accuracy")
    for ax in (ax_loss, ax_acc):
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def reliability_diagram(test: Predictions, labels: torch.Tensor, path: Path, n_bins: int = 15) -> None:
    fig, ax = plt.subplots(figsize=(5, 5))
    centres = (torch.arange(n_bins, dtype=torch.float64) + 0.5) / n_bins
    for name, probs, marker in (("eval mode", test.eval_probs, "o"), ("MC dropout", test.mc_probs, "s")):
        count, _, acc = metrics.reliability_bins(probs, labels, n_bins)
        used = count > 0
        ece = metrics.ece(probs, labels, n_bins)
        ax.plot(centres[used], acc[used], marker=marker, label=f"{name} (ECE {ece:.4f})")
    ax.plot([0, 1], [0, 1], "k:", label="perfect calibration")
    ax.set(title="Reliability diagram (test set, 15 bins)", xlabel="confidence", ylabel="accuracy")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1)
    ax.grid(alpha=0.3)
    ax.legend(loc="upper left")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def mi_histograms(preds: dict[str, Predictions], threshold: float, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    top = max(float(p.mc_mi.max()) for p in preds.values())
    bins = torch.linspace(0.0, max(top, 1e-6), 60).tolist()
    for name, pred in preds.items():
        ax.hist(pred.mc_mi.tolist(), bins=bins, density=True, histtype="step", linewidth=1.5, label=name)
    ax.axvline(threshold, color="k", linestyle="--", label=f"threshold {threshold:.4f}")
    ax.set(title="MC-dropout mutual information", xlabel="mutual information (nats)", ylabel="density")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def write_all(
    out: Path, history: list[dict[str, Any]], preds: dict[str, Predictions], labels: torch.Tensor, threshold: float
) -> list[str]:
    """Write the three plots into ``out``; returns their file names."""
    training_curves(history, out / "training_curves.png")
    reliability_diagram(preds["test"], labels, out / "reliability.png")
    mi_preds = {"test (in-dist.)": preds["test"], **{k: v for k, v in preds.items() if k not in ("val", "test")}}
    mi_histograms(mi_preds, threshold, out / "mi_histogram.png")
    return ["training_curves.png", "reliability.png", "mi_histogram.png"]


def conformal_curves(table: dict[str, Any], path: Path) -> None:
    """Test coverage against mean set size for every conformal method and probability source, at 0.90-0.99."""
    fig, ax = plt.subplots(figsize=(6, 4))
    for row in table["methods"]:
        points = [row[f"test_at_{level}"] for level in (90, 95, 99)]
        style = "-o" if row["source"] == "mc" else "--s"
        label = f"{row['method']} ({row['source']})"
        ax.plot([p["set_size"] for p in points], [p["coverage"] for p in points], style, label=label)
    for level in (0.90, 0.95, 0.99):
        ax.axhline(level, color="grey", lw=0.5)
    ax.set(title="Conformal sets on the test images (target 0.90/0.95/0.99)", xlabel="mean set size",
           ylabel="test coverage")  # fmt: skip
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
