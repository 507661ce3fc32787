"""The gRPC floors of ``python -m bench v2``: ``python grpc_floor.py PORT [MODEL_DIR]``.

A bare ``grpc.aio`` servicer of ``inference.GRPCInferenceService`` built from tritonclient's own generated classes
(not mcserve's stubs), run by the project's venv so it has the same grpcio as mcserve. ModelInfer parses the
request (grpc does that before the handler runs) and returns ``probabilities`` FP32 [1, 10] as raw bytes, the eval
model's output shape:

* without MODEL_DIR, one prebuilt constant. No model, no batching, no validation: the least any Python gRPC v2
  server pays per request on this machine (the issue's floor);
* with MODEL_DIR, the real answer: the raw input bytes as pixels, mcserve's numpy eval kernel
  (``service.engine.Engine.predict_scored``, one call per request as mcserve's gRPC path makes), the
  probabilities as bytes. No validation, metrics, statistics or data plane: the least any design pays to answer
  with this model over Python gRPC.

It answers whatever model name it is asked for, and just enough of the other RPCs for perf_analyzer
(ServerLive/Ready, ModelReady, ServerMetadata, ModelMetadata, ModelConfig, ModelStatistics).
"""

from __future__ import annotations

import asyncio
import struct
import sys
import time
from pathlib import Path
from typing import Any

import grpc
import numpy as np
from tritonclient.grpc import model_config_pb2 as mc
from tritonclient.grpc import service_pb2 as pb
from tritonclient.grpc import service_pb2_grpc as pb_grpc

VERSION = "1"
OUTPUT_BYTES = struct.pack("<10f", *([0.1] * 10))
MAX_MESSAGE = 64 * 1024 * 1024


class FloorServicer(pb_grpc.GRPCInferenceServiceServicer):  # type: ignore[misc]
    def __init__(self, model_dir: str | None = None) -> None:
        self.count = 0
        self.started_ns = time.time_ns()
        self.forward: Any = None
        if model_dir is not None:
            from service import Settings
            from service.engine import Engine

            engine = Engine(Settings(model_dir=Path(model_dir), device="cpu", grpc_port=0))
            engine.load()
            self.forward = engine.predict_scored

    async def ServerLive(self, request: Any, context: Any) -> Any:
        return pb.ServerLiveResponse(live=True)

    async def ServerReady(self, request: Any, context: Any) -> Any:
        return pb.ServerReadyResponse(ready=True)

    async def ModelReady(self, request: Any, context: Any) -> Any:
        return pb.ModelReadyResponse(ready=True)

    async def ServerMetadata(self, request: Any, context: Any) -> Any:
        return pb.ServerMetadataResponse(name="grpc-floor", version="0", extensions=["statistics"])

    async def ModelMetadata(self, request: Any, context: Any) -> Any:
        tensor = pb.ModelMetadataResponse.TensorMetadata
        return pb.ModelMetadataResponse(
            name=request.name,
            versions=[VERSION],
            platform="floor",
            inputs=[tensor(name="images", datatype="FP32", shape=[-1, 784])],
            outputs=[tensor(name="probabilities", datatype="FP32", shape=[-1, 10])],
        )

    async def ModelConfig(self, request: Any, context: Any) -> Any:
        config = mc.ModelConfig(
            name=request.name,
            platform="floor",
            backend="floor",
            max_batch_size=256,
            input=[mc.ModelInput(name="images", data_type=mc.TYPE_FP32, dims=[784])],
            output=[mc.ModelOutput(name="probabilities", data_type=mc.TYPE_FP32, dims=[10])],
        )
        return pb.ModelConfigResponse(config=config)

    async def ModelStatistics(self, request: Any, context: Any) -> Any:
        n = self.count
        success = pb.StatisticDuration(count=n, ns=0)
        stats = pb.ModelStatistics(
            name=request.name or "floor",
            version=VERSION,
            last_inference=time.time_ns() // 1_000_000,
            inference_count=n,
            execution_count=n,
            inference_stats=pb.InferStatistics(
                success=success,
                fail=pb.StatisticDuration(),
                queue=pb.StatisticDuration(count=n),
                compute_input=pb.StatisticDuration(count=n),
                compute_infer=pb.StatisticDuration(count=n),
                compute_output=pb.StatisticDuration(count=n),
            ),
        )
        return pb.ModelStatisticsResponse(model_stats=[stats])

    async def ModelInfer(self, request: Any, context: Any) -> Any:
        self.count += 1
        if self.forward is None:
            return pb.ModelInferResponse(
                model_name=request.model_name,
                model_version=VERSION,
                id=request.id,
                outputs=[pb.ModelInferResponse.InferOutputTensor(name="probabilities", datatype="FP32", shape=[1, 10])],
                raw_output_contents=[OUTPUT_BYTES],
            )
        x = np.frombuffer(request.raw_input_contents[0], dtype=np.float32).reshape(-1, 28, 28)
        probs = self.forward(x)[:, :-1]
        return pb.ModelInferResponse(
            model_name=request.model_name,
            model_version=VERSION,
            id=request.id,
            outputs=[pb.ModelInferResponse.InferOutputTensor(name="probabilities", datatype="FP32", shape=probs.shape)],
            raw_output_contents=[np.ascontiguousarray(probs).tobytes()],
        )


async def serve(port: int, model_dir: str | None) -> None:
    options = [("grpc.max_receive_message_length", MAX_MESSAGE), ("grpc.max_send_message_length", MAX_MESSAGE)]
    server = grpc.aio.server(options=options)
    pb_grpc.add_GRPCInferenceServiceServicer_to_server(FloorServicer(model_dir), server)
    server.add_insecure_port(f"127.0.0.1:{port}")
    await server.start()
    print(f"grpc_floor: serving on 127.0.0.1:{port}", flush=True)
    await server.wait_for_termination()


if __name__ == "__main__":
    asyncio.run(serve(int(sys.argv[1]), sys.argv[2] if len(sys.argv) > 2 else None))
