"""Request decoding: list and PNG inputs, the PNG policy and every rejection with its field."""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import orjson
import pytest
import torch
from PIL import Image

from service.decode import decode_batch, decode_json_request, image_from_list, image_from_png
from service.errors import DecodeError, InputError

LIMIT = 64 * 1024


def decode(images: Any = None, images_png: Any = None, max_batch: int = 8) -> torch.Tensor:
    return decode_batch(images, images_png, max_batch, LIMIT)


def test_nested_flat_and_png_give_the_same_pixels(
    test_images: tuple[np.ndarray, np.ndarray], png_b64: Callable[..., str]
) -> None:
    imgs = test_images[0][:4]
    nested = decode(images=[img.tolist() for img in imgs])
    flat = decode(images=[img.reshape(-1).tolist() for img in imgs])
    png = decode(images_png=[png_b64(img) for img in imgs])
    expected = torch.from_numpy(imgs.astype(np.float32))
    assert nested.dtype == torch.float32 and nested.shape == (4, 28, 28)
    assert torch.equal(nested, expected) and torch.equal(flat, expected) and torch.equal(png, expected)


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "P", "LA"])
def test_colour_png_is_converted_to_grayscale(
    mode: str, test_images: tuple[np.ndarray, np.ndarray], png_b64: Callable[..., str]
) -> None:
    img = test_images[0][0]
    got = image_from_png(png_b64(img, mode), "images_png[0]", LIMIT)
    assert np.array_equal(got, img.astype(np.float32))  # gray -> colour -> gray is lossless in Pillow


def test_fractional_pixels_are_kept() -> None:
    img = [[0.5] * 28 for _ in range(28)]
    assert float(image_from_list(img, "images[0]")[3, 4]) == 0.5


def _bad_image(index: int, value: Any) -> list[Any]:
    flat: list[Any] = [0] * 784
    flat[index] = value
    return flat


@pytest.mark.parametrize(
    ("image", "field", "needle"),
    [
        ([0] * 783, "images[0]", "783 values"),
        ([[0] * 28] * 27, "images[0]", "27 rows"),
        ([[0] * 28] * 27 + [[0] * 27], "images[0][27]", "27 values"),
        ([[0] * 28] * 27 + [[0] * 29], "images[0][27]", "29 values"),
        (_bad_image(30, float("nan")), "images[0]", "non-finite"),
        (_bad_image(30, float("inf")), "images[0]", "non-finite"),
        (_bad_image(30, 256), "images[0]", "outside the pixel range"),
        (_bad_image(30, -0.5), "images[0]", "outside the pixel range"),
        (_bad_image(30, 10**400), "images[0]", "outside the pixel range"),
        (_bad_image(30, "7"), "images[0]", "is str"),
        (_bad_image(30, True), "images[0]", "is bool"),
        (_bad_image(30, None), "images[0]", "is NoneType"),
        (_bad_image(30, [1]), "images[0]", "wrong shape"),
        ("abc", "images[0]", "must be a list"),
        ({"a": 1}, "images[0]", "must be a list"),
    ],
)
def test_bad_list_images_are_422_naming_the_field(image: Any, field: str, needle: str) -> None:
    with pytest.raises(InputError) as info:
        decode(images=[image])
    assert info.value.status == 422 and info.value.field == field and needle in info.value.message


def test_the_pixel_position_is_named() -> None:
    with pytest.raises(InputError, match=r"pixel 30 \(row 1, column 2\)"):
        decode(images=[_bad_image(30, 300)])


def _two_bad(first: tuple[int, Any], second: tuple[int, Any]) -> list[Any]:
    flat = _bad_image(*first)
    flat[second[0]] = second[1]
    return flat


@pytest.mark.parametrize(
    ("image", "message"),
    [
        (_two_bad((40, 300), (50, "x")), "pixel 50 (row 1, column 22) is str, expected a number"),
        (_two_bad((40, False), (50, None)), "pixel 40 (row 1, column 12) is bool, expected a number"),
        (_two_bad((40, 300), (50, float("nan"))), "pixel 50 (row 1, column 22) is non-finite (nan)"),
        (_two_bad((40, -1), (50, 256.5)), "pixel 40 (row 1, column 12) = -1 is outside the pixel range 0-255"),
        (
            _two_bad((783, 1e9), (0, 0.0)),
            "pixel 783 (row 27, column 27) = 1000000000.0 is outside the pixel range 0-255",
        ),
        (
            [[0] * 28] * 3 + [[0] * 5 + [255.5] + [0] * 22] + [[0] * 28] * 24,
            "pixel 89 (row 3, column 5) = 255.5 is outside the pixel range 0-255",
        ),
    ],
)
def test_the_first_bad_pixel_gets_the_exact_message(image: list[Any], message: str) -> None:
    """Type errors come before value errors; within a kind, the first offending pixel is named."""
    with pytest.raises(InputError) as info:
        decode(images=[[0] * 784, image])
    assert info.value.field == "images[1]" and info.value.message == f"images[1]: {message}"


@pytest.mark.parametrize(
    ("kwargs", "field", "needle"),
    [
        ({}, "images", "exactly one"),
        ({"images": [[0] * 784], "images_png": ["x"]}, "images", "exactly one"),
        ({"images": []}, "images", "empty"),
        ({"images_png": []}, "images_png", "empty"),
        ({"images": [[0] * 784] * 9}, "images", "limit is 8"),
    ],
)
def test_batch_rules(kwargs: dict[str, Any], field: str, needle: str) -> None:
    with pytest.raises(InputError) as info:
        decode(**kwargs)
    assert info.value.field == field and needle in info.value.message


def _png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _with_declared_size(png: bytes, width: int, height: int) -> bytes:
    """Rewrite the IHDR chunk (with a valid CRC) to declare another size: a decompression-bomb header."""
    ihdr = bytearray(png[16:29])
    ihdr[0:8] = struct.pack(">II", width, height)
    crc = struct.pack(">I", zlib.crc32(b"IHDR" + bytes(ihdr)) & 0xFFFFFFFF)
    return png[:16] + bytes(ihdr) + crc + png[33:]


def _noise() -> Image.Image:
    return Image.fromarray(np.random.default_rng(0).integers(0, 256, (28, 28), dtype=np.uint8))


def _jpeg() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (28, 28)).save(buf, format="JPEG")
    return buf.getvalue()


b64 = base64.b64encode


@pytest.mark.parametrize(
    ("payload", "error", "needle"),
    [
        ("not base64!!", DecodeError, "not valid base64"),
        ("QUJD", DecodeError, "not a PNG"),  # valid base64 of b"ABC"
        (b64(_jpeg()).decode(), DecodeError, "not a PNG"),
        (b64(_png_bytes(_noise())[:400]).decode(), DecodeError, "cannot be decoded"),
        (b64(_png_bytes(Image.new("L", (64, 64)))).decode(), InputError, "64x64"),
        (b64(_with_declared_size(_png_bytes(Image.new("L", (28, 28))), 5000, 5000)).decode(), InputError, "5000x5000"),
        (b64(_with_declared_size(_png_bytes(Image.new("L", (28, 28))), 60000, 60000)).decode(), DecodeError, "bomb"),
        (b64(_png_bytes(Image.new("I;16", (28, 28)))).decode(), InputError, "mode"),
        ("A" * (4 * LIMIT), InputError, "limit"),
        (12, InputError, "base64 string"),
    ],
)
def test_bad_pngs(payload: Any, error: type[Exception], needle: str) -> None:
    with pytest.raises(error) as info:
        decode(images_png=[payload])
    assert isinstance(info.value, error) and needle in str(info.value)
    assert getattr(info.value, "field", None) == "images_png[0]"
    assert getattr(info.value, "status", None) == (400 if error is DecodeError else 422)


def _valid_batches() -> list[list[object]]:
    rng = np.random.default_rng(0)
    ints = rng.integers(0, 256, 784).tolist()
    floats = (rng.random(784) * 255).tolist()
    nested = [ints[r * 28 : (r + 1) * 28] for r in range(28)]
    return [[ints], [nested], [floats], [ints, nested, floats], [[0] * 784, [255.0] * 784], [[-0.0] * 784]]


PREDICT, MC = frozenset({"images"}), frozenset({"images", "n_samples", "seed"})


def _json(doc: object) -> bytes:
    return json.dumps(doc).encode()  # Python's json: NaN and Infinity come out as (invalid) bare words


@pytest.mark.parametrize("batch", _valid_batches(), ids=["ints", "nested", "floats", "mixed", "ends", "negzero"])
def test_json_decoder_returns_exactly_what_decode_batch_returns(batch: list[object]) -> None:
    for body in (_json({"images": batch}), orjson.dumps({"images": batch})):  # with and without spaces
        decoded = decode_json_request(body, PREDICT, max_batch=8)
        assert decoded is not None
        fast, fields = decoded
        reference = decode_batch(batch, None, 8, 1024)
        assert fast.dtype == np.float32 and reference.dtype == torch.float32
        assert np.array_equal(fast, reference.numpy()) and fields == {}


def _invalid_batches() -> dict[str, object]:
    ok = [1] * 784
    return {
        "empty": [],
        "too many": [ok] * 9,
        "not a list": {"a": 1},
        "image not a list": [7],
        "783 values": [[1] * 783],
        "785 values": [[1] * 785],
        "27 rows": [[[1] * 28] * 27],
        "short row": [[[1] * 28] * 27 + [[1] * 27]],
        "list among pixels": [[[1]] + [1] * 783],
        "lists that flatten to 784 values": [[[], [1, 1]] + [1] * 782],
        "flat 28 values": [[1] * 28],
        "256": [[256] + [1] * 783],
        "-1": [[-1] + [1] * 783],
        "255.5": [[255.5] + [1] * 783],
        "nan": [[float("nan")] + [1] * 783],
        "inf": [[float("inf")] + [1] * 783],
        "2**64": [[2**64] + [1] * 783],
        "-(2**70)": [[-(2**70)] + [1] * 783],
        "bool": [[True] + [1] * 783],
        "null": [[None] + [1] * 783],
        "string": [["1"] + [1] * 783],
    }


@pytest.mark.parametrize("name", list(_invalid_batches()))
def test_json_decoder_declines_what_decode_batch_refuses(name: str) -> None:
    batch = _invalid_batches()[name]
    assert decode_json_request(_json({"images": batch}), PREDICT, max_batch=8) is None
    with pytest.raises(InputError):
        decode_batch(batch, None, 8, 1024)  # type: ignore[arg-type]


def test_json_decoder_reads_integer_fields_and_declines_everything_else() -> None:
    image = [3] * 784
    decoded = decode_json_request(_json({"images": [image], "n_samples": 7, "seed": 2**63 - 1}), MC, 8)
    assert decoded is not None and decoded[1] == {"n_samples": 7, "seed": 2**63 - 1}
    body = _json({"images": [image]})
    for bad, fields in (
        (body[:-1], MC),  # truncated
        (body + b" x", MC),  # trailing garbage
        (b"[" + body + b"]", MC),  # not an object
        (b'{"images": [[1]], "images": ' + body[11:], MC),  # a key twice: json.loads keeps the last one
        (_json({"images": [image], "n_samples": 7}), PREDICT),  # not a field of /predict
        (_json({"images": [image], "n_samples": 7.0}), MC),
        (_json({"images": [image], "n_samples": True}), MC),
        (_json({"images": [image], "seed": None}), MC),
        (_json({"images": [image], "seed": "3"}), MC),
        (_json({"images": [image], "seed": 2**64}), MC),
        (_json({"images": [image], "extra": 1}), MC),
        (_json({"n_samples": 3}), MC),
        (_json({"images": "AAAA"}), MC),
        (b"", MC),
        (b"\xff\xfe", MC),
    ):
        assert decode_json_request(bad, fields, 8) is None, bad[:80]


def test_the_reused_parser_decodes_every_body_whatever_came_before() -> None:
    """Each thread reuses one simdjson parser; no document of an earlier call (decoded, rejected or invalid)
    may stop the next call from parsing, and concurrent threads must not share a parser."""
    rng = np.random.default_rng(1)
    images = [rng.integers(0, 256, 784).tolist() for _ in range(8)]
    bodies = [_json({"images": [image]}) for image in images]
    junk = [b"{", _json({"images": [[1] * 783]}), _json({"images": [[300] * 784]}), b'{"images": "x"}']

    def decode_all(offset: int) -> list[np.ndarray]:
        out = []
        for i in range(200):
            assert decode_json_request(junk[(i + offset) % len(junk)], PREDICT, 8) is None
            decoded = decode_json_request(bodies[(i + offset) % len(bodies)], PREDICT, 8)
            assert decoded is not None
            out.append(decoded[0])
        return out

    for i, x in enumerate(decode_all(0)):
        assert np.array_equal(x.reshape(784), np.asarray(images[i % len(images)], dtype=np.float32))
    with ThreadPoolExecutor(4) as pool:
        for offset, result in enumerate(pool.map(decode_all, range(4))):
            for i, x in enumerate(result):
                assert np.array_equal(x.reshape(784), np.asarray(images[(i + offset) % 8], dtype=np.float32))


def test_a_document_still_referenced_elsewhere_does_not_stop_the_decoder() -> None:
    """pysimdjson refuses to reuse a parser while a proxy of its last document lives; the decoder then takes a
    new parser rather than sending every later request of that thread to the slow route."""
    from service import decode

    body = _json({"images": [[7] * 784]})
    assert decode_json_request(body, PREDICT, 8) is not None  # this thread now has a parser
    held = decode._parsers.parser.parse(b'{"a": [1, 2]}')["a"]  # a live proxy into that parser's document
    decoded = decode_json_request(body, PREDICT, 8)
    assert decoded is not None and float(decoded[0].max()) == 7.0
    assert list(held) == [1, 2]  # the old document is untouched
    assert decode_json_request(body, PREDICT, 8) is not None
