"""The C JSON pixel parser (service.mcjson): whatever it accepts, it reads exactly as the general decoder does, and it
accepts the form clients send.

The library is built by ``make install``; a missing one fails here (it would silently cost the fast path a fifth of
its decode speed, never an answer)."""

from __future__ import annotations

import json

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from service import mcjson
from service.decode import decode_json_general, decode_json_request

PREDICT, MC = frozenset({"images"}), frozenset({"images", "n_samples", "seed"})
FLAT = [(7 * i) % 256 for i in range(784)]
NESTED = [FLAT[r * 28 : (r + 1) * 28] for r in range(28)]


def test_the_library_is_built_and_loads() -> None:
    assert mcjson.problem() is None, f"{mcjson.problem()}: run `make install`"


def _same(body: bytes, fields: frozenset[str], max_batch: int = 8) -> tuple[np.ndarray, dict[str, int]] | None:
    """The C parser's answer, after checking it equals the general decoder's whenever it gives one."""
    fast = mcjson.pixels(body, fields, max_batch)
    general = decode_json_general(body, fields, max_batch)
    if fast is not None:
        assert general is not None, body[:120]
        assert fast[0].dtype == np.float32 and fast[0].shape == general[0].shape
        assert np.array_equal(fast[0], general[0]) and fast[0].flags.c_contiguous
        assert fast[1] == general[1]
    return fast


_DUMPS = [json.dumps, orjson.dumps, lambda d: json.dumps(d, indent=2)]


@pytest.mark.parametrize("dump", _DUMPS, ids=["json", "orjson", "indent"])
def test_the_common_forms_are_read_in_c(dump: object) -> None:
    for doc, fields in [
        ({"images": [FLAT]}, PREDICT),
        ({"images": [NESTED, FLAT, [[0] * 28] * 28]}, PREDICT),
        ({"images": [FLAT], "n_samples": 100}, MC),
        ({"seed": 2**59, "images": [[255] * 784], "n_samples": 1}, MC),
        ({"images": [FLAT], "seed": -3}, MC),  # in range or not is the fast path's question, not the parser's
        ({"images": [FLAT] * 8}, PREDICT),
    ]:
        body = dump(doc)  # type: ignore[operator]
        body = body.encode() if isinstance(body, str) else body
        fast = _same(body, fields)
        assert fast is not None, body[:80]
        assert len(fast[0]) == len(doc["images"])  # type: ignore[arg-type]
        assert decode_json_request(body, fields, 8) is not None


def _body(pixel: bytes = b"1", count: int = 784, tail: bytes = b"") -> bytes:
    """One image of ``count`` copies of ``pixel`` and ``tail`` after the images' list."""
    return b'{"images": [[' + b", ".join([pixel] * count) + b"]]" + tail + b"}"


@pytest.mark.parametrize(
    "body",
    [
        _body(b"2.5"),  # floats: the general decoder takes them
        _body(b"1e2"),  # exponents
        _body(b"01"),  # a leading zero: invalid JSON
        _body(b"256"),  # out of range
        _body(b"-1"),
        _body(tail=b', "n_samples": -0'),  # "-0": simdjson makes it a float
        _body(tail=b', "seed": 1234567890123456789'),  # 19 digits: the general decoder reads it
        _body(tail=b', "n_samples": 10.0'),
        _body(tail=b', "n_samples": "10"'),
        _body(tail=b', "images": [[' + b", ".join([b"2"] * 784) + b"]]"),  # a duplicate key
        _body(tail=b', "extra": 1'),  # an unknown key
        _body(tail=b","),  # a trailing comma
        _body(count=783),
        _body(count=785),
        b'{"\\u0069mages": [[' + b", ".join([b"1"] * 784) + b"]]}",  # an escaped key
        _body() + b" x",  # trailing bytes
        _body()[:-1],  # cut short
        b'{"images": [[' + b", ".join([b"1"] * 784) + b"],]}",
        b'{"images": []}',
        b"",
    ],
)
def test_anything_else_is_left_to_the_general_decoder(body: bytes) -> None:
    assert mcjson.pixels(body, MC, 8) is None
    _same(body, MC)


def test_room_and_endpoint_keys() -> None:
    body = orjson.dumps({"images": [FLAT] * 3})
    assert mcjson.pixels(body, PREDICT, 2) is None  # more images than the batch limit: the route says so
    assert decode_json_request(body, PREDICT, 2) is None
    with_samples = orjson.dumps({"images": [FLAT], "n_samples": 5})
    assert mcjson.pixels(with_samples, PREDICT, 8) is None  # /predict takes no n_samples
    assert mcjson.pixels(with_samples, MC, 8) is not None


_pixel = st.integers(0, 255)
_image = st.one_of(st.lists(_pixel, min_size=784, max_size=784), st.just(NESTED), st.just(FLAT))
_spaces = st.sampled_from([(", ", ": "), (",", ":"), (" ,\n", " :\t")])


@settings(max_examples=80, deadline=None)
@given(
    images=st.lists(_image, min_size=1, max_size=3),
    n_samples=st.one_of(st.none(), st.integers(-(10**19), 10**19)),
    seed=st.one_of(st.none(), st.integers(-(2**64), 2**64)),
    separators=_spaces,
    flip=st.one_of(st.none(), st.tuples(st.integers(0, 10**6), st.integers(0, 255))),
)
def test_property_c_answers_equal_the_general_decoders(
    images: list[object], n_samples: int | None, seed: int | None, separators: tuple[str, str], flip: object
) -> None:
    doc: dict[str, object] = {"images": images}
    if n_samples is not None:
        doc["n_samples"] = n_samples
    if seed is not None:
        doc["seed"] = seed
    body = bytearray(json.dumps(doc, separators=separators).encode())
    if flip is not None:  # one byte changed anywhere: the C parser declines it or reads what simdjson reads
        at, value = flip  # type: ignore[misc]
        body[at % len(body)] = value
    fast = _same(bytes(body), MC)
    small = all(v is None or -(10**18) < v < 10**18 for v in (n_samples, seed))
    if flip is None and small:
        assert fast is not None  # the common form is never left to the slow decoder
