"""The tiled MC kernel: a seeded request's answer is bit-identical alone and in any company, however its tiles are
spread over kernel calls; its random streams are the documented ones. Every test runs with both codes of the kernel:
the C one (``service.mcnative``, built by ``make install``) and the numpy one."""

from __future__ import annotations

import random
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mcnet import Architecture, DropoutMLP, load_artifact
from service import mcnative
from service.inference import MCResult, _plan
from service.mckernel import PASS_BLOCK, prepare, run_tiles, tiles_of
from service.mcrandom import lane_layout, splitmix64, tile_states
from service.mcrequest import Accumulator, mc_tiled
from service.mcweights import weights_of

FIELDS = ("mean_probs", "variance", "std", "predictive_entropy", "expected_entropy", "mutual_information")


@pytest.fixture(autouse=True, params=["on", "off"], ids=["c", "numpy"])
def code(request: pytest.FixtureRequest) -> Iterator[mcnative.Choice]:
    """MCSERVE_MC_NATIVE for this test: ``on`` fails loudly when the C kernel is not built."""
    choice = mcnative.configure(request.param)
    yield choice
    mcnative.configure("auto")


@pytest.fixture(scope="module")
def model(trained_artifact: Path) -> DropoutMLP:
    return load_artifact(trained_artifact, "cpu")[0]


@pytest.fixture(scope="module")
def pixels(test_images: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
    return test_images[0][:64].astype(np.float32)


def identical(a: MCResult, b: MCResult) -> list[str]:
    return [f for f in FIELDS if not torch.equal(getattr(a, f), getattr(b, f))]


requests = st.lists(
    st.tuples(
        st.integers(1, 4),  # images
        st.sampled_from([1, 2, 7, 100, PASS_BLOCK, PASS_BLOCK + 1, 300]),  # passes: one tile, several, a short last one
        st.integers(0, 2**63 - 1),  # seed
    ),
    min_size=1,
    max_size=6,
)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(mix=requests, split=st.integers(0, 2**32 - 1))
def test_a_seeded_answer_is_bit_identical_alone_and_in_any_company(
    model: DropoutMLP, pixels: np.ndarray, mix: list[tuple[int, int, int]], split: int
) -> None:
    """Property: random request mixes, their tiles shuffled and cut into random calls, give each request exactly
    the answer it gets alone (every field, every bit)."""
    rng = random.Random(split)
    xs = [pixels[rng.sample(range(len(pixels)), b)] for b, _, _ in mix]
    alone = [mc_tiled(model, x, t, seed) for x, (_, t, seed) in zip(xs, mix, strict=True)]
    prepared = [prepare(model, x, t, seed) for x, (_, t, seed) in zip(xs, mix, strict=True)]
    accs = [Accumulator(p, 10) for p in prepared]
    tiles = [(r, q, tile) for r, p in enumerate(prepared) for q, tile in enumerate(tiles_of(p))]
    rng.shuffle(tiles)
    while tiles:
        n = rng.randint(1, len(tiles))
        call, tiles = tiles[:n], tiles[n:]
        parts = run_tiles(model, [tile for _, _, tile in call])
        for k, (r, q, _) in enumerate(call):
            accs[r].put(q, parts, k, k + 1)
    for request, (solo, acc) in enumerate(zip(alone, accs, strict=True)):
        assert identical(solo, acc.result()) == [], (request, mix[request])


def test_call_size_does_not_change_the_answer(model: DropoutMLP, pixels: np.ndarray) -> None:
    reference = mc_tiled(model, pixels[:5], 300, 11)
    for max_rows in (1, 100, 129, 1000, 100_000):
        assert identical(mc_tiled(model, pixels[:5], 300, 11, max_rows), reference) == []
    assert identical(mc_tiled(model, pixels[:5], 300, 12), reference) != []  # another seed, other masks


def test_an_image_answers_the_same_whatever_else_its_request_holds(model: DropoutMLP, pixels: np.ndarray) -> None:
    """Tile streams are keyed by (seed, image index, block): an image's answer depends on its position, not on
    the other images of its request."""
    a = mc_tiled(model, pixels[:3], 100, 5)
    b = mc_tiled(model, np.concatenate([pixels[:2], pixels[40:41]]), 100, 5)
    assert torch.equal(a.mean_probs[:2], b.mean_probs[:2]) and torch.equal(a.variance[:2], b.variance[:2])
    assert not torch.equal(a.mean_probs[2], b.mean_probs[2])


def test_splitmix64_and_the_tile_streams() -> None:
    assert splitmix64(0) == 0xE220A8397B1DCDAF  # the reference generator's first output from state 0
    states = tile_states([(1, 0, 0), (1, 0, 1), (1, 1, 0), (2, 0, 0), (1, 0, 0)])
    assert states.dtype == np.uint64 and states.shape == (5, 4) and (states[:, 3] == 1).all()
    assert len({tuple(s) for s in states[:4].tolist()}) == 4 and (states[0] == states[4]).all()
    words = []
    for state in states[:4]:
        gen = np.random.SFC64(0)
        gen.state = {"bit_generator": "SFC64", "state": {"state": state}, "has_uint32": 0, "uinteger": 0}
        words.append(gen.random_raw(20_000))
    bits = np.unpackbits(np.concatenate(words).view(np.uint8))
    assert abs(bits.mean() - 0.5) < 5 * 0.5 / np.sqrt(bits.size)
    for a in range(4):  # streams of neighbouring tiles are unrelated
        for b in range(a + 1, 4):
            same = np.unpackbits((words[a] ^ words[b]).view(np.uint8)).mean()
            assert abs(same - 0.5) < 0.01


@pytest.mark.parametrize("p", [0.2, 0.5])
def test_layer_one_lanes_keep_units_at_the_effective_rate(p: float) -> None:
    layout = lane_layout(_plan(p))
    n = 1 << 20
    lanes = np.random.SFC64(3).random_raw(layout.words(n)).view(layout.dtype)[:n]
    kept = float((lanes >= layout.threshold).mean())
    keep = layout.plan.keep
    assert abs(kept - keep) < 5 * (keep * (1 - keep) / n) ** 0.5


def test_run_tiles_refuses_tiles_of_two_models_and_an_empty_call(model: DropoutMLP, pixels: np.ndarray) -> None:
    other = DropoutMLP(Architecture())
    other.load_state_dict(model.state_dict())
    other.eval()
    a, b = prepare(model, pixels[:1], 10, 0), prepare(other, pixels[:1], 10, 0)
    assert a.weights is weights_of(model) and b.weights is not a.weights
    with pytest.raises(ValueError, match="same model"):
        run_tiles(model, tiles_of(a) + tiles_of(b))
    with pytest.raises(ValueError, match="at least one"):
        run_tiles(model, [])


def test_tile_states_are_the_same_numbers_for_one_tile_or_many() -> None:
    """Many tiles' states are computed with numpy, a few in Python: the two must agree exactly."""
    keys = [(2**64 - 1 - k, k * 7, k % 3) for k in range(20)]
    many = tile_states(keys)
    assert (many == np.concatenate([tile_states([key]) for key in keys])).all()
