"""The framework limit: uvicorn endpoints that read the request body and return a constant.

``app`` is a bare ASGI callable (uvicorn alone); ``fastapi_app`` is the same constant behind a FastAPI route
(uvicorn + FastAPI routing, no body validation), which shows what the framework itself costs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request, Response

CONSTANT = json.dumps({"predictions": [{"class_id": 0, "label": "T-shirt/top", "probabilities": [0.1] * 10}]}).encode()


async def lifespan(receive: Any, send: Any, startup: Callable[[], None] | None = None) -> None:
    """The ASGI lifespan protocol for a raw app: ``startup()`` (if given) before startup completes."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            if startup is not None:
                startup()
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            await send({"type": "lifespan.shutdown.complete"})
            return


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    more = True
    while more:  # read the whole body, as a real endpoint must
        message = await receive()
        more = message.get("more_body", False)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [(b"content-type", b"application/json"), (b"content-length", str(len(CONSTANT)).encode())],
        }
    )
    await send({"type": "http.response.body", "body": CONSTANT})


fastapi_app = FastAPI()


@fastapi_app.get("/readyz")
async def readyz() -> dict[str, str]:
    return {"status": "ready"}


@fastapi_app.post("/predict")
async def predict(request: Request) -> Response:
    await request.body()
    return Response(CONSTANT, media_type="application/json")
