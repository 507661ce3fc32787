"""The kernels: eval prediction, and both MC dropout kernels (the tiled one the service runs on CPU, the torch one it
runs on CUDA, here on CPU) against the naive train() loop."""

from __future__ import annotations

import copy
from collections.abc import Callable

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mcnet import Architecture, DropoutMLP, load_artifact, save_artifact
from service.inference import (
    MCResult,
    _plan,
    _use_sparse,
    effective_dropout,
    mc_predict,
    mc_predict_torch,
    predict_eval,
    random_words,
)

T = 3000  # passes on each side of the equivalence test
Kernel = Callable[[DropoutMLP, torch.Tensor, int, torch.Generator, int], MCResult]


def _torch(sparse: bool) -> Kernel:
    def kernel(model: DropoutMLP, x: torch.Tensor, n: int, g: torch.Generator, chunk_size: int = 8192) -> MCResult:
        return mc_predict_torch(model, x, n, g, chunk_size, sparse=sparse)

    return kernel


# mc_predict on CPU is the tiled kernel (service.mckernel); the torch kernel is what CUDA runs, in both its paths
KERNELS = {"tiled": mc_predict, "torch-dense": _torch(False), "torch-active": _torch(True)}
each_kernel = pytest.mark.parametrize("kernel", list(KERNELS.values()), ids=list(KERNELS))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> DropoutMLP:
    """A confident network independent of training: seeded init with weights scaled x3, through an artifact."""
    torch.manual_seed(0)
    net = DropoutMLP()
    with torch.no_grad():
        for param in net.parameters():
            param.mul_(3.0)
    out = tmp_path_factory.mktemp("kernel") / "model"
    save_artifact(out, net)
    return load_artifact(out, "cpu")[0]


@pytest.fixture(scope="module")
def x(test_images: tuple[np.ndarray, np.ndarray]) -> torch.Tensor:
    return torch.from_numpy(test_images[0][:6].astype(np.float32))


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


@pytest.fixture(scope="module")
def naive(model: DropoutMLP, x: torch.Tensor) -> torch.Tensor:
    """T independent forward passes of a separate copy in train() mode: (T, B, C) probabilities."""
    twin = copy.deepcopy(model).train()
    torch.manual_seed(123)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny per-pass ops: one thread avoids sync overhead on a busy machine
    try:
        with torch.no_grad():
            return torch.stack([F.softmax(twin(x), dim=-1) for _ in range(T)]).double()
    finally:
        torch.set_num_threads(threads)


def entropy(p: torch.Tensor) -> torch.Tensor:
    return -torch.special.xlogy(p, p).sum(-1)


def within(a: torch.Tensor, b: torch.Tensor, tol: torch.Tensor) -> bool:
    return bool(((a - b).abs() <= tol).all())


def equivalent(r: MCResult, s: torch.Tensor) -> dict[str, bool]:
    """Compare the kernel's summaries with the naive samples, each within 5 standard errors."""
    n = s.shape[0]
    mean, var = s.mean(0), s.var(0, unbiased=False)
    fourth = ((s - mean) ** 4).mean(0)
    se_var = ((fourth - var**2).clamp_min(0) / n).sqrt()
    ent = entropy(s)  # (T, B)
    pe = entropy(mean)
    # Delta method: per-pass influence of each sample on the entropy estimates gives their standard errors.
    grad = -(torch.log(mean.clamp_min(1e-12)) + 1)  # dH/dmean, (B, C)
    pe_infl = ((s - mean) * grad).sum(-1)  # (T, B)
    mi_infl = pe_infl - (ent - ent.mean(0))
    return {
        "mean": within(r.mean_probs.double(), mean, 5 * (2 * var / n).sqrt() + 1e-4),
        "variance": within(r.variance.double(), var, 5 * (2**0.5) * se_var + 1e-5),
        "std": within(r.std.double() ** 2, var, 5 * (2**0.5) * se_var + 1e-5),
        "expected_entropy": within(r.expected_entropy.double(), ent.mean(0), 5 * (2 * ent.var(0) / n).sqrt() + 1e-4),
        "predictive_entropy": within(r.predictive_entropy.double(), pe, 5 * (2 * pe_infl.var(0) / n).sqrt() + 1e-4),
        "mutual_information": within(
            r.mutual_information.double(), pe - ent.mean(0), 5 * (2 * mi_infl.var(0) / n).sqrt() + 1e-4
        ),
    }


def test_predict_eval_is_the_deterministic_softmax(model: DropoutMLP, x: torch.Tensor) -> None:
    probs = predict_eval(model, x)
    with torch.no_grad():
        expected = F.softmax(model(x), dim=-1)
    assert torch.equal(probs, expected)
    assert torch.equal(predict_eval(model, x), probs)
    assert torch.allclose(probs.sum(-1), torch.ones(len(x)))


@each_kernel
def test_mc_kernel_is_statistically_equivalent_to_train_mode_passes(
    model: DropoutMLP, x: torch.Tensor, naive: torch.Tensor, kernel: Kernel
) -> None:
    samples = naive
    assert samples.var(0).max() > 1e-3, "the test needs a model whose dropout actually moves the probabilities"
    result = kernel(model, x, T, gen(7), 500)  # 83 samples per chunk, many chunks
    checks = equivalent(result, samples)
    assert checks == dict.fromkeys(checks, True)
    assert not model.training


@each_kernel
def test_equivalence_check_detects_a_wrong_dropout_rate(
    model: DropoutMLP, x: torch.Tensor, naive: torch.Tensor, kernel: Kernel
) -> None:
    """The tolerance is tight enough to fail for a kernel whose dropout differs from train() mode."""
    wrong = DropoutMLP(Architecture(dropout=(0.2, 0.3)))
    wrong.load_state_dict(model.state_dict())
    wrong.eval()
    checks = equivalent(kernel(wrong, x, T, gen(7), 500), naive)
    assert not (checks["variance"] and checks["mutual_information"])


@each_kernel
def test_same_seed_same_result_other_seed_differs(model: DropoutMLP, x: torch.Tensor, kernel: Kernel) -> None:
    a = kernel(model, x, 50, gen(42), 64)
    b = kernel(model, x, 50, gen(42), 64)
    c = kernel(model, x, 50, gen(43), 64)
    for field in ("mean_probs", "variance", "std", "predictive_entropy", "expected_entropy", "mutual_information"):
        assert torch.equal(getattr(a, field), getattr(b, field)), field
    assert not torch.equal(a.mean_probs, c.mean_probs)


@each_kernel
@pytest.mark.parametrize("chunk_size", [1, 5, 12, 10_000])
def test_without_dropout_mc_reduces_to_eval(
    model: DropoutMLP, x: torch.Tensor, chunk_size: int, kernel: Kernel
) -> None:
    """With p = 0 every pass equals the eval pass: exact checks of the reductions for any chunking."""
    plain = DropoutMLP(Architecture(dropout=(0.0, 0.0)))
    plain.load_state_dict(model.state_dict())
    plain.eval()
    r = kernel(plain, x, 7, gen(0), chunk_size)
    probs = predict_eval(plain, x)
    assert r.n_samples == 7
    torch.testing.assert_close(r.mean_probs, probs, atol=1e-6, rtol=0)
    assert float(r.variance.max()) < 1e-10
    torch.testing.assert_close(r.predictive_entropy, entropy(probs.double()).float(), atol=1e-5, rtol=0)
    torch.testing.assert_close(r.expected_entropy, r.predictive_entropy, atol=1e-5, rtol=0)
    assert float(r.mutual_information.max()) < 1e-5


@each_kernel
def test_summaries_are_consistent(model: DropoutMLP, x: torch.Tensor, kernel: Kernel) -> None:
    r = kernel(model, x, 200, gen(1), 100)
    torch.testing.assert_close(r.mean_probs.sum(-1), torch.ones(len(x)))
    assert bool((r.variance >= 0).all()) and bool((r.mutual_information >= 0).all())
    torch.testing.assert_close(r.std**2, r.variance)
    torch.testing.assert_close(r.mutual_information, (r.predictive_entropy - r.expected_entropy).clamp_min(0))
    assert r.mean_probs.shape == r.variance.shape == (len(x), 10)


@each_kernel
def test_active_unit_path_handles_images_with_no_active_unit(
    model: DropoutMLP, x: torch.Tensor, kernel: Kernel
) -> None:
    """Negative fc1 biases switch hidden1 off: fc2 then sees only its bias, whatever the first mask."""
    dark = DropoutMLP(Architecture(dropout=(0.2, 0.0)))  # no second dropout: every pass is then identical
    dark.load_state_dict(model.state_dict())
    dark.eval()
    with torch.no_grad():
        dark.fc1.bias.fill_(-1e4)
        dark.fc1.bias[:3] = 1e4  # 3 units on for every image: K = 3
    images = torch.cat([x[:2].reshape(2, 784), torch.zeros(1, 784)])
    r = kernel(dark, images, 40, gen(0), 64)
    torch.testing.assert_close(r.mean_probs.sum(-1), torch.ones(3))
    assert float(r.variance.max()) > 1e-6  # the 3 active units are still dropped at random
    with torch.no_grad():
        dark.fc1.bias.fill_(-1e4)  # nothing active in any image
        constant = F.softmax(dark.fc3(F.relu(dark.fc2.bias)), dim=-1)
    r = kernel(dark, images, 40, gen(0), 64)
    torch.testing.assert_close(r.mean_probs, constant.expand(3, -1), atol=1e-6, rtol=0)
    assert float(r.variance.max()) < 1e-10


def test_weights_changed_in_place_are_seen_by_the_next_call(model: DropoutMLP, x: torch.Tensor) -> None:
    """The kernel caches derived weight layouts per model; an in-place update must invalidate them."""
    plain = DropoutMLP(Architecture(dropout=(0.0, 0.0)))
    plain.load_state_dict(model.state_dict())
    plain.eval()
    for kernel in KERNELS.values():
        kernel(plain, x, 20, gen(0))  # fills the caches
    with torch.no_grad():
        plain.fc1.weight.mul_(1.5)
        plain.fc2.weight.mul_(0.5)
        plain.fc3.bias.add_(1.0)
    for kernel in KERNELS.values():
        r = kernel(plain, x, 20, gen(0))
        torch.testing.assert_close(r.mean_probs, predict_eval(plain, x), atol=1e-6, rtol=0)


def test_torch_kernel_path_choice_follows_activity_and_passes_per_chunk() -> None:
    assert _use_sparse(active=41, width=256, passes=100)  # a trained model: ~16 % of units active
    assert not _use_sparse(active=200, width=256, passes=100)  # most units active: the dense GEMM is cheaper
    assert not _use_sparse(active=41, width=256, passes=10)  # few passes per image: gathers do not pay back


def test_kernel_refuses_a_model_in_train_mode(model: DropoutMLP, x: torch.Tensor) -> None:
    twin = copy.deepcopy(model).train()
    for kernel in KERNELS.values():
        with pytest.raises(RuntimeError, match="eval"):
            kernel(twin, x, 2, gen(0))
    with pytest.raises(RuntimeError, match="eval"):
        predict_eval(twin, x)


@pytest.mark.parametrize("p", [0.2, 0.3, 0.5, 0.9])
def test_masks_drop_units_at_the_effective_rate(p: float) -> None:
    """Each unit is kept independently with the documented probability (0.5 exact, others to 2**-16)."""
    rate = effective_dropout(p)
    assert abs(rate - p) <= 2**-17
    if p == 0.5:
        assert rate == 0.5
    plan = _plan(p)
    n = 1 << 20
    keep = plan.mask(torch.empty(plan.words(n), dtype=torch.int64).random_(-(2**63), 2**63 - 1, generator=gen(5)), n)
    assert keep.dtype == torch.bool and keep.shape == (n,)
    words = torch.empty(plan.words(n), dtype=torch.int64).random_(-(2**63), 2**63 - 1, generator=gen(5))
    assert torch.equal(plan.mask(words, n, torch.float32), keep.float())  # the float mask the kernel multiplies by
    kept = float(keep.float().mean())
    assert abs(kept - (1 - rate)) < 5 * (rate * (1 - rate) / n) ** 0.5
    pairs = keep[: n // 2 * 2].view(-1, 2).float()  # neighbouring units are independent
    assert abs(float((pairs[:, 0] * pairs[:, 1]).mean()) - (1 - rate) ** 2) < 5 * (1 / n) ** 0.5


def test_effective_dropout_of_the_served_rates() -> None:
    assert effective_dropout(0.0) == 0.0
    assert effective_dropout(0.5) == 0.5
    assert effective_dropout(0.2) == 13107 / 65536
    with pytest.raises(ValueError):
        effective_dropout(1.0)


def test_random_words_are_reproducible_per_seed_and_have_balanced_independent_bits() -> None:
    cpu = torch.device("cpu")
    a = random_words(50_000, torch.Generator().manual_seed(7), cpu)
    b = random_words(50_000, torch.Generator().manual_seed(7), cpu)
    c = random_words(50_000, torch.Generator().manual_seed(8), cpu)
    assert a.dtype == torch.int64 and a.shape == (50_000,)
    assert torch.equal(a, b) and not torch.equal(a, c)
    bits = ((a.unsqueeze(1) >> torch.arange(64)) & 1).float()  # (50000, 64)
    per_bit = bits.mean(dim=0)  # each bit position: P(1) = 1/2, sd 0.0022 over 50k words
    assert float((per_bit - 0.5).abs().max()) < 0.012
    lag = (bits[1:] * bits[:-1]).mean(dim=0)  # consecutive words independent: P(1, 1) = 1/4
    assert float((lag - 0.25).abs().max()) < 0.012
    g = torch.Generator().manual_seed(7)
    first = random_words(1000, g, cpu)
    assert not torch.equal(random_words(1000, g, cpu), first)  # the generator advances between chunks


def test_keep_freed_buffers_applies_on_glibc() -> None:
    import platform

    from service.memory import keep_freed_buffers

    libc, _ = platform.libc_ver()
    assert keep_freed_buffers() is (libc == "glibc")  # this machine and the images are glibc (Debian)
