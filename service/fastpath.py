"""The fast path for ``POST /predict``: well-formed pixel-list requests skip FastAPI's machinery.

A deterministic prediction of this MLP costs about 10 microseconds of model time per image
when batched, while FastAPI's dependency solving, pydantic validation of 784 numbers and
response-model serialisation cost about ten times that. This ASGI middleware answers
the common case itself:

* ``POST /predict`` with ``Content-Type: application/json``, a body that orjson parses into
  exactly ``{"images": [...]}`` holding only numbers and lists, and images that
  ``service.decode.decode_number_lists`` accepts (the same images ``decode_batch`` accepts);
* the images go to the :class:`~service.batching.MicroBatcher`, so concurrent requests
  share one forward pass;
* the payload is built by ``service.encode`` (as the route does) and serialised by orjson.

Anything else (PNG input, a body over ``FAST_PATH_MAX_BODY_BYTES``, a parse error, an unknown
field, a bad pixel, the model not ready yet) is handed, with its body replayed untouched, to
the FastAPI application, which produces the one canonical response or error. So the fast path
changes speed, not the API: the tests send the same requests both ways and compare the payloads.

It sits inside the body-size limit and the metrics middleware, which therefore count and
time fast-path requests like any other.
"""

from __future__ import annotations

import time
from typing import Any

import orjson
import torch
from starlette.types import ASGIApp, Receive, Scope, Send

from .batching import BatchStats, MicroBatcher
from .decode import decode_number_lists
from .encode import predict_payload
from .engine import Engine
from .limits import replay_body
from .metrics import Metrics

_JSON = b"application/json"
# Bodies above this (about 20 images as JSON) go to the route, which decodes in a worker thread: decoding
# runs on the event loop here, and a 256-image body would hold the loop for several milliseconds.
FAST_PATH_MAX_BODY_BYTES = 64 * 1024
_HEADERS = [(b"content-type", b"application/json")]


def _is_plain_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == _JSON
    return False


class FastPredictPath:
    """ASGI middleware: serves valid ``POST /predict`` pixel-list requests, delegates everything else."""

    def __init__(self, app: ASGIApp, engine: Engine, metrics: Metrics) -> None:
        self.app = app
        self.engine = engine
        self.metrics = metrics
        settings = engine.settings
        self.max_batch = settings.max_batch
        self.max_png_bytes = settings.max_png_bytes
        self.batcher = MicroBatcher(
            self._forward,
            max_images=settings.batch_max_images,
            max_wait_s=settings.batch_max_wait_ms / 1000.0,
            on_batch=self._on_batch,
        )

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.engine.predict(x)

    def _on_batch(self, stats: BatchStats) -> None:
        self.metrics.record_batch(stats.requests, stats.images)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] != "/predict"
            or scope["method"] != "POST"
            or not self.engine.ready
            or not _is_plain_json(scope)
        ):
            await self.app(scope, receive, send)
            return
        body, complete = await _read_body(receive)
        if not complete:  # the client disconnected mid-body: nobody to answer
            return
        x = self._decode(body) if len(body) <= FAST_PATH_MAX_BODY_BYTES else None
        if x is None:
            await self.app(scope, replay_body(body, receive), send)
            return
        start = time.perf_counter()
        probs = await self.batcher.submit(x)
        seconds = time.perf_counter() - start  # model time of the shared pass, plus time queued for it
        payload = predict_payload(self.engine.loaded, probs.tolist())
        self.metrics.record_predict(payload["predictions"], seconds)
        data = orjson.dumps(payload)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_HEADERS, (b"content-length", str(len(data)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": data})

    def _decode(self, body: bytes) -> torch.Tensor | None:
        """The request's images, or None when the request is not the well-formed common case."""
        # Only numbers and lists besides the one key: no other string, no true/false/null anywhere.
        if body.count(b'"') != 2 or b"true" in body or b"false" in body or b"null" in body:
            return None
        try:
            doc: Any = orjson.loads(body)
        except orjson.JSONDecodeError:
            return None
        if type(doc) is not dict or len(doc) != 1 or "images" not in doc:
            return None
        return decode_number_lists(doc["images"], self.max_batch)


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", False
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks), True
