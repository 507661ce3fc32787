"""The fast path for ``POST /predict`` and ``POST /predict/uncertainty``: well-formed pixel-list
requests skip FastAPI's machinery.

A deterministic prediction of this MLP costs about 10 microseconds of model time per image
when batched, and an MC prediction of one image (T = 100) about 1 ms, while FastAPI's
dependency solving, pydantic validation of 784 numbers and response-model serialisation
cost about 1.5 ms of CPU per request here. This ASGI middleware answers the common case itself:

* ``Content-Type: application/json`` and a body of exactly ``{"images": [...]}`` (``/predict``),
  or ``images`` plus optional integer ``n_samples`` and ``seed`` within their limits
  (``/predict/uncertainty``), holding only numbers and lists, with images that ``decode_batch``
  accepts: ``service.decode.decode_json_request`` checks all that while it decodes;
* ``/predict`` images go to the :class:`~service.batching.MicroBatcher`, so concurrent
  requests share one forward pass; MC requests go to the :class:`~service.mcbatch.MCScheduler`,
  as the route's do;
* the payload is built by ``service.encode`` (as the route does) and serialised by orjson.

Bodies over ``FAST_PATH_MAX_BODY_BYTES`` are decoded in the core's decode thread, off the event loop.
Anything else (PNG input, a body over ``MCSERVE_MAX_BODY_BYTES``, a parse error, an unknown
field, a bad pixel, ``n_samples``/``seed`` out of range or of another type, too much work,
the model not ready yet) is handed, with its body replayed untouched, to the FastAPI
application, which produces the one canonical response or error. So the fast path changes
speed, not the API: the tests send the same requests both ways and compare the payloads.

It is the application's outermost layer (``service.app.McServe``): the requests it answers
never reach FastAPI's per-request telemetry check or Starlette's middleware stack, so it
records their HTTP metrics itself (the same series ``MetricsMiddleware`` records), reads
bodies of at most ``MCSERVE_MAX_BODY_BYTES`` itself, and delegates cross-origin requests
when CORS is configured.
"""

from __future__ import annotations

import functools
import logging
import time
from typing import Any

import numpy as np
import orjson
from starlette.types import ASGIApp, Receive, Scope, Send

from .admission import BIG_BODY_BYTES, Overloaded, Reservation
from .auth import AuthError
from .core import SEED_LIMIT, Core
from .decode import decode_json_request
from .encode import predict_payload, uncertainty_payload_of
from .errors import ServiceError, error_body
from .limits import replay_body
from .promfast import inc

_JSON = b"application/json"
# Bodies up to this (about 20 images as JSON) are decoded on the event loop; bigger ones (up to
# MCSERVE_MAX_BODY_BYTES) in the core's decode thread: a 256-image body would hold the loop for several
# milliseconds. An MC body that big first waits, unread, for room in the MC queue (service.admission).
FAST_PATH_MAX_BODY_BYTES = BIG_BODY_BYTES
_HEADERS = [(b"content-type", b"application/json")]
_PREDICT, _UNCERTAINTY = "/predict", "/predict/uncertainty"
_PATHS = frozenset({_PREDICT, _UNCERTAINTY})
log = logging.getLogger("service")
_PREDICT_KEYS, _MC_KEYS = frozenset({"images"}), frozenset({"images", "n_samples", "seed"})


class FastPredictPath:
    """ASGI front: serves valid pixel-list requests to both predict endpoints, delegates everything else to ``app``.

    It is the outermost layer (``create_app`` puts it in front of FastAPI's own ``__call__``), so the requests it
    answers skip FastAPI's per-request telemetry check and Starlette's middleware stack; it therefore records their
    HTTP metrics itself, as ``MetricsMiddleware`` does for everything else; bigger bodies than it reads go on.
    """

    def __init__(self, app: ASGIApp, core: Core) -> None:
        self.app = app
        self.core = core
        self.engine = core.engine
        self.metrics = core.metrics
        settings = core.settings
        self.settings = settings
        self.max_batch = settings.max_batch
        self.max_body = settings.max_body_bytes  # larger bodies go to the application, whose limit answers 413
        self.cors = bool(settings.cors_origins)  # cross-origin requests need CORSMiddleware's headers: delegate them

    def _wants(self, scope: Scope) -> int | None:
        """A JSON POST to a predict endpoint, small enough to read here, that no other layer needs to see: its
        ``Content-Length`` (0 when chunked), or None."""
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] not in _PATHS or not self.engine.ready:
            return None
        json_body, length = False, 0
        for name, value in scope["headers"]:
            if name == b"content-type":
                json_body = value.split(b";", 1)[0].strip().lower() == _JSON
            elif name == b"content-length":
                if not value.isdigit() or int(value) > self.max_body:
                    return None
                length = int(value)
            elif name == b"origin" and self.cors:
                return None
        return length if json_body else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        length = self._wants(scope)
        if length is None:
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        metrics = self.metrics
        reservation = None
        if length > FAST_PATH_MAX_BODY_BYTES and scope["path"] == _UNCERTAINTY:  # room first, then the body
            try:
                reservation = await self.core.mc.reserve(self.settings.max_work, "rest")
            except Overloaded as exc:  # the line is full, or no room came in time: the body is never read
                await _send_error(send, exc)
                metrics.record_http(scope["path"], "POST", str(exc.status), time.perf_counter() - start, "rest")
                return
        inc(metrics.in_flight)
        try:
            body, more = await _read_body(receive, self.max_body)
            if body is None:  # the client disconnected mid-body: nobody to answer
                return
            try:
                payload = None if more else await self._answer(scope["path"], body, reservation)
            except (Overloaded, AuthError) as exc:  # refused by admission control or a key's MC budget: answered here
                await _send_error(send, exc)
                metrics.record_http(scope["path"], "POST", str(exc.status), time.perf_counter() - start, "rest")
                return
        finally:
            inc(metrics.in_flight, -1.0)
            if reservation is not None:  # unused (a bad body, a refusal): the room goes to the next in line
                self.core.mc.release(reservation)
        if payload is None:  # anything this layer does not answer gets the full application, body replayed
            await self.app(scope, replay_body(body, receive, more), send)
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
        metrics.record_http(scope["path"], "POST", "200", time.perf_counter() - start, "rest")

    async def _answer(self, path: str, body: bytes, reservation: Reservation | None) -> dict[str, Any] | None:
        """The payload for a request this layer serves, or None to hand it to the application."""
        keys = _MC_KEYS if path == _UNCERTAINTY else _PREDICT_KEYS
        if len(body) <= FAST_PATH_MAX_BODY_BYTES:
            decoded = decode_json_request(body, keys, self.max_batch)
        else:
            decoded = await self.core.off_loop(decode_json_request, body, keys, self.max_batch)
        if decoded is None:
            return None
        x, fields = decoded
        try:
            return await (self._predict(x) if path == _PREDICT else self._uncertainty(x, fields, reservation))
        except (Overloaded, AuthError):
            raise
        except Exception:  # e.g. a failed forward pass: the application answers it (and logs and counts it)
            log.exception("fast path failed; handing the request to the application")
            return None

    async def _predict(self, x: np.ndarray) -> dict[str, Any]:
        rows = await self.core.predict(x, "rest")
        return predict_payload(self.engine.loaded, rows.tolist())

    async def _uncertainty(
        self, x: np.ndarray, fields: dict[str, int], reservation: Reservation | None
    ) -> dict[str, Any] | None:
        """The route's ``predict_uncertainty`` for a request with nothing to reject; None otherwise."""
        core = self.core
        n, seed = fields.get("n_samples", self.settings.default_samples), fields.get("seed")
        if core.mc_limit_problem(n, len(x)) is not None:
            return None
        if seed is not None and not 0 <= seed < SEED_LIMIT:
            return None
        loaded = self.engine.loaded
        encode = functools.partial(uncertainty_payload_of, loaded)
        return await core.uncertainty(x, n, seed, "rest", encode, reservation=reservation)


async def _send_error(send: Send, exc: ServiceError) -> None:
    data = orjson.dumps(error_body(exc.code, exc.message, exc.field))
    extra = [(k.lower().encode(), v.encode()) for k, v in exc.headers().items()]
    headers = [*_HEADERS, (b"content-length", str(len(data)).encode()), *extra]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": data})


async def _read_body(receive: Receive, limit: int) -> tuple[bytes | None, bool]:
    """``(body, more)``: the body, or its first ``limit``-odd bytes with ``more`` set when a chunked body runs past
    that; ``(None, False)`` when the client disconnected."""
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None, False
        chunk = message.get("body", b"")
        chunks.append(chunk)
        size += len(chunk)
        more = bool(message.get("more_body", False))
        if not more or size > limit:
            return (chunks[0] if len(chunks) == 1 else b"".join(chunks)), more
