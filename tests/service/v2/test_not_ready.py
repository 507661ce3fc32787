"""Before the model is loaded: v2 health says not ready, every model call is a 503 with Retry-After (gRPC:
UNAVAILABLE), liveness and server metadata still answer."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import httpx
import orjson
from prometheus_client import CollectorRegistry

from service import Settings, create_app
from service.v2.grpc_server import GRPC_CODES

M = "fashion-mnist-dropout-mlp"


def test_v2_before_the_model_is_loaded(trained_artifact: Path) -> None:
    app = create_app(Settings(model_dir=trained_artifact, device="cpu"), registry=CollectorRegistry())  # no lifespan

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://mcserve") as client:
            body = {"inputs": [{"name": "images", "datatype": "FP32", "shape": [1, 784], "data": [0.0] * 784}]}
            return [
                await client.get("/v2/health/live"),
                await client.get("/v2/health/ready"),
                await client.get("/v2"),
                await client.get(f"/v2/models/{M}/ready"),
                await client.get(f"/v2/models/{M}"),
                await client.post(f"/v2/models/{M}/infer", content=orjson.dumps(body)),
            ]

    live, ready, server, model_ready, metadata, infer = asyncio.run(main())
    assert live.status_code == 200 and live.json() == {"live": True}
    assert ready.status_code == 503 and ready.json() == {"ready": False}
    assert server.status_code == 200 and server.json()["name"] == "mcserve"
    assert model_ready.status_code == 503
    for response in (metadata, infer):
        assert response.status_code == 503 and response.headers["retry-after"] == "1"
        assert "not loaded" in response.json()["error"]
    assert GRPC_CODES[503] == grpc.StatusCode.UNAVAILABLE
