"""``python -m bench train``: samples/s of the training job vs the book's DataLoader + per-sample transforms.

Both sides train the same network (784-256-256-10 dropout MLP) with the same optimizer
configuration and batch size on the real Fashion-MNIST training images:

* ``training_job`` - ``training.train.train`` (the project's job: whole-batch indexing of an
  in-memory uint8 tensor, normalisation inside the network), timed over whole epochs
  (its per-epoch validation pass included);
* ``dataloader`` - d2l.ai's way: ``torchvision.datasets.FashionMNIST`` with
  ``transforms.Compose([ToTensor(), Normalize(...)])`` applied per sample, batched by a
  ``DataLoader(shuffle=True, num_workers=W)``, then the same forward/backward/step.
"""

from __future__ import annotations

import dataclasses
import os
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

from mcnet import InputSpec

DATA_DIR = Path("/usr/share/datasets/fashion-mnist")


def _config(quick: bool, threads: int, batch_size: int) -> Any:
    from training.config import TrainConfig

    return TrainConfig(epochs=1 if quick else 2, batch_size=batch_size, threads=threads, plots=False)


def training_job(config: Any, root: Path, limit: int | None) -> dict[str, Any]:
    from training.data import Split, read_split
    from training.train import train

    full = read_split(root, True)
    split = full.head(limit)
    val = Split(full.images[-5000:], full.labels[-5000:])
    result = train(config, split, val, torch.device("cpu"))
    samples = len(split) * config.epochs
    return {
        "samples": samples,
        "seconds": result.train_seconds,
        "samples_per_s": samples / result.train_seconds,
        "source": "training.train.train (the project's job, incl. its per-epoch validation pass)",
    }


def dataloader_pipeline(config: Any, root: Path, limit: int | None, workers: int) -> dict[str, Any]:
    from torch.utils.data import DataLoader, Subset
    from torchvision import transforms
    from torchvision.datasets import FashionMNIST

    from training.batchnorm import BatchNormMLP
    from training.train import _optimizer, build_model

    spec = InputSpec()
    tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((spec.mean,), (spec.std,))])
    dataset: Any = FashionMNIST(str(root), train=True, transform=tf, download=False)
    if limit is not None:
        dataset = Subset(dataset, range(limit))
    loader = DataLoader(dataset, batch_size=config.batch_size, shuffle=True, num_workers=workers)
    torch.manual_seed(config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    # inputs arrive normalised by the transform, so the network's own normalisation is the identity
    model = build_model(dataclasses.replace(config, normalise=False), gen)
    net = model.base if isinstance(model, BatchNormMLP) else model  # same network, batch norms included
    net.in_scale.fill_(1.0)
    net.in_shift.fill_(0.0)
    opt = _optimizer(config, model)
    model.train()
    samples = 0
    start = time.perf_counter()
    for _ in range(config.epochs):
        for x, y in loader:
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            samples += int(y.shape[0])
    seconds = time.perf_counter() - start
    return {
        "samples": samples,
        "seconds": seconds,
        "samples_per_s": samples / seconds,
        "source": f"torchvision FashionMNIST + ToTensor/Normalize per sample + DataLoader(num_workers={workers})",
    }


def run(quick: bool, threads: int, batch_size: int, loader_workers: int) -> dict[str, Any]:
    os.environ.setdefault("TQDM_DISABLE", "1")  # the training loop's progress bar would flood the bench log
    torch.set_num_threads(threads)
    config = _config(quick, threads, batch_size)
    limit = 20_000 if quick else None
    from training.data import torchvision_root

    with torchvision_root(DATA_DIR) as root:
        job = training_job(config, root, limit)
        book = dataloader_pipeline(config, root, limit, loader_workers)
    return {
        "training_job_samples_per_s": job["samples_per_s"],
        "dataloader_samples_per_s": book["samples_per_s"],
        "train_speedup_vs_dataloader": job["samples_per_s"] / book["samples_per_s"],
        "training_job": job,
        "dataloader": book,
        "conditions": {
            "torch_threads": threads,
            "batch_size": batch_size,
            "epochs": config.epochs,
            "train_images": limit or 60_000,
            "optimizer": config.optimizer,
            "augment_in_training_job": config.augment,
            "input_noise_in_training_job": config.input_noise,
            "batch_norm": config.batch_norm,
            "note": "same network, optimizer config and batch size on both sides; only the input pipeline differs "
            "(the training job also draws its Gaussian input noise, which the book's pipeline does not)",
        },
    }
