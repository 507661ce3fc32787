"""What every adapter and the metrics read of an MC outcome: labels, the input check's verdicts and the one flag to
act on, from a real kernel call on the trained artifact over real Fashion-MNIST test images (and noise)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from service import Settings
from service.engine import Engine
from service.mcoutcome import MCOutcome, outliers_of, summarise, to_cpu, uncertain_flags
from service.mcrequest import mc_tiled


@pytest.fixture(scope="module")
def engine(trained_artifact: Path, make_settings: Callable[..., Settings]) -> Engine:
    engine = Engine(make_settings(trained_artifact))
    engine.load()
    return engine


def test_summarise_agrees_with_the_kernels_numbers_and_the_manifests_thresholds(
    engine: Engine, test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    images, _ = test_images
    noise = np.random.default_rng(3).integers(0, 256, (2, 28, 28)).astype(np.float32)
    x = np.concatenate([images[:6].astype(np.float32), noise])
    result = to_cpu(mc_tiled(engine.loaded.model, x, 100, 7, 8192))
    residuals = engine.input_residuals_array(x)
    assert residuals is not None, "the trained artifact carries an input check"
    summary = summarise(engine, MCOutcome(result, residuals, 100, 7, 0.0))

    mean = result.mean_probs.numpy()
    mi = result.mutual_information.numpy()
    names = engine.loaded.class_names
    assert summary.class_ids == mean.argmax(1).tolist()
    assert summary.labels == [names[i] for i in mean.argmax(1)]
    check = engine.loaded.input_check
    assert check is not None
    assert summary.outliers == (residuals > check.threshold).tolist()
    assert summary.outliers[-2:] == [True, True], "uniform noise is outside the training images' subspace"
    expected = (mi > engine.loaded.threshold) | (residuals > check.threshold)
    assert summary.uncertain == expected.tolist()
    assert summary.mutual_information == pytest.approx(mi.tolist(), abs=0)
    assert summary.n_samples == 100 and summary.set_sizes == () and summary.abstained == 0


def test_without_scores_no_image_is_an_outlier_and_only_mi_flags(engine: Engine) -> None:
    assert outliers_of(engine, None, 3) == [None, None, None]
    threshold = engine.loaded.threshold
    assert uncertain_flags(engine, [threshold / 2, threshold * 2, threshold], [None, None, None]) == [
        False,
        True,
        False,
    ]
    assert uncertain_flags(engine, [0.0], [True]) == [True], "an outlier is flagged whatever its MI"
