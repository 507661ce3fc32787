"""Floors under mcserve's ``/predict``: bare uvicorn endpoints that do only part of its work.

``bench batching`` runs them in its interleaved rounds beside mcserve and the bare uvicorn endpoint,
to show where the gap between mcserve and bare uvicorn comes from:

* ``decode_app``: reads the body, decodes the pixels with the fast path's decoder
  (``service.decode.decode_json_request``), answers ``bare.CONSTANT``. What it costs just to read a
  784-pixel JSON request in Python, with no model.
* ``model_app``: the same, plus the work that makes the answer: the fast path's dynamic batching and the
  eval kernel (``MicroBatcher`` over ``Engine.predict_scored``), answering each image's class and
  probabilities. No metrics, no input-check fields, no framework, no fallback for anything else.
* ``bench.peers.protocol_floor``: ``model_app``'s work done inside uvicorn's HTTP protocol, with no ASGI
  request task at all.

None of them is a product: a request it cannot decode gets a 400 with no body.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson

from bench.peers.bare import CONSTANT, lifespan
from service.batching import MicroBatcher
from service.decode import decode_json_request
from service.engine import Engine
from service.settings import Settings

KEYS = frozenset({"images"})
_HEADERS = [(b"content-type", b"application/json")]


async def _body(receive: Any) -> bytes:
    chunks, more = [], True
    while more:
        message = await receive()
        chunks.append(message.get("body", b""))
        more = message.get("more_body", False)
    return b"".join(chunks)


async def _answer(send: Any, status: int, body: bytes) -> None:
    headers = [*_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def decode_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send)
        return
    if scope["method"] == "GET":  # readiness
        await _answer(send, 200, b"{}")
        return
    decoded = decode_json_request(await _body(receive), KEYS, 256)
    await _answer(send, 200 if decoded is not None else 400, CONSTANT if decoded is not None else b"")


class Model:
    engine: Engine
    batcher: MicroBatcher
    names: list[str]

    def load(self) -> None:
        settings = Settings()  # MCSERVE_MODEL_DIR and MCSERVE_TORCH_THREADS, as mcserve reads them
        self.engine = Engine(settings)
        loaded = self.engine.load()
        self.names = list(loaded.class_names)
        self.batcher = MicroBatcher(self.engine.predict_scored, max_images=settings.batch_max_images)

    def answer(self, scored: np.ndarray) -> bytes:
        """The JSON answer for one request's ``predict_scored`` rows: class, label and probabilities per image."""
        predictions = []
        for row in scored.tolist():
            row.pop()  # the input check's score: not part of this floor's answer
            i = max(range(len(row)), key=row.__getitem__)
            predictions.append({"class_id": i, "label": self.names[i], "probabilities": row})
        return orjson.dumps({"predictions": predictions})


model = Model()


async def model_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send, model.load)
        return
    if scope["method"] == "GET":
        await _answer(send, 200, b"{}")
        return
    decoded = decode_json_request(await _body(receive), KEYS, 256)
    if decoded is None:
        await _answer(send, 400, b"")
        return
    await _answer(send, 200, model.answer(await model.batcher.submit(decoded[0])))
