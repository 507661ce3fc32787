"""The overload bench's request shapes and its place among the sections (no timing; the arithmetic is in
test_overloadstats.py)."""

from __future__ import annotations

import json

import pytest

from bench import overload


def test_flood_shape_is_the_heaviest_request_the_limits_admit() -> None:
    assert overload.flood_shape(256, 1000, 102_400) == (256, 400)  # the defaults: images x passes == max_work
    assert overload.flood_shape(8, 200, 800) == (8, 100)
    assert overload.flood_shape(256, 100, 102_400) == (256, 100)  # max_samples binds first
    assert overload.flood_shape(256, 1000, 100) == (100, 1)


def test_bodies_are_encoded_once_with_the_flood_shape() -> None:
    images = [[i % 256] * 784 for i in range(4)]
    bodies = overload.bodies(images, 3, 50)
    assert set(bodies) == {"flood", "small", "invalid", "predict"}
    assert all(isinstance(b, bytes) for b in bodies.values())
    flood = json.loads(bodies["flood"])
    assert len(flood["images"]) == 3 and flood["n_samples"] == 50 and flood["images"][2] == images[2]
    small = json.loads(bodies["small"])
    assert small == {"images": [images[0]], "n_samples": 100}
    assert json.loads(bodies["predict"]) == {"images": [images[0]]}
    assert len(json.loads(bodies["invalid"])["images"][0]) == 5  # wrong shape: a 422
    with pytest.raises(ValueError, match="need 5 images"):
        overload.bodies(images, 5, 10)


def test_overload_is_a_bench_section_and_part_of_all() -> None:
    from bench.__main__ import SECTIONS

    assert "overload" in SECTIONS
