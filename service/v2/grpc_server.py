"""The Open Inference Protocol over gRPC: ``inference.GRPCInferenceService`` and ``grpc.health.v1.Health``.

A ``grpc.aio`` server on ``MCSERVE_GRPC_PORT`` inside the HTTP server's process and event loop: it is
started and stopped by the application's lifespan (SIGTERM drains both), and its inferences share the
REST API's batches. The servicer only translates protobuf to :mod:`service.v2.types` and back; every
:class:`~service.errors.ServiceError` becomes the gRPC status of its HTTP status (:data:`GRPC_CODES`).
Outputs go back in ``raw_output_contents`` (tritonclient reads only those); inputs may come as
``raw_input_contents`` or typed ``contents``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import numpy as np
from google.protobuf import json_format
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from ..auth import AuthError, Key, current_key
from ..authhttp import log_denial
from ..errors import ServiceError
from .dataplane import DataPlane
from .stubs import METHODS, SERVICE_NAME, pb, pb_grpc
from .tensors import V2Error
from .types import InferRequest, InferResponse, InputTensor, RequestedOutput

log = logging.getLogger("service")
R = TypeVar("R")

# HTTP status of a ServiceError -> gRPC status code (and back, for the metrics' ``status`` label).
GRPC_CODES = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    403: grpc.StatusCode.PERMISSION_DENIED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    503: grpc.StatusCode.UNAVAILABLE,
}
_HTTP_OF = {
    grpc.StatusCode.OK: "200",
    grpc.StatusCode.INVALID_ARGUMENT: "400",
    grpc.StatusCode.NOT_FOUND: "404",
    grpc.StatusCode.UNAUTHENTICATED: "401",
    grpc.StatusCode.PERMISSION_DENIED: "403",
    grpc.StatusCode.UNIMPLEMENTED: "501",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "429",
    grpc.StatusCode.UNAVAILABLE: "503",
    grpc.StatusCode.CANCELLED: "499",
}
QUEUED_GAP_S = 150e-6  # a call this soon after the previous one ended was queued in grpc, not sent just now
IDLE_S = 400e-6  # a waiting pass runs once no call arrived for this long (grpc.aio accepts one per ~0.1 ms here)
MISSES = 3  # passes in a row without company before calls run at once again
_ROUTES = {m: f"/{SERVICE_NAME}/{m}" for m in METHODS}  # the metrics' route label: the method's path
# typed contents field per datatype (the protocol's InferTensorContents)
_CONTENTS = {
    "BOOL": "bool_contents",
    "UINT8": "uint_contents",
    "UINT16": "uint_contents",
    "UINT32": "uint_contents",
    "UINT64": "uint64_contents",
    "INT8": "int_contents",
    "INT16": "int_contents",
    "INT32": "int_contents",
    "INT64": "int64_contents",
    "FP32": "fp32_contents",
    "FP64": "fp64_contents",
    "BYTES": "bytes_contents",
}
_WIRE = {  # the numpy dtype of each numeric contents field's wire values (uint_contents carries UINT8 as uint32)
    "bool_contents": np.bool_,
    "int_contents": np.int32,
    "int64_contents": np.int64,
    "uint_contents": np.uint32,
    "uint64_contents": np.uint64,
    "fp32_contents": np.float32,
    "fp64_contents": np.float64,
}


def _parameters(params: Any, field: str) -> dict[str, Any]:
    """A protobuf ``map<string, InferParameter>`` as plain Python values."""
    out: dict[str, Any] = {}
    for key, p in params.items():
        kind = p.WhichOneof("parameter_choice")
        if kind is None:
            raise V2Error(f"{field} '{key}'", "has no value")
        out[key] = getattr(p, kind)
    return out


def _parameter(value: Any) -> Any:
    if isinstance(value, bool):
        return pb.InferParameter(bool_param=value)
    if isinstance(value, int):
        return pb.InferParameter(int64_param=value) if value < 2**63 else pb.InferParameter(uint64_param=value)
    if isinstance(value, float):
        return pb.InferParameter(double_param=value)
    return pb.InferParameter(string_param=str(value))


def parse_infer(request: Any) -> InferRequest:
    raw = list(request.raw_input_contents)
    if raw and len(raw) != len(request.inputs):
        raise V2Error("raw_input_contents", f"has {len(raw)} entries for {len(request.inputs)} inputs; send one each")
    inputs = []
    for i, t in enumerate(request.inputs):
        data: bytes | np.ndarray | None
        if raw:
            if t.HasField("contents"):
                raise V2Error(f"input '{t.name}'", "has both contents and raw_input_contents; send one")
            data = raw[i]
        elif t.HasField("contents"):
            data = _typed(t)
        else:
            data = None
        if t.parameters:
            _parameters(t.parameters, f"input '{t.name}' parameter")  # a value-less one is named as such first
            raise V2Error(f"input '{t.name}'", f"unknown parameter '{sorted(t.parameters)[0]}'")
        inputs.append(InputTensor(t.name, t.datatype, list(t.shape), data))
    outputs = None
    if request.outputs:
        outputs = [RequestedOutput(o.name) for o in request.outputs]
        for o in request.outputs:
            if o.parameters:
                raise V2Error(f"output '{o.name}'", f"parameter '{sorted(o.parameters)[0]}' is not supported")
    parameters = _parameters(request.parameters, "parameter") if request.parameters else {}
    return InferRequest(
        request.model_name, request.model_version or None, inputs, outputs, parameters, request.id or None
    )


def _typed(t: Any) -> np.ndarray | None:
    """An input's typed ``contents`` as an array of their wire type (range checks are the data plane's), or None when
    they hold nothing or the datatype has no typed field (the data plane names the datatype then)."""
    expected = _CONTENTS.get(t.datatype)
    if expected is None:
        return None
    present = [field.name for field, _ in t.contents.ListFields()]
    wrong = [name for name in present if name != expected]
    if wrong:
        raise V2Error(f"input '{t.name}'", f"datatype {t.datatype} takes contents.{expected}, not contents.{wrong[0]}")
    if not present:
        return None
    return np.asarray(getattr(t.contents, expected), dtype=_WIRE.get(expected))


def encode_infer(response: InferResponse) -> Any:
    out = pb.ModelInferResponse(model_name=response.model_name, model_version=response.model_version)
    if response.id is not None:
        out.id = response.id
    for key, value in response.parameters.items():
        out.parameters[key].CopyFrom(_parameter(value))
    for tensor in response.outputs:
        out.outputs.add(name=tensor.name, datatype=tensor.datatype, shape=tensor.shape)
        out.raw_output_contents.append(tensor.array.tobytes())
    return out


class InferenceServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    """Each RPC: one :class:`DataPlane` call, its errors as gRPC statuses, its count in the metrics."""

    def __init__(self, plane: DataPlane) -> None:
        self.plane = plane
        self.metrics = plane.core.metrics
        self.auth = plane.core.auth
        # grpc.aio hands the loop one call at a time, so eval calls find company only by waiting for it (measured at
        # c = 64: 1.04 calls per pass without a wait, 15 with 2 ms), and a lone call would pay its whole wait. So
        # calls run their pass at once until one arrives within QUEUED_GAP_S of the previous call's end (it was
        # queued in grpc: calls are backing up); from then on each waits for company, at most wait_s and only while
        # calls keep arriving (IDLE_S), until MISSES passes in a row found none.
        self.wait_s = plane.core.settings.grpc_batch_wait_ms / 1000.0
        self.batching = False
        self.misses = 0
        self.last_done = -1.0  # time.perf_counter() when the last ModelInfer call finished
        self.batcher = plane.core.batcher

    async def _call(self, method: str, context: Any, work: Callable[[], Awaitable[R]]) -> R:
        start = time.perf_counter()
        status = grpc.StatusCode.OK
        self.metrics.in_flight.inc()
        token = None
        try:
            if self.auth.enabled:  # gRPC health is its own servicer, open; every call here needs an infer key
                token = current_key.set(self._key(method, context))
            return await work()
        except ServiceError as exc:
            status = GRPC_CODES.get(exc.status, grpc.StatusCode.INTERNAL)
            if isinstance(exc, AuthError) and exc.status == 429:
                context.set_trailing_metadata((("retry-after", exc.retry_after),))
            await context.abort(status, exc.message)
            raise  # abort raises; never reached
        except Exception as exc:
            if isinstance(exc, grpc.aio.AbortError):
                raise
            status = grpc.StatusCode.INTERNAL
            log.exception("unhandled error in gRPC %s", method)
            await context.abort(status, "internal server error; the request was not processed")
            raise
        finally:
            if token is not None:
                current_key.reset(token)
            self.metrics.in_flight.dec()
            code = _HTTP_OF.get(status, "500")
            self.metrics.record_http(_ROUTES[method], "POST", code, time.perf_counter() - start, "v2_grpc")

    def _key(self, method: str, context: Any) -> Key:
        header = None
        for name, value in context.invocation_metadata() or ():
            if name == "authorization":
                header = value if isinstance(value, str) else value.decode("latin-1")
        try:
            return self.auth.authorize(header, "infer")
        except AuthError as exc:
            self.metrics.record_denied(exc.reason, "v2_grpc")
            presented = None if exc.reason in ("missing", "invalid") else self.auth.identify(header).id
            log_denial(exc, presented, method, "v2_grpc")
            raise

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return await self._call("ServerLive", context, _const(pb.ServerLiveResponse(live=True)))

    async def ServerReady(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            return pb.ServerReadyResponse(ready=self.plane.ready)

        return await self._call("ServerReady", context, work)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            return pb.ModelReadyResponse(ready=self.plane.model_ready(request.name, request.version or None))

        return await self._call("ModelReady", context, work)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            return pb.ServerMetadataResponse(**self.plane.server_metadata())

        return await self._call("ServerMetadata", context, work)

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            meta = self.plane.model_metadata(request.name, request.version or None)
            return json_format.ParseDict(meta, pb.ModelMetadataResponse())

        return await self._call("ModelMetadata", context, work)

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            config = self.plane.model_config(request.name, request.version or None)
            return pb.ModelConfigResponse(config=json_format.ParseDict(config, pb.ModelConfig()))

        return await self._call("ModelConfig", context, work)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        async def work() -> Any:
            stats = self.plane.model_statistics(request.name or None, request.version or None)
            return json_format.ParseDict({"model_stats": stats}, pb.ModelStatisticsResponse())

        return await self._call("ModelStatistics", context, work)

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        if not self.batching and self.wait_s > 0 and time.perf_counter() - self.last_done < QUEUED_GAP_S:
            self.batching, self.misses = True, 0
        batching = self.batching

        async def work() -> Any:
            infer = parse_infer(request)
            response = await self.plane.infer(infer, "v2_grpc", self.wait_s, not batching, IDLE_S)
            if batching:
                self.misses = self.misses + 1 if self.batcher.last_batch_requests <= 1 else 0
                if self.misses >= MISSES:
                    self.batching = False  # no company came: back to running passes at once
            return encode_infer(response)

        try:
            return await self._call("ModelInfer", context, work)
        finally:
            self.last_done = time.perf_counter()


def _const(value: Any) -> Callable[[], Awaitable[Any]]:
    async def work() -> Any:
        return value

    return work


class GrpcServer:
    """The gRPC server of one application: bound at startup (a clash fails startup), drained at shutdown."""

    def __init__(
        self,
        plane: DataPlane,
        host: str,
        port: int,
        max_message_bytes: int,
        reuse_port: bool,
        tls: tuple[Path, Path] | None = None,
    ) -> None:
        self.plane = plane
        self.tls = tls  # (certificate chain, private key), PEM
        self.address = f"{host}:{port}"
        options = [
            ("grpc.max_receive_message_length", max_message_bytes),
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.so_reuseport", 1 if reuse_port else 0),  # only workers of one server share the port
        ]
        self.server = grpc.aio.server(options=options)
        pb_grpc.add_GRPCInferenceServiceServicer_to_server(InferenceServicer(plane), self.server)
        self.health = health.aio.HealthServicer()
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        self.port = 0

    async def start(self) -> None:
        try:
            if self.tls is None:
                self.port = self.server.add_insecure_port(self.address)
            else:
                cert, key = (p.read_bytes() for p in self.tls)
                credentials = grpc.ssl_server_credentials([(key, cert)])
                self.port = self.server.add_secure_port(self.address, credentials)
        except RuntimeError as exc:
            raise RuntimeError(
                f"cannot listen for gRPC on {self.address} ({exc}); free the port, or set MCSERVE_GRPC_PORT "
                "to another port (0 turns gRPC off)"
            ) from None
        await self.server.start()
        serving = health_pb2.HealthCheckResponse
        status = serving.SERVING if self.plane.ready else serving.NOT_SERVING
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)
        tls = "TLS" if self.tls else "plaintext"
        log.info("v2 gRPC (%s, grpc.health.v1.Health, %s) listening on %s", SERVICE_NAME, tls, self.address)

    async def stop(self, grace_s: float) -> None:
        """Refuse new calls, give in-flight ones ``grace_s`` seconds, then close."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace_s)
