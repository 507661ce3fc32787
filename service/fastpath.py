"""The fast path for ``POST /predict`` and ``POST /predict/uncertainty``: well-formed pixel-list
requests skip FastAPI's machinery.

A deterministic prediction of this MLP costs about 10 microseconds of model time per image
when batched, and an MC prediction of one image (T = 100) about 1 ms, while FastAPI's
dependency solving, pydantic validation of 784 numbers and response-model serialisation
cost about 1.5 ms of CPU per request here. This ASGI middleware answers the common case itself:

* ``Content-Type: application/json`` and a body that orjson parses into exactly
  ``{"images": [...]}`` (``/predict``), or ``images`` plus optional integer ``n_samples`` and
  ``seed`` within their limits (``/predict/uncertainty``), holding only numbers and lists,
  with images that ``service.decode.decode_number_lists`` accepts (the same images
  ``decode_batch`` accepts);
* ``/predict`` images go to the :class:`~service.batching.MicroBatcher`, so concurrent
  requests share one forward pass; MC requests run in the engine's worker threads under the
  same concurrency limit as the route;
* the payload is built by ``service.encode`` (as the route does) and serialised by orjson.

Anything else (PNG input, a body over ``FAST_PATH_MAX_BODY_BYTES``, a parse error, an unknown
field, a bad pixel, ``n_samples``/``seed`` out of range or of another type, too much work,
the model not ready yet) is handed, with its body replayed untouched, to the FastAPI
application, which produces the one canonical response or error. So the fast path changes
speed, not the API: the tests send the same requests both ways and compare the payloads.

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
from .encode import predict_payload, run_uncertainty
from .engine import Engine
from .limits import replay_body
from .metrics import Metrics

_JSON = b"application/json"
# Bodies above this (about 20 images as JSON) go to the route, which decodes in a worker thread: decoding
# runs on the event loop here, and a 256-image body would hold the loop for several milliseconds.
FAST_PATH_MAX_BODY_BYTES = 64 * 1024
_HEADERS = [(b"content-type", b"application/json")]
_PREDICT, _UNCERTAINTY = "/predict", "/predict/uncertainty"
_MC_KEYS = frozenset({"images", "n_samples", "seed"})
_SEED_LIMIT = 2**63  # UncertaintyRequest.seed: 0 <= seed < 2**63


def _is_plain_json(scope: Scope) -> bool:
    for name, value in scope["headers"]:
        if name == b"content-type":
            return value.split(b";", 1)[0].strip().lower() == _JSON
    return False


class FastPredictPath:
    """ASGI middleware: serves valid pixel-list requests to both predict endpoints, delegates everything else."""

    def __init__(self, app: ASGIApp, engine: Engine, metrics: Metrics) -> None:
        self.app = app
        self.engine = engine
        self.metrics = metrics
        settings = engine.settings
        self.settings = settings
        self.max_batch = settings.max_batch
        self.batcher = MicroBatcher(
            self._forward,
            max_images=settings.batch_max_images,
            max_wait_s=settings.batch_max_wait_ms / 1000.0,
            on_batch=self._on_batch,
        )

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.engine.predict_scored(x)

    def _on_batch(self, stats: BatchStats) -> None:
        self.metrics.record_batch(stats.requests, stats.images)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if (
            scope["type"] != "http"
            or scope["path"] not in (_PREDICT, _UNCERTAINTY)
            or scope["method"] != "POST"
            or not self.engine.ready
            or not _is_plain_json(scope)
        ):
            await self.app(scope, receive, send)
            return
        body, complete = await _read_body(receive)
        if not complete:  # the client disconnected mid-body: nobody to answer
            return
        doc = _parse(body)
        if scope["path"] == _PREDICT:
            x = self._images(doc) if doc is not None and doc.keys() == {"images"} else None
            payload = None if x is None else await self._predict(x)
        else:
            payload = None if doc is None else await self._uncertainty(doc)
        if payload is None:
            await self.app(scope, replay_body(body, receive), send)
            return
        data = orjson.dumps(payload)
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [*_HEADERS, (b"content-length", str(len(data)).encode())],
            }
        )
        await send({"type": "http.response.body", "body": data})

    def _images(self, doc: dict[str, Any]) -> torch.Tensor | None:
        return decode_number_lists(doc["images"], self.max_batch)

    async def _predict(self, x: torch.Tensor) -> dict[str, Any]:
        start = time.perf_counter()
        rows = (await self.batcher.submit(x)).tolist()
        seconds = time.perf_counter() - start  # model time of the shared pass, plus time queued for it
        payload = predict_payload(self.engine.loaded, rows)
        self.metrics.record_predict(payload["predictions"], seconds)
        return payload

    async def _uncertainty(self, doc: dict[str, Any]) -> dict[str, Any] | None:
        """The route's ``predict_uncertainty`` for a request with nothing to reject; None otherwise."""
        s = self.settings
        n, seed = doc.get("n_samples", s.default_samples), doc.get("seed")
        if not doc.keys() <= _MC_KEYS or "images" not in doc or type(n) is not int or not 1 <= n <= s.max_samples:
            return None
        if seed is not None and (type(seed) is not int or not 0 <= seed < _SEED_LIMIT):
            return None
        x = self._images(doc)
        if x is None or n * len(x) > s.max_work:
            return None
        seed = self.engine.fresh_seed() if seed is None else seed
        payload, seconds = await self.engine.run(run_uncertainty, self.engine, x, n, seed)
        self.metrics.record_uncertainty(payload["predictions"], n, seconds)
        return payload


def _parse(body: bytes) -> dict[str, Any] | None:
    """The body as a JSON object whose only strings are its keys and that holds no true/false/null."""
    if len(body) > FAST_PATH_MAX_BODY_BYTES or b"true" in body or b"false" in body or b"null" in body:
        return None
    try:
        doc: Any = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    if type(doc) is not dict or body.count(b'"') != 2 * len(doc):
        return None
    return doc


async def _read_body(receive: Receive) -> tuple[bytes, bool]:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return b"", False
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks), True
