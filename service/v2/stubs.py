"""The generated v2 gRPC modules, imported in one place with a clear error when they have not been generated.

    from service.v2.stubs import pb, pb_grpc
    pb.ModelInferRequest(...); pb_grpc.add_GRPCInferenceServiceServicer_to_server(servicer, server)

``pb`` is ``service.v2.protos.mcserve_v2_pb2`` (the messages, proto package ``mcserve.v2``), ``pb_grpc`` is
``service.v2.protos.inference_pb2_grpc`` (servicer base class, client stub, registration). Neither touches
``inference_pb2``, whose ``inference.GRPCInferenceService`` descriptor would clash with tritonclient's in the
process-wide protobuf descriptor pool (see service/v2/protos/inference.proto).
"""

from __future__ import annotations

SERVICE_NAME = "inference.GRPCInferenceService"
METHODS = (
    "ServerLive",
    "ServerReady",
    "ModelReady",
    "ServerMetadata",
    "ModelMetadata",
    "ModelInfer",
    "ModelConfig",
    "ModelStatistics",
)
_GENERATED = ("service.v2.protos.mcserve_v2_pb2", "service.v2.protos.inference_pb2_grpc")
_HOW = "run `make install`, or `python -m service.v2.protogen` (needs grpcio-tools, in the dev extra)"

try:
    from google.protobuf.runtime_version import VersionError
except ImportError:  # protobuf older than the generated code's runtime check, or missing: the import below says so
    VersionError = RuntimeError  # type: ignore[misc, assignment]

try:
    from .protos import inference_pb2_grpc as pb_grpc
    from .protos import mcserve_v2_pb2 as pb
except ModuleNotFoundError as exc:
    if exc.name not in _GENERATED:
        raise
    raise ImportError(f"the v2 gRPC stubs have not been generated ({exc.name} is missing): {_HOW}") from exc
except VersionError as exc:
    raise ImportError(f"the v2 gRPC stubs do not match the installed protobuf ({exc}); regenerate: {_HOW}") from exc

__all__ = ["METHODS", "SERVICE_NAME", "pb", "pb_grpc"]
