"""Decode the v2 ``images`` input into pixels and read the request parameters, naming what is wrong.

Every problem is a :class:`V2Error` (HTTP 400 / gRPC INVALID_ARGUMENT) whose message names the input,
parameter or field, and nothing is allocated from a declared shape before the shape is checked.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from itertools import chain
from typing import Any

import numpy as np

from mcnet import IMAGE_SIDE, PIXEL_MAX

from ..errors import ServiceError
from .models import IMAGE_DATATYPES, PIXELS
from .types import DTYPES, KNOWN_DATATYPES, InputTensor

_PIXEL_SHAPES = "[-1, 784] or [-1, 28, 28]"
_NUMBER_TYPES = frozenset({int, float})  # exact types: bool (a subclass of int) is not in it


class V2Error(ServiceError):
    """A v2 request that cannot be served: 400 unless said otherwise; ``field`` names the culprit."""

    def __init__(self, field: str, message: str, status: int = 400) -> None:
        code = {400: "invalid_argument", 404: "not_found", 413: "payload_too_large"}.get(status, "error")
        super().__init__(status, code, f"{field}: {message}", field)


def check_shape(tensor: InputTensor, max_batch: int) -> int:
    """The batch size of a valid ``images`` shape: ``[B, 784]`` or ``[B, 28, 28]`` with 1 <= B <= max_batch."""
    field = f"input '{tensor.name}'"
    shape = tensor.shape
    if not isinstance(shape, list) or not all(type(d) is int for d in shape):
        raise V2Error(field, f"shape must be a list of integers, got {shape!r}")
    if any(d < 0 for d in shape):
        raise V2Error(field, f"shape {shape} has a negative dimension; -1 is only for metadata")
    if shape[1:] not in ([PIXELS], [IMAGE_SIDE, IMAGE_SIDE]):
        raise V2Error(field, f"shape {shape} is not {_PIXEL_SHAPES}")
    batch = shape[0]
    if not 1 <= batch <= max_batch:
        raise V2Error(field, f"batch size {batch} is out of range; send 1 to {max_batch} images (MCSERVE_MAX_BATCH)")
    return batch


def images(tensor: InputTensor, max_batch: int) -> np.ndarray:
    """The ``(B, 28, 28)`` float32 pixels of the ``images`` input, on the 0-255 scale."""
    field = f"input '{tensor.name}'"
    datatype = tensor.datatype
    if datatype not in KNOWN_DATATYPES:
        raise V2Error(field, f"unknown datatype {datatype!r}")
    if datatype not in IMAGE_DATATYPES:
        raise V2Error(field, f"datatype {datatype} is not supported; send {' or '.join(IMAGE_DATATYPES)}")
    batch = check_shape(tensor, max_batch)
    count = batch * PIXELS
    dtype = DTYPES[datatype]
    data = tensor.data
    if data is None:
        raise V2Error(field, "has no data (no 'data', no binary_data_size and no raw contents)")
    if isinstance(data, bytes | bytearray | memoryview):
        expected = count * dtype.itemsize
        if len(data) != expected:
            raise V2Error(
                field, f"has {len(data)} bytes of data; shape {tensor.shape} of {datatype} needs {expected} bytes"
            )
        values = np.frombuffer(data, dtype=dtype)
    elif isinstance(data, np.ndarray):  # gRPC typed contents, in their wire type (uint_contents: uint32)
        values = data.reshape(-1)
        if datatype == "UINT8" and values.size and values.max() > 255:
            raise V2Error(field, "UINT8 contents must hold integers from 0 to 255")
    else:
        values = _from_json(data, datatype, field)
    if values.size != count:
        raise V2Error(field, f"has {values.size} values; shape {tensor.shape} needs {count}")
    pixels = values.astype(np.float32).reshape(batch, IMAGE_SIDE, IMAGE_SIDE)
    if datatype == "FP32":
        _check_range(values, field)
    return pixels


def _from_json(data: Any, datatype: str, field: str) -> np.ndarray:
    """JSON tensor data (flat or nested row-major lists of numbers) as a flat array."""
    if not isinstance(data, list):
        raise V2Error(field, f"'data' must be a list of numbers, got {type(data).__name__}")
    try:
        values = np.asarray(data)
    except ValueError as exc:  # ragged nesting
        raise V2Error(field, f"'data' is not a regular array ({exc})") from None
    if values.size and (values.dtype.kind not in "iuf" or not _NUMBER_TYPES.issuperset(map(type, _leaves(data)))):
        raise V2Error(field, "'data' must hold numbers only (no strings, booleans or nulls)")
    if datatype == "UINT8":
        if values.size and (values.dtype.kind == "f" or values.min() < 0 or values.max() > 255):
            raise V2Error(field, "UINT8 'data' must hold integers from 0 to 255")
        return values.reshape(-1).astype(np.uint8)
    return values.reshape(-1).astype(np.float64)


def _leaves(data: list[Any]) -> Iterable[Any]:
    """The values of regular nested lists, flattened (numpy reads a boolean among numbers as 0 or 1: look at them)."""
    leaves: Iterable[Any] = data
    while data and isinstance(data[0], list):
        data = data[0]
        leaves = chain.from_iterable(leaves)
    return leaves


def _check_range(values: np.ndarray, field: str) -> None:
    """FP32 pixels must be finite and within [0, 255], the dataset's scale."""
    if values.size == 0:
        return
    low, high = values.min(), values.max()
    if low >= 0.0 and high <= PIXEL_MAX:  # NaN fails both comparisons
        return
    bad = np.flatnonzero(~((values >= 0.0) & (values <= PIXEL_MAX)))
    i = int(bad[0])
    value = float(values[i])
    what = "not finite" if not math.isfinite(value) else "out of range"
    image, pixel = divmod(i, PIXELS)
    raise V2Error(
        field, f"value {value!r} of image {image}, pixel {pixel} is {what}; pixels are on the 0-{int(PIXEL_MAX)} scale"
    )


def int_parameter(parameters: dict[str, Any], name: str, default: int | None, low: int, high: int) -> int | None:
    """Request parameter ``name`` as an int within [low, high] (``default`` when absent)."""
    if name not in parameters:
        return default
    value = parameters[name]
    if type(value) is not int:
        raise V2Error(f"parameter '{name}'", f"must be an integer, got {type(value).__name__} {value!r}")
    if not low <= value <= high:
        raise V2Error(f"parameter '{name}'", f"{value} is out of range; it must be between {low} and {high}")
    return value


def float_parameter(parameters: dict[str, Any], name: str) -> float | None:
    """Request parameter ``name`` as a number (a float, or an integer read as one), None when absent; the range is
    checked by the caller (``service.sets.set_problem``)."""
    if name not in parameters:
        return None
    value = parameters[name]
    if type(value) not in (int, float):
        raise V2Error(f"parameter '{name}'", f"must be a number, got {type(value).__name__} {value!r}")
    return float(value)
