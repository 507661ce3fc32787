"""Pieces of the training loop: the noise table and the optimizer's weight-decay groups."""

from __future__ import annotations

import pytest
import torch

from training.config import TrainConfig, plain_preset
from training.train import NoiseTable, _optimizer, build_model


def test_noise_table_windows_are_seeded_gaussian_batches() -> None:
    table = NoiseTable(25.5, torch.Generator().manual_seed(0), torch.device("cpu"), size=1 << 18)
    shape = torch.Size((64, 28, 28))
    a = table.sample(shape, torch.Generator().manual_seed(1))
    b = table.sample(shape, torch.Generator().manual_seed(1))
    assert a.shape == shape and torch.equal(a, b)  # same generator state -> same window
    gen = torch.Generator().manual_seed(2)
    c, d = table.sample(shape, gen), table.sample(shape, gen)
    assert not torch.equal(c, d)  # successive batches get different windows
    assert abs(float(c.mean())) < 0.5 and abs(float(c.std()) - 25.5) < 0.5  # 50,176 draws of N(0, 25.5^2)


def test_noise_table_refuses_a_batch_larger_than_itself() -> None:
    table = NoiseTable(1.0, torch.Generator().manual_seed(0), torch.device("cpu"), size=1000)
    with pytest.raises(ValueError, match="does not fit"):
        table.sample(torch.Size((2, 28, 28)), torch.Generator())


def test_weight_decay_applies_to_linear_weights_only() -> None:
    config = TrainConfig()  # batch norm: its scales and shifts must not be decayed either
    model = build_model(config, torch.Generator().manual_seed(0))
    opt = _optimizer(config, model)
    decayed = {id(p) for g in opt.param_groups if g["weight_decay"] > 0 for p in g["params"]}
    names = {n for n, p in model.named_parameters() if id(p) in decayed}
    assert names == {"base.fc1.weight", "base.fc2.weight", "base.fc3.weight"}
    assert all(g["weight_decay"] in (0.0, config.weight_decay) for g in opt.param_groups)
    plain = plain_preset()
    opt = _optimizer(plain, build_model(plain, torch.Generator().manual_seed(0)))
    assert sum(len(g["params"]) for g in opt.param_groups if g["weight_decay"] > 0) == 3
