"""The training loop: batches on in-memory tensors, seeded, with per-epoch history."""

from __future__ import annotations

import copy
import json
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from mcnet import PIXEL_MAX, Architecture, DropoutMLP, InputSpec
from training.batchnorm import BatchNormMLP, exportable
from training.config import TrainConfig
from training.data import Split


@dataclass
class TrainResult:
    model: DropoutMLP
    history: list[dict[str, Any]]
    train_seconds: float
    best_epoch: int


def build_model(config: TrainConfig, generator: torch.Generator) -> DropoutMLP | BatchNormMLP:
    arch = Architecture(hidden=(config.hidden, config.hidden), dropout=(config.dropout1, config.dropout2))
    spec = InputSpec() if config.normalise else InputSpec(mean=0.0, std=1.0)
    model = DropoutMLP(arch, spec)
    for layer in (model.fc1, model.fc2, model.fc3):
        if config.init == "normal001":  # the book: N(0, 0.01) weights, zero biases
            nn.init.normal_(layer.weight, std=0.01, generator=generator)
            nn.init.zeros_(layer.bias)
        else:  # PyTorch's nn.Linear default (Kaiming-uniform, a=sqrt(5)), drawn from our generator
            bound = 1.0 / layer.in_features**0.5
            nn.init.kaiming_uniform_(layer.weight, a=5**0.5, generator=generator)
            nn.init.uniform_(layer.bias, -bound, bound, generator=generator)
    return BatchNormMLP(model) if config.batch_norm else model


def augment_batch(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Random horizontal flip and a random (dy, dx) shift in [-max_shift, max_shift] per image, zero-filled."""
    n = x.shape[0]
    flip = torch.rand(n, generator=generator) < 0.5
    x = torch.where(flip[:, None, None], x.flip(-1), x)
    if max_shift <= 0:
        return x
    pad = F.pad(x, (max_shift, max_shift, max_shift, max_shift))
    side = x.shape[-1]
    dy = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    dx = torch.randint(0, 2 * max_shift + 1, (n,), generator=generator)
    rows = (dy[:, None] + torch.arange(side)[None, :])[:, :, None]  # (n, side, 1)
    cols = (dx[:, None] + torch.arange(side)[None, :])[:, None, :]  # (n, 1, side)
    return pad[torch.arange(n)[:, None, None], rows, cols]


class NoiseTable:
    """Gaussian pixel noise from a shared table: one seeded draw of ``size`` values, then a random window per batch.

    Drawing fresh normals for every batch costs about 1.2 ms per 256-image step here, 12 % of the step; a window
    at a random offset into one 16 MiB table costs one random integer (the shared noise table of Salimans et al.,
    "Evolution Strategies as a Scalable Alternative to Reinforcement Learning", 2017). Each batch still gets
    i.i.d.-looking N(0, std^2) noise; with about 4 million offsets, the same window recurs rarely.
    """

    def __init__(self, std: float, generator: torch.Generator, device: torch.device, size: int = 1 << 22) -> None:
        self.table = torch.randn(size, generator=generator).mul_(std).to(device)

    def sample(self, shape: torch.Size, generator: torch.Generator) -> torch.Tensor:
        n = shape.numel()
        if n > self.table.numel():
            raise ValueError(f"a batch of {n} values does not fit the noise table ({self.table.numel()})")
        offset = int(torch.randint(0, self.table.numel() - n + 1, (1,), generator=generator))
        return self.table[offset : offset + n].view(shape)


def ema_decay(decay: float, step: int) -> float:
    """Warm-up of the average: min(decay, (1 + step) / (10 + step)), so short runs are not stuck near the init."""
    return min(decay, (1.0 + step) / (10.0 + step))


def _optimizer(config: TrainConfig, model: nn.Module) -> torch.optim.Optimizer:
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    # Weight decay on the linear layers' weights only: not on biases, nor on batch-norm scales and shifts.
    linear_weights = {id(m.weight) for m in model.modules() if isinstance(m, nn.Linear)}
    decay = [p for p in model.parameters() if id(p) in linear_weights]
    no_decay = [p for p in model.parameters() if id(p) not in linear_weights]
    groups = [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    # fused: one kernel for all parameters, about twice as fast as the default per-tensor loop on CPU, but its
    # rounding differs, so the default keeps the loop and reproduces the artifacts it trained before
    return torch.optim.AdamW(groups, lr=config.lr, fused=config.fused_adamw or None)


@torch.no_grad()
def evaluate_split(model: nn.Module, split: Split, device: torch.device, chunk: int = 5000) -> tuple[float, float]:
    """Eval-mode (dropout off) mean cross-entropy and accuracy."""
    model.eval()
    loss, correct = 0.0, 0
    for start in range(0, len(split), chunk):
        x = split.images[start : start + chunk].to(device, torch.float32)
        y = split.labels[start : start + chunk].to(device)
        logits = model(x)
        loss += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += int((logits.argmax(1) == y).sum())
    return loss / len(split), correct / len(split)


def train(
    config: TrainConfig,
    train_split: Split,
    val_split: Split,
    device: torch.device,
    on_epoch: Callable[[dict[str, Any]], None] | None = None,
) -> TrainResult:
    """Train the §4.6 network; export the last epoch's averaged weights, or those with the lowest validation loss.

    With ``config.batch_norm`` the batch norms are folded into ``fc1``/``fc2`` before anything is returned.
    """
    torch.manual_seed(config.seed)  # F.dropout draws from the global generator
    gen = torch.Generator().manual_seed(config.seed)  # init, shuffling and augmentation
    model = build_model(config, gen).to(device)
    opt = _optimizer(config, model)
    steps_per_epoch = -(-len(train_split) // config.batch_size)
    sched: torch.optim.lr_scheduler.LRScheduler | None = None
    if config.schedule == "onecycle" and config.epochs * steps_per_epoch >= 8:  # shorter runs: constant lr
        sched = torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=config.lr, epochs=config.epochs, steps_per_epoch=steps_per_epoch, pct_start=0.25
        )
    ema = copy.deepcopy(model) if config.ema_decay > 0 else model  # the averaged weights we evaluate and export
    # The average covers the batch norms' running statistics too (float buffers), as the weights it pairs with.
    ema_params = [*ema.parameters(), *(b for b in ema.buffers() if b.is_floating_point())]
    params = [*model.parameters(), *(b for b in model.buffers() if b.is_floating_point())]
    images = train_split.images.to(device)
    noise = NoiseTable(config.input_noise * PIXEL_MAX, gen, device) if config.input_noise > 0 else None
    labels = train_split.labels.to(device)
    history: list[dict[str, Any]] = []
    best_loss, best_epoch, best_state = float("inf"), 0, copy.deepcopy(ema.state_dict())
    steps = 0
    start = time.perf_counter()
    for epoch in range(1, config.epochs + 1):
        model.train()
        perm = torch.randperm(len(train_split), generator=gen).to(device)
        total, correct, seen = 0.0, 0, 0
        bar = tqdm(  # disable=None: no bar when stderr is not a terminal (container logs get the epoch lines)
            range(steps_per_epoch), desc=f"epoch {epoch}/{config.epochs}", file=sys.stderr, leave=False, disable=None
        )
        for step in bar:
            idx = perm[step * config.batch_size : (step + 1) * config.batch_size]
            x = images[idx].to(torch.float32)
            if config.augment:
                x = augment_batch(x.cpu(), config.max_shift, gen).to(device)
            if noise is not None:
                x = x + noise.sample(x.shape, gen)
            y = labels[idx]
            logits = model(x)
            loss = F.cross_entropy(logits, y, label_smoothing=config.label_smoothing)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            if ema is not model:
                with torch.no_grad():
                    torch._foreach_lerp_(ema_params, params, 1.0 - ema_decay(config.ema_decay, steps))
            steps += 1
            total += float(loss.detach()) * len(idx)
            correct += int((logits.argmax(1) == y).sum())
            seen += len(idx)
            if step % 20 == 0:
                bar.set_postfix(loss=f"{total / seen:.4f}", acc=f"{correct / seen:.4f}")
        bar.close()
        val_loss, val_acc = evaluate_split(ema, val_split, device)
        row = {
            "epoch": epoch,
            "train_loss": total / seen,
            "train_accuracy": correct / seen,
            "val_loss": val_loss,
            "val_accuracy": val_acc,
            "lr": opt.param_groups[0]["lr"],
            "elapsed_seconds": round(time.perf_counter() - start, 3),
        }
        history.append(row)
        print(
            f"epoch {epoch:3d}/{config.epochs}  train loss {row['train_loss']:.4f} acc {row['train_accuracy']:.4f}"
            f"  val loss {val_loss:.4f} acc {val_acc:.4f}  ({row['elapsed_seconds']:.1f} s)",
            file=sys.stderr,
        )
        if on_epoch is not None:
            on_epoch(row)
        if config.select == "last" or val_loss < best_loss:
            best_loss, best_epoch, best_state = val_loss, epoch, copy.deepcopy(ema.state_dict())
    train_seconds = time.perf_counter() - start
    ema.load_state_dict(best_state)
    ema.eval()
    return TrainResult(model=exportable(ema), history=history, train_seconds=train_seconds, best_epoch=best_epoch)


def append_history(path: Path, row: dict[str, Any]) -> None:
    with open(path, "a") as fh:
        fh.write(json.dumps(row) + "\n")
