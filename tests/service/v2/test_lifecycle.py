"""gRPC starts and stops with the HTTP server: SIGTERM lets an in-flight call of either protocol finish, refuses new
ones, and the process exits 0; the health service says NOT_SERVING while it drains."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import grpc
import httpx
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client.parser import text_string_to_metric_families

from service.v2.stubs import pb, pb_grpc

from .conftest import start_server

pytestmark = pytest.mark.slow  # real servers, child processes or training runs: `make test`, not test-fast

MC = "fashion-mnist-dropout-mlp-mc"


def _in_flight(url: str) -> float:
    """``mcserve_http_requests_in_flight`` (HTTP and gRPC calls being served, this scrape included)."""
    for family in text_string_to_metric_families(httpx.get(f"{url}/metrics", timeout=5).text):
        if family.name == "mcserve_http_requests_in_flight":
            return sum(sample.value for sample in family.samples)
    raise AssertionError("no mcserve_http_requests_in_flight on /metrics")


def _mc_request(images: np.ndarray, passes: int) -> object:
    request = pb.ModelInferRequest(model_name=MC)
    request.inputs.add(name="images", datatype="FP32", shape=list(images.shape))
    request.raw_input_contents.append(images.astype(np.float32).tobytes())
    request.parameters["mc_samples"].int64_param = passes
    request.parameters["seed"].int64_param = 3
    return request


def test_sigterm_drains_in_flight_grpc_and_http_calls_then_exits_0(
    trained_artifact: Path, test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    server = start_server(
        trained_artifact, max_samples="8000", max_work="2048000", max_queued_work="4096000", max_concurrency="2"
    )
    images = test_images[0][:256].reshape(256, 784)
    results: dict[str, object] = {}
    try:
        channel = grpc.insecure_channel(server.grpc)
        stub = pb_grpc.GRPCInferenceServiceStub(channel)
        health = health_pb2_grpc.HealthStub(channel)
        assert health.Check(health_pb2.HealthCheckRequest()).status == health_pb2.HealthCheckResponse.SERVING
        stub.ModelInfer(_mc_request(images[:2], 10), timeout=60)  # warm: the long call below is the only one in flight

        def grpc_call() -> None:
            try:
                results["grpc"] = stub.ModelInfer(_mc_request(images, 8000), timeout=60)
            except grpc.RpcError as exc:
                results["grpc"] = exc
            results["grpc_done"] = time.monotonic()

        body = json.dumps({"images": images.tolist(), "n_samples": 8000, "seed": 4}).encode()  # encoded up front
        headers = {"content-type": "application/json"}

        def http_call() -> None:
            answer = httpx.post(f"{server.url}/predict/uncertainty", content=body, headers=headers, timeout=60)
            results["http"] = answer.status_code
            results["http_done"] = time.monotonic()

        workers = [threading.Thread(target=grpc_call), threading.Thread(target=http_call)]
        for w in workers:
            w.start()
        # Signal only once the server holds both calls (2,048,000 passes each: over a second even with the C kernel);
        # a fixed sleep raced a slow client on a slow machine, whose request then met a closed port.
        deadline = time.monotonic() + 30
        while _in_flight(server.url) < 3 and time.monotonic() < deadline:  # the two calls and this scrape
            time.sleep(0.01)
        assert all(w.is_alive() for w in workers), results
        signalled = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        for w in workers:
            w.join(60)
        assert results["grpc_done"] > signalled and results["http_done"] > signalled  # both were in flight
        assert results["http"] == 200
        answer = results["grpc"]
        assert isinstance(answer, pb.ModelInferResponse), answer
        mean = np.frombuffer(answer.raw_output_contents[0], dtype=np.float32).reshape(256, 10)
        assert np.allclose(mean.sum(1), 1.0, atol=1e-5)
        _, stderr = server.proc.communicate(timeout=30)
        assert server.proc.returncode == 0, stderr.decode()
        try:  # gone: nothing answers any more
            stub.ServerLive(pb.ServerLiveRequest(), timeout=2)
            raise AssertionError("the gRPC server still answers after exit")
        except grpc.RpcError as exc:
            assert exc.code() == grpc.StatusCode.UNAVAILABLE
        channel.close()
    finally:
        if server.proc.poll() is None:
            server.proc.kill()
