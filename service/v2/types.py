"""The Open Inference Protocol's request and response, independent of HTTP, JSON or protobuf.

The adapters (``service.v2.rest``, ``service.v2.grpc_server``) parse their wire format into an
:class:`InferRequest` and write an :class:`InferResponse` back; ``service.v2.dataplane`` does
everything between. Tensor data stays as it arrived (raw bytes, a JSON list or a typed array)
until the data plane decodes it, so each check lives in one place.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

# The protocol's datatypes and their numpy dtypes (little-endian, as the binary extension and raw contents are).
DTYPES: dict[str, np.dtype[Any]] = {
    "BOOL": np.dtype(np.bool_),
    "UINT8": np.dtype("<u1"),
    "UINT16": np.dtype("<u2"),
    "UINT32": np.dtype("<u4"),
    "UINT64": np.dtype("<u8"),
    "INT8": np.dtype("<i1"),
    "INT16": np.dtype("<i2"),
    "INT32": np.dtype("<i4"),
    "INT64": np.dtype("<i8"),
    "FP16": np.dtype("<f2"),
    "FP32": np.dtype("<f4"),
    "FP64": np.dtype("<f8"),
}
KNOWN_DATATYPES = frozenset([*DTYPES, "BYTES", "BF16"])


@dataclass
class InputTensor:
    """One request input. ``data`` is ``bytes`` (binary extension or gRPC raw contents), a JSON list (flat or
    nested), a numpy array (gRPC typed contents) or None (nothing sent)."""

    name: str
    datatype: str
    shape: list[int]
    data: bytes | list[Any] | np.ndarray | None


@dataclass
class RequestedOutput:
    name: str
    binary: bool | None = None  # HTTP only: the output's own ``binary_data`` parameter, if it has one


@dataclass
class InferRequest:
    model_name: str
    model_version: str | None
    inputs: list[InputTensor]
    outputs: list[RequestedOutput] | None = None  # None: every output of the model
    parameters: dict[str, Any] = field(default_factory=dict)
    id: str | None = None


@dataclass
class OutputTensor:
    name: str
    datatype: str
    array: np.ndarray  # C-contiguous, the datatype's dtype, full shape (batch first)

    @property
    def shape(self) -> list[int]:
        return list(self.array.shape)


@dataclass
class InferResponse:
    model_name: str
    model_version: str
    outputs: list[OutputTensor]
    parameters: dict[str, Any] = field(default_factory=dict)
    id: str | None = None
