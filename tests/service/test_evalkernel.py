"""EvalKernel: the numpy eval pass equals the torch model's softmax, and its score the input check's (the numpy
GEMM's and the C kernel's, which must be built: ``make install``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from mcnet import DropoutMLP, load_artifact
from mcnet.inputcheck import InputCheck, load_input_check
from service import mcnative
from service.evalkernel import EvalKernel
from service.inference import predict_eval

Images = tuple[np.ndarray, np.ndarray]


@pytest.fixture(scope="module")
def trained(trained_artifact: Path) -> tuple[DropoutMLP, InputCheck]:
    model, manifest = load_artifact(trained_artifact, torch.device("cpu"))
    check = load_input_check(trained_artifact, manifest)
    assert check is not None
    return model, check


def _pixels(test_images: Images) -> np.ndarray:
    """Real test images, their inverted versions (outliers) and uniform noise, as (N, 784) float32 on 0-255."""
    real = test_images[0].reshape(-1, 784).astype(np.float32)
    noise = np.random.default_rng(0).uniform(0, 255, size=(32, 784)).astype(np.float32)
    return np.concatenate([real, 255.0 - real[:64], noise])


def _exact_scores(check: InputCheck, x: np.ndarray) -> np.ndarray:
    """The check's definition in float64: mean squared residual outside the principal subspace."""
    z = x.astype(np.float64) / 255.0 - check.mean.double().numpy()
    basis = check.components.double().numpy()
    residual = z - (z @ basis.T) @ basis
    return (residual * residual).mean(1)


def test_probabilities_are_the_models_softmax(trained: tuple[DropoutMLP, InputCheck], test_images: Images) -> None:
    model, check = trained
    x = _pixels(test_images)
    out = EvalKernel(model, check)(x)
    want = predict_eval(model, torch.from_numpy(x)).numpy()
    assert out.shape == (len(x), 11) and out.dtype == np.float32
    np.testing.assert_allclose(out[:, :10], want, rtol=0, atol=1e-5)
    assert (out[:, :10].argmax(1) == want.argmax(1)).all()
    np.testing.assert_allclose(out[:, :10].sum(1), 1.0, rtol=0, atol=1e-5)


def test_scores_match_the_input_check(trained: tuple[DropoutMLP, InputCheck], test_images: Images) -> None:
    """The one-GEMM score equals the check's own (float32) score and the float64 definition, flags included."""
    model, check = trained
    x = _pixels(test_images)
    kernel = EvalKernel(model, check)
    scores = kernel(x)[:, 10]
    exact = _exact_scores(check, x)
    np.testing.assert_allclose(scores, exact, rtol=1e-6, atol=0)
    np.testing.assert_allclose(scores, check.score(torch.from_numpy(x)).numpy(), rtol=2e-6, atol=0)
    np.testing.assert_array_equal(kernel.scores(x).astype(np.float32), scores)  # the uncertainty endpoint's call
    flags = scores > check.threshold
    assert flags[-96:].all() and flags[:256].mean() < 0.1  # inverted and noise flagged, garments mostly not


def test_rows_do_not_depend_on_the_batch(trained: tuple[DropoutMLP, InputCheck], test_images: Images) -> None:
    """Dynamic batching puts a request's image in batches of any size: its row must stay the same."""
    model, check = trained
    kernel = EvalKernel(model, check)
    x = _pixels(test_images)[:40]
    batched = kernel(x)
    alone = np.concatenate([kernel(x[i : i + 1]) for i in range(len(x))])
    np.testing.assert_allclose(batched, alone, rtol=1e-6, atol=1e-7)


def test_c_scores_equal_the_gemm_to_rounding_and_never_depend_on_the_batch(
    trained: tuple[DropoutMLP, InputCheck], test_images: Images
) -> None:
    """With the C kernel each image is scored alone: bit-identical in every batch (a GEMM's rounding depends on its
    row count), and the numpy GEMM's score to float64 rounding; read-only pixels (the kernel process's) too."""
    model, check = trained
    kernel = EvalKernel(model, check)
    x = _pixels(test_images)[:100]
    try:
        assert mcnative.configure("off").native is False
        gemm = kernel.scores(x)
        assert mcnative.configure("on").native is True
        native = kernel.scores(x)
        alone = np.concatenate([kernel.scores(x[i : i + 1]) for i in range(len(x))])
        in_threes = np.concatenate([kernel.scores(x[i : i + 3]) for i in range(0, len(x), 3)])
        read_only = np.frombuffer(x[:5].tobytes(), np.float32).reshape(5, 28, 28)
        from_bytes = kernel.scores(read_only)
    finally:
        mcnative.configure("auto")
    assert native.dtype == np.float64 and native.shape == (len(x),)
    np.testing.assert_allclose(native, gemm, rtol=1e-12, atol=0)
    np.testing.assert_array_equal(alone, native)
    np.testing.assert_array_equal(in_threes, native)
    np.testing.assert_array_equal(from_bytes, native[:5])
    np.testing.assert_allclose(native, _exact_scores(check, x), rtol=1e-6, atol=0)


def test_without_an_input_check_the_score_column_is_nan(test_images: Images) -> None:
    torch.manual_seed(0)
    model = DropoutMLP().eval()
    kernel = EvalKernel(model, None)
    x = _pixels(test_images)[:8]
    out = kernel(x)
    assert np.isnan(out[:, 10]).all()
    np.testing.assert_allclose(out[:, :10], predict_eval(model, torch.from_numpy(x)).numpy(), rtol=0, atol=1e-5)
    with pytest.raises(ValueError, match="no input check"):
        kernel.scores(x)
