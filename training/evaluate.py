"""Test-set evaluation in eval mode and with Monte Carlo dropout, OOD detection, the MI threshold."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from mcnet import DropoutMLP
from mcnet.inputcheck import InputCheck
from training import metrics
from training.data import Split, digits_ood, inverted, uniform_noise

COVERAGES = (80, 90, 95)


@dataclass
class Predictions:
    """Eval-mode probabilities ``(N, K)`` and the MC mean ``(N, K)``, predictive entropy and MI ``(N,)``."""

    eval_probs: torch.Tensor
    mc_probs: torch.Tensor
    mc_entropy: torch.Tensor
    mc_mi: torch.Tensor

    @property
    def max_softmax_score(self) -> torch.Tensor:
        """OOD score of the max-softmax baseline (eval mode): 1 - max_k p_k, higher = more unusual."""
        return 1.0 - self.eval_probs.max(1).values.to(torch.float64)


@torch.no_grad()
def mc_logits(model: DropoutMLP, x: torch.Tensor, mc_samples: int) -> torch.Tensor:
    """``(T, N, K)`` logits of ``T`` dropout-on passes, equal to ``model(x, mc=True)`` drawn T times.

    The part before the first dropout (``model.hidden1``, ~3/4 of the FLOPs) is deterministic, so it is computed
    once; each pass then applies the same operations, in the same order and with the same random draws, as
    ``DropoutMLP.forward`` (tested against it).
    """
    p1, p2 = model.arch.dropout
    h1 = model.hidden1(x)
    out = []
    for _ in range(mc_samples):
        h = F.dropout(h1, p1, training=True)
        h = F.dropout(F.relu(model.fc2(h)), p2, training=True)
        out.append(model.fc3(h))
    return torch.stack(out)


def mc_softmax(model: DropoutMLP, x: torch.Tensor, mc_samples: int) -> torch.Tensor:
    """``(T, N, K)`` softmaxes of :func:`mc_logits`."""
    return torch.softmax(mc_logits(model, x, mc_samples), -1)


@torch.no_grad()
def predict(model: DropoutMLP, images: torch.Tensor, mc_samples: int, chunk: int = 2000) -> Predictions:
    """Eval-mode softmax and ``mc_samples`` dropout-on passes (see :func:`mc_softmax`; the module stays in eval)."""
    model.eval()
    device = next(model.parameters()).device
    eval_out, mean_out, ent_out, mi_out = [], [], [], []
    for start in range(0, images.shape[0], chunk):
        x = images[start : start + chunk].to(device, torch.float32)
        eval_out.append(torch.softmax(model(x), 1).cpu())
        samples = mc_softmax(model, x, mc_samples).cpu()
        mean = samples.to(torch.float64).mean(0)
        mean_out.append(mean)
        ent_out.append(metrics.entropy(mean))
        mi_out.append(metrics.mutual_information(samples))
    return Predictions(torch.cat(eval_out), torch.cat(mean_out), torch.cat(ent_out), torch.cat(mi_out))


def classification_report(pred: Predictions, labels: torch.Tensor) -> dict[str, float]:
    report: dict[str, float] = {}
    for mode, probs in (("eval", pred.eval_probs), ("mc", pred.mc_probs)):
        report[f"test_accuracy_{mode}"] = metrics.accuracy(probs, labels)
        report[f"test_nll_{mode}"] = metrics.nll(probs, labels)
        report[f"test_ece_{mode}"] = metrics.ece(probs, labels, n_bins=15)
        report[f"test_brier_{mode}"] = metrics.brier(probs, labels)
    correct = pred.mc_probs.argmax(1) == labels
    for cov in COVERAGES:
        report[f"selective_accuracy_mc_at_{cov}"] = metrics.selective_accuracy(correct, pred.mc_entropy, cov / 100)
    return report


def ood_sets(test_images: torch.Tensor, noise_samples: int, seed: int) -> dict[str, torch.Tensor]:
    """Real handwritten digits, inverted test images and uniform noise, all 28x28 on 0-255."""
    return {
        "digits": digits_ood(),
        "inverted": inverted(test_images),
        "noise": uniform_noise(noise_samples, seed),
    }


def ood_report(in_dist: Predictions, ood: dict[str, Predictions], threshold: float) -> dict[str, float]:
    """AUROC (OOD = positive, test set = negative) per OOD set and score, and the flagged fractions."""
    report: dict[str, float] = {"test_uncertain_fraction": float((in_dist.mc_mi > threshold).double().mean())}
    for name, pred in ood.items():
        for score, pos, neg in (
            ("max_softmax", pred.max_softmax_score, in_dist.max_softmax_score),
            ("entropy", pred.mc_entropy, in_dist.mc_entropy),
            ("mutual_information", pred.mc_mi, in_dist.mc_mi),
        ):
            report[f"ood_auroc_{name}_{score}"] = metrics.auroc(pos, neg)
        report[f"ood_uncertain_fraction_{name}"] = float((pred.mc_mi > threshold).double().mean())
    return report


def input_check_report(
    check: InputCheck,
    test: Predictions,
    test_images: torch.Tensor,
    ood: dict[str, tuple[torch.Tensor, Predictions]],
    threshold: float,
) -> dict[str, float]:
    """The pixel-space input check per set: AUROC of its score, its flag rate, and the rate of the service's
    ``uncertain`` flag (MI above ``threshold`` *or* input flagged)."""
    test_scores = check.score(test_images).to(torch.float64)
    test_flags = check.flags(test_scores)
    report = {
        "test_input_flagged_fraction": float(test_flags.double().mean()),
        "test_flagged_fraction": float((test_flags | (test.mc_mi > threshold)).double().mean()),
        "input_check_threshold": check.threshold,
    }
    for name, (images, pred) in ood.items():
        scores = check.score(images).to(torch.float64)
        flags = check.flags(scores)
        report[f"ood_auroc_{name}_input_residual"] = metrics.auroc(scores, test_scores)
        report[f"ood_input_flagged_fraction_{name}"] = float(flags.double().mean())
        report[f"ood_flagged_fraction_{name}"] = float((flags | (pred.mc_mi > threshold)).double().mean())
    return report


def mi_threshold(val_mi: torch.Tensor, quantile: float) -> float:
    """The 'uncertain' threshold: the given quantile of in-distribution (validation) mutual information."""
    return float(torch.quantile(val_mi.to(torch.float64), quantile))


def evaluate(
    model: DropoutMLP,
    val: Split,
    test: Split,
    mc_samples: int,
    noise_samples: int,
    quantile: float,
    seed: int,
    check: InputCheck | None = None,
) -> tuple[dict[str, float], dict[str, Predictions], float]:
    """Full evaluation; returns (report, predictions by set name incl. 'val'/'test', MI threshold)."""
    torch.manual_seed(seed + 1)  # the MC dropout masks: a fixed seed makes the report reproducible
    # test first: its masks (and so the report) do not depend on how the held-out images are split
    test_pred = predict(model, test.images, mc_samples)
    preds = {"val": predict(model, val.images, mc_samples), "test": test_pred}
    oods = ood_sets(test.images, noise_samples, seed)
    for name, images in oods.items():
        preds[name] = predict(model, images, mc_samples)
    threshold = mi_threshold(preds["val"].mc_mi, quantile)
    report = classification_report(preds["test"], test.labels)
    report.update(ood_report(preds["test"], {k: preds[k] for k in oods}, threshold))
    if check is not None:
        ood = {k: (images, preds[k]) for k, images in oods.items()}
        report.update(input_check_report(check, preds["test"], test.images, ood, threshold))
    report["uncertainty_threshold"] = threshold
    report["mc_samples"] = float(mc_samples)
    return report, preds, threshold
