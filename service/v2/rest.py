"""The Open Inference Protocol over HTTP (``/v2/...``), with Triton's binary tensor data extension.

A raw ASGI layer in front of the FastAPI application (``service.app``): every ``/v2`` request is
answered here, everything else passes through. It only translates: JSON (and binary tensor data) into
:mod:`service.v2.types`, one :class:`~service.v2.dataplane.DataPlane` call, and back. Errors have the
protocol's shape ``{"error": "<message>"}``.

Binary tensor data: a request whose ``Inference-Header-Content-Length`` header is N has a JSON header
of N bytes, then the inputs' bytes in input order, each input saying its size in
``parameters.binary_data_size``. An output is returned as binary when it asks for it
(``parameters.binary_data``) or, if it says nothing, when the request sets
``parameters.binary_data_output``; then the response is the JSON header, then the outputs' bytes, and
carries the same header. tritonclient sends binary by default and no Content-Type: that is accepted.
"""

from __future__ import annotations

import time
import zlib
from typing import Any

import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from ..errors import ServiceError
from ..limits import CLOSE, DRAIN_LIMIT_BYTES, discard_body, drain_request
from .dataplane import DataPlane
from .tensors import V2Error
from .types import InferRequest, InferResponse, InputTensor, RequestedOutput

HEADER_LENGTH = b"inference-header-content-length"
_JSON_HEADERS = [(b"content-type", b"application/json")]
_ACTIONS = frozenset({"ready", "config", "stats", "infer"})
_HTTP_KEYS = frozenset({"id", "inputs", "outputs", "parameters"})


class V2Http:
    """ASGI front: answers ``/v2`` and ``/v2/...``, hands every other request to ``app``."""

    def __init__(self, app: ASGIApp, plane: DataPlane) -> None:
        self.app = app
        self.plane = plane
        self.metrics = plane.core.metrics
        self.max_body = plane.core.settings.max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        path = scope.get("path", "")
        if scope["type"] != "http" or not (path == "/v2" or path.startswith("/v2/")):
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        metrics = self.metrics
        metrics.in_flight.inc()
        route, status = "unmatched", 500
        try:
            route, status, body, headers = await self._handle(scope, receive)
            headers.append((b"content-length", str(len(body)).encode()))
            await send({"type": "http.response.start", "status": status, "headers": headers})
            await send({"type": "http.response.body", "body": body})
        finally:
            metrics.in_flight.dec()
            metrics.record_http(route, scope["method"], str(status), time.perf_counter() - start, "v2_http")

    async def _handle(self, scope: Scope, receive: Receive) -> tuple[str, int, bytes, list[tuple[bytes, bytes]]]:
        route, method = "unmatched", ""
        try:
            route, method, call = _route(scope["path"])
            if scope["method"] != method:
                raise ServiceError(405, "method_not_allowed", f"{scope['path']} takes {method}, not {scope['method']}")
            if call is None:
                return route, *self._respond(self.plane.server_metadata())
            kind, model, version = call
            if kind == "live":
                return route, *self._respond({"live": True})
            if kind == "ready":
                ready = self.plane.ready if model is None else self.plane.model_ready(model, version)
                return route, *self._respond({"ready": ready}, 200 if ready else 503)
            if kind == "stats":
                return route, *self._respond({"model_stats": self.plane.model_statistics(model, version)})
            assert model is not None
            if kind == "metadata":
                return route, *self._respond(self.plane.model_metadata(model, version))
            if kind == "config":
                return route, *self._respond(self.plane.model_config(model, version))
            declared = _header(scope, b"content-length") or b""
            size = int(declared) if declared.isdigit() and int(declared) <= self.max_body else 0
            reservation = await self.plane.reserve(model, version, size, "v2_http")  # a big MC body: room first
            try:
                body = await self._read_body(scope, receive)
                request, binary_out = _parse_infer(body, _header(scope, HEADER_LENGTH), model, version)
                response = await self.plane.infer(request, "v2_http", reservation=reservation)
            finally:
                if reservation is not None:  # unused (a bad body, a refusal): the room goes to the next in line
                    self.plane.core.mc.release(reservation)
            return route, 200, *_encode(response, request, binary_out)
        except ServiceError as exc:
            headers = [*_JSON_HEADERS, *((k.lower().encode(), v.encode()) for k, v in exc.headers().items())]
            if exc.status == 405:
                headers.append((b"allow", method.encode()))
            if isinstance(exc, _TooLarge) and not exc.drained:
                headers.append(CLOSE)
            return route, exc.status, orjson.dumps({"error": exc.message}), headers

    def _respond(self, payload: dict[str, Any], status: int = 200) -> tuple[int, bytes, list[tuple[bytes, bytes]]]:
        return status, orjson.dumps(payload), [*_JSON_HEADERS]

    async def _read_body(self, scope: Scope, receive: Receive) -> bytes:
        """The body, at most ``max_body`` bytes; a longer one is 413 after the rest of it is dropped
        (``service.limits.drain_request``), so that a client writing its whole body first reads the answer."""
        limit = self.max_body
        declared = _header(scope, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > limit:
            too_large = f"{int(declared)} bytes is more than the limit of {limit} (MCSERVE_MAX_BODY_BYTES)"
            raise _TooLarge(too_large, await drain_request(scope, receive))
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                raise V2Error("body", "the client disconnected before the body was complete")
            chunk = message.get("body", b"")
            size += len(chunk)
            more = message.get("more_body", False)
            if size > limit:
                chunks.clear()
                drained = not more or await discard_body(receive, max(DRAIN_LIMIT_BYTES - size, 0))
                raise _TooLarge(f"more than the limit of {limit} bytes (MCSERVE_MAX_BODY_BYTES)", drained)
            chunks.append(chunk)
            if not more:
                break
        body = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        encoding = (_header(scope, b"content-encoding") or b"identity").decode("latin-1").strip().lower()
        if encoding in ("gzip", "deflate"):
            return _decompress(body, encoding, limit)
        if encoding not in ("", "identity"):
            raise V2Error("Content-Encoding", f"{encoding!r} is not supported; send gzip, deflate or identity")
        return body


class _TooLarge(V2Error):
    """413 for a body over the limit; ``drained``: the rest of it was read, so the connection can stay open."""

    def __init__(self, message: str, drained: bool) -> None:
        super().__init__("body", message, 413)
        self.drained = drained


def _decompress(body: bytes, encoding: str, limit: int) -> bytes:
    """gzip or deflate (zlib) bodies, as tritonclient sends them when asked to compress; bounded by ``limit``."""
    d = zlib.decompressobj(wbits=31 if encoding == "gzip" else 15)
    try:
        out = d.decompress(body, limit + 1)
    except zlib.error as exc:
        raise V2Error("body", f"is not valid {encoding} data ({exc})") from None
    if len(out) > limit or d.unconsumed_tail:
        raise V2Error("body", f"decompresses to more than the limit of {limit} bytes (MCSERVE_MAX_BODY_BYTES)", 413)
    return out


def _header(scope: Scope, name: bytes) -> bytes | None:
    for key, value in scope["headers"]:
        if key == name:
            return bytes(value)
    return None


Call = tuple[str, str | None, str | None] | None  # (kind, model, version); None for server metadata


def _route(path: str) -> tuple[str, str, Call]:
    """``(route template, method, call)`` of a ``/v2`` path, or a 404 naming it."""
    parts = path.rstrip("/").split("/")[2:]  # after "", "v2"
    if not parts:
        return "/v2", "GET", None
    if parts[0] == "health" and len(parts) == 2 and parts[1] in ("live", "ready"):
        return f"/v2/health/{parts[1]}", "GET", (parts[1], None, None)
    if parts == ["models", "stats"]:
        return "/v2/models/stats", "GET", ("stats", None, None)
    if parts[0] == "models" and len(parts) >= 2 and parts[1]:
        model, rest = parts[1], parts[2:]
        template = "/v2/models/{model_name}"
        version = None
        if len(rest) >= 2 and rest[0] == "versions" and rest[1]:
            version, rest = rest[1], rest[2:]
            template += "/versions/{model_version}"
        if not rest:
            return template, "GET", ("metadata", model, version)
        if len(rest) == 1 and rest[0] in _ACTIONS:
            action = rest[0]
            return f"{template}/{action}", "POST" if action == "infer" else "GET", (action, model, version)
    raise ServiceError(404, "not_found", f"{path} is not a v2 endpoint (see GET /v2 and the README)")


def _parse_infer(
    body: bytes, header_length: bytes | None, model: str, version: str | None
) -> tuple[InferRequest, bool]:
    """The request, and whether outputs default to binary (``binary_data_output``)."""
    binary = b""
    if header_length is not None:
        if not header_length.isdigit():
            raise V2Error("Inference-Header-Content-Length", f"{header_length!r} is not a byte count")
        n = int(header_length)
        if n > len(body):
            raise V2Error("Inference-Header-Content-Length", f"{n} is past the end of the {len(body)}-byte body")
        body, binary = body[:n], body[n:]
    try:
        doc = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise V2Error("body", f"is not valid JSON ({exc})") from None
    if not isinstance(doc, dict):
        raise V2Error("body", f"must be a JSON object, got {type(doc).__name__}")
    unknown = sorted(set(doc) - _HTTP_KEYS)
    if unknown:
        raise V2Error(f"'{unknown[0]}'", "is not a field of an inference request (id, inputs, outputs, parameters)")
    parameters = _object(doc.get("parameters", {}), "parameters")
    binary_out = parameters.pop("binary_data_output", False)
    if type(binary_out) is not bool:
        raise V2Error("parameter 'binary_data_output'", f"must be a boolean, got {binary_out!r}")
    request_id = doc.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise V2Error("id", f"must be a string, got {type(request_id).__name__}")
    raw_inputs = doc.get("inputs")
    if not isinstance(raw_inputs, list):
        raise V2Error("inputs", "must be a list of input tensors")
    inputs, offset = [], 0
    for i, item in enumerate(raw_inputs):
        tensor, size = _input(item, i)
        if size is not None:
            if offset + size > len(binary):
                raise V2Error(
                    f"input '{tensor.name}'",
                    f"binary_data_size {size} runs past the {len(binary)} bytes of binary data after the JSON header",
                )
            tensor.data = binary[offset : offset + size]
            offset += size
        inputs.append(tensor)
    if offset != len(binary):
        raise V2Error("body", f"{len(binary) - offset} bytes of binary data belong to no input (binary_data_size)")
    outputs = None
    if "outputs" in doc:
        if not isinstance(doc["outputs"], list):
            raise V2Error("outputs", "must be a list of requested outputs")
        outputs = [_output(item, i) for i, item in enumerate(doc["outputs"])]
    return InferRequest(model, version, inputs, outputs, parameters, request_id), binary_out


def _object(value: Any, field: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise V2Error(field, f"must be a JSON object, got {type(value).__name__}")
    return dict(value)


def _input(item: Any, i: int) -> tuple[InputTensor, int | None]:
    if not isinstance(item, dict):
        raise V2Error(f"inputs[{i}]", "must be an object with name, datatype, shape and data")
    name = item.get("name")
    if not isinstance(name, str):
        raise V2Error(f"inputs[{i}].name", "must be a string")
    datatype, shape = item.get("datatype"), item.get("shape")
    if not isinstance(datatype, str):
        raise V2Error(f"input '{name}'", 'datatype must be a string such as "FP32"')
    if not isinstance(shape, list):
        raise V2Error(f"input '{name}'", "shape must be a list of integers")
    params = _object(item.get("parameters", {}), f"input '{name}' parameters")
    size = params.pop("binary_data_size", None)
    if size is not None and (type(size) is not int or size < 0):
        raise V2Error(f"input '{name}'", f"binary_data_size must be a non-negative integer, got {size!r}")
    if params:
        raise V2Error(f"input '{name}'", f"unknown parameter '{sorted(params)[0]}' (only binary_data_size)")
    if size is not None and "data" in item:
        raise V2Error(f"input '{name}'", "has both 'data' and binary_data_size; send one")
    if datatype == "FP16" and "data" in item:
        raise V2Error(f"input '{name}'", "FP16 cannot be sent as JSON data; send FP32, or FP16 as binary data")
    return InputTensor(name, datatype, shape, item.get("data")), size


def _output(item: Any, i: int) -> RequestedOutput:
    if not isinstance(item, dict) or not isinstance(item.get("name"), str):
        raise V2Error(f"outputs[{i}]", "must be an object with a string name")
    params = _object(item.get("parameters", {}), f"output '{item['name']}' parameters")
    binary = params.pop("binary_data", None)
    if binary is not None and type(binary) is not bool:
        raise V2Error(f"output '{item['name']}'", f"binary_data must be a boolean, got {binary!r}")
    if params:
        key = sorted(params)[0]
        raise V2Error(f"output '{item['name']}'", f"parameter '{key}' is not supported (only binary_data)")
    return RequestedOutput(item["name"], binary)


def _encode(
    response: InferResponse, request: InferRequest, binary_out: bool
) -> tuple[bytes, list[tuple[bytes, bytes]]]:
    wants = {o.name: o.binary for o in request.outputs or ()}
    outputs, chunks = [], []
    for out in response.outputs:
        binary = wants.get(out.name)
        entry: dict[str, Any] = {"name": out.name, "datatype": out.datatype, "shape": out.shape}
        if binary_out if binary is None else binary:
            data = out.array.tobytes()
            entry["parameters"] = {"binary_data_size": len(data)}
            chunks.append(data)
        else:
            entry["data"] = out.array.reshape(-1).tolist()
        outputs.append(entry)
    doc: dict[str, Any] = {"model_name": response.model_name, "model_version": response.model_version}
    if response.id is not None:
        doc["id"] = response.id
    if response.parameters:
        doc["parameters"] = response.parameters
    doc["outputs"] = outputs
    header = orjson.dumps(doc)
    if not chunks:
        return header, [*_JSON_HEADERS]
    headers = [(b"content-type", b"application/octet-stream"), (HEADER_LENGTH, str(len(header)).encode())]
    return b"".join([header, *chunks]), headers
