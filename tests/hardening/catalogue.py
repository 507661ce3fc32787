"""The bad-input catalogue: every malformed request the issue lists, with the status and field it must get.

Each case is raw bytes plus a content type, so that the table can hold things no JSON
encoder would produce (NaN tokens, 10,000 levels of nesting, truncated PNGs).
"""

from __future__ import annotations

import base64
import io
import json
import struct
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

PREDICT = "/predict"
MC = "/predict/uncertainty"
JSON = "application/json"


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    status: int
    field: str | None  # the error's ``field``; the message must name it too
    path: str = PREDICT
    content_type: str = JSON

    def __str__(self) -> str:
        return self.name


def png(array: np.ndarray, mode: str = "L") -> bytes:
    buf = io.BytesIO()
    Image.fromarray(array).convert(mode).save(buf, format="PNG")
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def bomb_png(side: int = 100_000) -> bytes:
    """A tiny, valid PNG whose header declares ``side`` x ``side`` 8-bit gray pixels (10 GB if decoded).

    The IDAT holds a few rows of zeros compressed to a few hundred bytes; a decoder that
    trusted the header would try to allocate ``side**2`` bytes.
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", side, side, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * (side + 1) * 4, 9)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def _j(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def cases(image: np.ndarray, limits: dict[str, int]) -> list[Case]:
    """The catalogue for one real 28x28 uint8 ``image`` and the server's ``limits``."""
    flat: list[Any] = image.reshape(-1).tolist()
    nested: list[Any] = image.tolist()
    good_png = png(image)
    max_batch, max_samples, max_body = limits["max_batch"], limits["max_samples"], limits["max_body_bytes"]

    def with_pixel(value: Any, index: int = 100) -> list[Any]:
        out = list(flat)
        out[index] = value
        return out

    def raw_pixel(token: str) -> bytes:  # a JSON number token json.dumps would not write
        return ('{"images": [[' + ",".join(["0"] * 100 + [token] + ["0"] * 683) + "]]}").encode()

    def mc(**extra: Any) -> bytes:
        return _j({"images": [flat], **extra})

    big = np.ones((2, 2), np.uint8)
    wide = image.astype(np.uint16) * 257
    ragged = [list(row) for row in nested]
    ragged[5] = ragged[5][:27]
    depth = 10_000
    return [
        # the body itself
        Case("non-JSON body", b"this is not json", 400, "body"),
        Case("truncated JSON", b'{"images": [[0, 1, 2', 400, "body"),
        Case("wrong content type", _j({"images": [flat]}), 415, "body", content_type="text/plain"),
        Case("form content type", b"images=1", 415, "body", content_type="application/x-www-form-urlencoded"),
        Case("deeply nested JSON", b'{"images": ' + b"[" * depth + b"]" * depth + b"}", 400, "body"),
        Case("JSON array instead of object", _j([flat]), 422, "body"),
        Case("JSON null body", b"null", 422, "body"),
        Case("empty body", b"", 422, "body"),
        Case("invalid UTF-8 body", b'\xff\xfe{"images": []}', 400, "body"),
        Case("duplicate key, second null", b'{"images": [[0]], "images": null}', 422, "images"),
        Case("missing field", _j({}), 422, "images"),
        Case("missing field (uncertainty)", _j({"n_samples": 5}), 422, "images", path=MC),
        Case("both input forms", _j({"images": [flat], "images_png": [b64(good_png)]}), 422, "images"),
        Case("extra unknown field", _j({"images": [flat], "colour": "red"}), 422, "colour"),
        Case("extra field on predict (n_samples)", _j({"images": [flat], "n_samples": 5}), 422, "n_samples"),
        Case("images not a list", _j({"images": "abc"}), 422, "images"),
        # batch size
        Case("empty batch", _j({"images": []}), 422, "images"),
        Case("empty PNG batch", _j({"images_png": []}), 422, "images_png"),
        Case("batch over MAX_BATCH", _j({"images": [flat] * (max_batch + 1)}), 422, "images"),
        Case("PNG batch over MAX_BATCH", _j({"images_png": [b64(good_png)] * (max_batch + 1)}), 422, "images_png"),
        # shapes
        Case("27x28 image", _j({"images": [nested[:27]]}), 422, "images[0]"),
        Case("28x27 image", _j({"images": [[row[:27] for row in nested]]}), 422, "images[0][0]"),
        Case("785 values", _j({"images": [[*flat, 0]]}), 422, "images[0]"),
        Case("783 values", _j({"images": [flat[:-1]]}), 422, "images[0]"),
        Case("ragged rows", _j({"images": [ragged]}), 422, "images[0][5]"),
        Case("scalar image", _j({"images": [7]}), 422, "images[0]"),
        Case("second image bad", _j({"images": [flat, flat[:10]]}), 422, "images[1]"),
        # pixel values
        Case("string pixel", _j({"images": [with_pixel("12")]}), 422, "images[0]"),
        Case("boolean pixel", _j({"images": [with_pixel(True)]}), 422, "images[0]"),
        Case("null pixel", _j({"images": [with_pixel(None)]}), 422, "images[0]"),
        Case("object pixel", _j({"images": [with_pixel({"v": 1})]}), 422, "images[0]"),
        Case("NaN token", raw_pixel("NaN"), 422, "images[0]"),
        Case("Infinity token", raw_pixel("Infinity"), 422, "images[0]"),
        Case("-Infinity token", raw_pixel("-Infinity"), 422, "images[0]"),
        Case("huge number token", raw_pixel("1e400"), 422, "images[0]"),
        Case("NaN string", _j({"images": [with_pixel("NaN")]}), 422, "images[0]"),
        Case("Infinity string", _j({"images": [with_pixel("Infinity")]}), 422, "images[0]"),
        Case("-Infinity string", _j({"images": [with_pixel("-Infinity")]}), 422, "images[0]"),
        Case("pixel below 0", _j({"images": [with_pixel(-0.5)]}), 422, "images[0]"),
        Case("pixel above 255", _j({"images": [with_pixel(255.5)]}), 422, "images[0]"),
        Case("huge integer pixel", _j({"images": [with_pixel(10**30)]}), 422, "images[0]"),
        # n_samples and seed
        Case("n_samples 0", mc(n_samples=0), 422, "n_samples", path=MC),
        Case("n_samples negative", mc(n_samples=-3), 422, "n_samples", path=MC),
        Case("n_samples above max", mc(n_samples=max_samples + 1), 422, "n_samples", path=MC),
        Case("n_samples float", mc(n_samples=2.5), 422, "n_samples", path=MC),
        Case("n_samples integral float", mc(n_samples=2.0), 422, "n_samples", path=MC),
        Case("n_samples string", mc(n_samples="10"), 422, "n_samples", path=MC),
        Case("n_samples boolean", mc(n_samples=True), 422, "n_samples", path=MC),
        Case("n_samples huge", mc(n_samples=10**30), 422, "n_samples", path=MC),
        Case("seed negative", mc(seed=-1), 422, "seed", path=MC),
        Case("seed beyond 64 bits", mc(seed=2**64), 422, "seed", path=MC),
        Case("seed 2**63", mc(seed=2**63), 422, "seed", path=MC),
        Case("seed string", mc(seed="42"), 422, "seed", path=MC),
        Case("seed float", mc(seed=1.5), 422, "seed", path=MC),
        # body size
        Case("body over MAX_BODY_BYTES", b'{"images": [[' + b"0," * (max_body // 2) + b"0]]}", 413, "body"),
        # PNG inputs
        Case("PNG not a string", _j({"images_png": [123]}), 422, "images_png[0]"),
        Case("invalid base64", _j({"images_png": ["not base64 !!"]}), 400, "images_png[0]"),
        Case("base64 without padding", _j({"images_png": [b64(good_png).rstrip("=") + "A"]}), 400, "images_png[0]"),
        Case("base64 of non-PNG bytes", _j({"images_png": [b64(b"GIF89a" + bytes(64))]}), 400, "images_png[0]"),
        Case("base64 of JPEG", _j({"images_png": [b64(_jpeg(image))]}), 400, "images_png[0]"),
        Case("truncated PNG", _j({"images_png": [b64(good_png[: len(good_png) // 2])]}), 400, "images_png[0]"),
        Case("PNG header only", _j({"images_png": [b64(good_png[:33])]}), 400, "images_png[0]"),
        Case("PNG 27x28", _j({"images_png": [b64(png(image[:27]))]}), 422, "images_png[0]"),
        Case("PNG 56x56", _j({"images_png": [b64(png(np.kron(image, big)))]}), 422, "images_png[0]"),
        Case("PNG 16-bit gray", _j({"images_png": [b64(png(wide, "I;16"))]}), 422, "images_png[0]"),
        Case("PNG over MAX_PNG_BYTES", _j({"images_png": [b64(_noisy_png())]}), 422, "images_png[0]"),
        Case("decompression bomb PNG", _j({"images_png": [b64(bomb_png())]}), 400, "images_png[0]"),
        Case("PNG bomb, small side", _j({"images_png": [b64(bomb_png(3000))]}), 422, "images_png[0]"),
    ]


def _jpeg(image: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(image).save(buf, format="JPEG")
    return buf.getvalue()


def _noisy_png() -> bytes:
    """A 28x28 RGBA PNG of random noise with a large text chunk: valid, but bigger than the 4 KiB test limit."""
    rng = np.random.default_rng(0)
    from PIL import PngImagePlugin

    info = PngImagePlugin.PngInfo()
    info.add_text("padding", "x" * 8000)
    buf = io.BytesIO()
    Image.fromarray(rng.integers(0, 256, (28, 28, 4), dtype=np.uint8), "RGBA").save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()
