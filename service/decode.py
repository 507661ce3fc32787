"""Turn request payloads into a float32 pixel tensor ``(B, 28, 28)`` on the dataset's 0-255 scale.

Two input forms, exactly one per request:

* ``images``: each image is a 28x28 nested list or a flat list of 784 numbers,
  every value finite and within [0, 255] (JSON numbers only: no strings, no booleans);
* ``images_png``: each item is a base64 PNG (standard alphabet, padding required).

PNG policy: the file must be a PNG of at most ``max_png_bytes``; its header must
declare exactly 28x28 pixels, checked *before* any pixel data is decompressed (no
decompression bomb can allocate more); images are **not resized**. Modes 1, L,
LA, P, PA, RGB and RGBA are converted to 8-bit grayscale with Pillow's
``convert("L")`` (ITU-R 601-2 luma; alpha is dropped, not composited); 16-bit and
other modes are rejected. Pixel values are used as-is: Fashion-MNIST is a light
garment on a black background, so do not invert.
"""

from __future__ import annotations

import base64
import binascii
import io
import math
import threading
import warnings
from collections.abc import Sequence

import numpy as np
import simdjson
import torch
from PIL import Image, UnidentifiedImageError

from mcnet import IMAGE_SIDE, PIXEL_MAX

from . import mcjson
from .errors import DecodeError, InputError

PIXELS = IMAGE_SIDE * IMAGE_SIDE
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_MODES = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA"})
_NUMBER = (int, float)
_NUMBER_TYPES = frozenset({int, float})  # exact types: bool (a subclass of int) is not in it
# IEEE 754 doubles >= +0.0 order as their bit patterns do, and every negative one (-0.0 too) has the sign bit
# set: ``values.view(uint64).max() <= bits(255.0)`` is the range check 0 <= v <= 255 in one reduction
# (false only for -0.0, which a second, exact check then accepts).
_PIXEL_MAX_BITS = int(np.array(float(PIXEL_MAX)).view(np.uint64))
_MAX = np.maximum.reduce  # ndarray.max without its Python wrapper (a fifth of this check)
_parsers = threading.local()  # one simdjson parser per thread, reused: it keeps its buffers between documents


def _flat_values(image: object, field: str) -> list[object]:
    """The 784 values of one image in row-major order, or a 422 naming the shape problem."""
    if not isinstance(image, list):
        raise InputError(field, f"must be a list (28x28 nested or 784 flat), got {type(image).__name__}")
    if len(image) == PIXELS and not any(issubclass(t, list) for t in set(map(type, image))):
        return image
    if len(image) == IMAGE_SIDE and all(isinstance(row, list) for row in image):
        for r, row in enumerate(image):
            if len(row) != IMAGE_SIDE:
                raise InputError(f"{field}[{r}]", f"row has {len(row)} values, expected {IMAGE_SIDE}")
        return [v for row in image for v in row]
    if image and isinstance(image[0], list):
        raise InputError(field, f"wrong shape: {len(image)} rows, expected {IMAGE_SIDE} rows of {IMAGE_SIDE} values")
    raise InputError(field, f"wrong shape: {len(image)} values, expected {PIXELS} (flat) or {IMAGE_SIDE}x{IMAGE_SIDE}")


def _position(index: int) -> str:
    return f"pixel {index} (row {index // IMAGE_SIDE}, column {index % IMAGE_SIDE})"


def image_from_list(image: object, field: str) -> np.ndarray:
    """Validate one list image and return it as a ``(28, 28)`` float32 array."""
    values = _flat_values(image, field)
    if not set(map(type, values)) <= _NUMBER_TYPES:  # C-speed check; only a bad image walks its values
        for i, v in enumerate(values):
            if not isinstance(v, _NUMBER) or isinstance(v, bool):
                raise InputError(field, f"{_position(i)} is {type(v).__name__}, expected a number")
    try:
        arr = np.asarray(values, dtype=np.float64)
    except OverflowError:
        raise InputError(field, f"a value is outside the pixel range 0-{PIXEL_MAX:g}") from None
    bad = ~np.isfinite(arr)
    if bad.any():
        i = int(np.argmax(bad))
        raise InputError(field, f"{_position(i)} is non-finite ({values[i]!r})")
    out = (arr < 0.0) | (arr > PIXEL_MAX)
    if out.any():
        i = int(np.argmax(out))
        raise InputError(field, f"{_position(i)} = {values[i]!r} is outside the pixel range 0-{PIXEL_MAX:g}")
    return arr.astype(np.float32).reshape(IMAGE_SIDE, IMAGE_SIDE)


def image_from_png(encoded: object, field: str, max_png_bytes: int) -> np.ndarray:
    """Decode one base64 PNG under the module's PNG policy into a ``(28, 28)`` float32 array."""
    if not isinstance(encoded, str):
        raise InputError(field, f"must be a base64 string, got {type(encoded).__name__}")
    if len(encoded) > 4 * math.ceil(max_png_bytes / 3) + 4:
        raise InputError(field, f"encoded PNG is longer than the {max_png_bytes}-byte PNG limit allows")
    try:
        data = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise DecodeError(field, f"not valid base64 ({exc})") from None
    if len(data) > max_png_bytes:
        raise InputError(field, f"PNG is {len(data)} bytes, limit is {max_png_bytes}")
    if not data.startswith(PNG_SIGNATURE):
        raise DecodeError(field, "not a PNG file (bad signature)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            with Image.open(io.BytesIO(data), formats=["PNG"]) as img:
                if img.size != (IMAGE_SIDE, IMAGE_SIDE):
                    w, h = img.size
                    need = f"{IMAGE_SIDE}x{IMAGE_SIDE}"
                    raise InputError(field, f"PNG is {w}x{h}; it must be exactly {need} (images are not resized)")
                if img.mode not in PNG_MODES:
                    raise InputError(field, f"PNG mode {img.mode!r} is not supported (8-bit gray/palette/RGB(A) only)")
                gray = img.convert("L")
                arr = np.asarray(gray, dtype=np.float32)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DecodeError(field, f"PNG rejected as a decompression bomb ({exc})") from None
    except UnidentifiedImageError:  # its message is the repr of our buffer: nothing for the client
        raise DecodeError(field, "PNG cannot be decoded (Pillow cannot identify the image data)") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise DecodeError(field, f"PNG cannot be decoded ({type(exc).__name__}: {exc})") from None
    return arr.copy()


def decode_batch(
    images: Sequence[object] | None,
    images_png: Sequence[object] | None,
    max_batch: int,
    max_png_bytes: int,
) -> torch.Tensor:
    """Validate a request's images and return a ``(B, 28, 28)`` float32 CPU tensor."""
    if (images is None) == (images_png is None):
        raise InputError("images", "give exactly one of 'images' (pixel lists) or 'images_png' (base64 PNGs)")
    name, items = ("images", images) if images is not None else ("images_png", images_png)
    assert items is not None
    if len(items) == 0:
        raise InputError(name, "batch is empty; send at least one image")
    if len(items) > max_batch:
        raise InputError(name, f"batch has {len(items)} images, the limit is {max_batch}")
    if name == "images":
        arrays = [image_from_list(item, f"images[{i}]") for i, item in enumerate(items)]
    else:
        arrays = [image_from_png(item, f"images_png[{i}]", max_png_bytes) for i, item in enumerate(items)]
    return torch.from_numpy(np.stack(arrays))


def decode_json_request(
    body: bytes, fields: frozenset[str], max_batch: int
) -> tuple[np.ndarray, dict[str, int]] | None:
    """The fast path's decoder: the raw body of a pixel-list request, straight to a pixel array.

    Accepts exactly a JSON object with ``images`` (pixel lists, as ``decode_batch`` accepts them) and
    optionally other keys from ``fields`` holding integers, and returns the ``(B, 28, 28)`` float32 array
    that ``decode_batch`` would return as a tensor, with those integers. simdjson parses the body and copies
    all pixel values into one buffer in C, so no Python object is made per pixel (about 20 against 50 us for
    one image with orjson and a list conversion). Anything else (duplicate or unknown keys, strings, booleans, nulls, a
    wrong shape, a value out of range, a float where an integer belongs, invalid JSON) returns None, and
    the FastAPI route then produces the one canonical answer or the error that names the field.

    The common form (integer pixels and fields, nothing else) is read in C first (``service.mcjson``, a fifth of
    the cost; the same answer); :func:`decode_json_general` (simdjson) reads whatever that declines.
    """
    common = mcjson.pixels(body, fields, max_batch)
    return common if common is not None else decode_json_general(body, fields, max_batch)


def decode_json_general(
    body: bytes, fields: frozenset[str], max_batch: int
) -> tuple[np.ndarray, dict[str, int]] | None:
    """:func:`decode_json_request` for any body, with simdjson (floats, any number syntax): its answer for what the
    C parser declines."""
    parser = getattr(_parsers, "parser", None)
    if parser is None:
        parser = _parsers.parser = simdjson.Parser()
    try:
        try:
            doc = parser.parse(body)  # valid until the parser's next parse: nothing here outlives this call
        except RuntimeError:  # something still holds a proxy of the parser's last document: use a new parser
            parser = _parsers.parser = simdjson.Parser()
            doc = parser.parse(body)
    except (ValueError, RuntimeError, TypeError):
        return None
    if type(doc) is not simdjson.Object:
        return None
    keys = list(doc.keys())
    # no strings but the keys themselves, no key twice (simdjson would serve the first, json.loads the last)
    if "images" not in keys or not fields.issuperset(keys) or len(set(keys)) != len(keys):
        return None
    if body.count(b'"') != 2 * len(keys):
        return None
    ints: dict[str, int] = {}
    for key in keys:
        if key != "images":
            value = doc[key]
            if type(value) is not int:  # bool, float, None: the route decides
                return None
            ints[key] = value
    images = doc["images"]
    if type(images) is not simdjson.Array or not 0 < len(images) <= max_batch:
        return None
    arrays = 1  # every "[" in the body must be one of the arrays checked here: as_buffer flattens any nesting
    for image in images:
        if type(image) is not simdjson.Array:
            return None
        if len(image) == IMAGE_SIDE:
            if not all(type(row) is simdjson.Array and len(row) == IMAGE_SIDE for row in image):
                return None
            arrays += 1 + IMAGE_SIDE
        elif len(image) == PIXELS:
            arrays += 1
        else:
            return None
    if body.count(b"[") != arrays:
        return None
    try:
        values = np.frombuffer(images.as_buffer(of_type="d"), dtype=np.float64)  # numbers only, or TypeError
    except (TypeError, ValueError, RuntimeError):
        return None
    if values.size != len(images) * PIXELS:
        return None
    if _MAX(values.view(np.uint64)) > _PIXEL_MAX_BITS and not (values.min() >= 0.0 and values.max() <= PIXEL_MAX):
        return None  # out of [0, 255]; the exact check runs only when the one-reduction check fails (-0.0 passes)
    return values.astype(np.float32).reshape(-1, IMAGE_SIDE, IMAGE_SIDE), ints
