"""The lowest floor under mcserve's ``/predict``: ``floor.model_app``'s work done inside uvicorn's HTTP protocol.

``Protocol`` (``uvicorn --http bench.peers.protocol_floor:Protocol bench.peers.floor:model_app``) answers
``POST /predict`` from httptools' parser callbacks: once the body is complete it decodes it, queues the
pixels on the same ``MicroBatcher`` and eval kernel, and writes the response to the socket from the batch's
done-callback. No ASGI request task, scope round trip or send/receive messages: the part of uvicorn's own
per-request work that even the bare uvicorn endpoint pays. Everything else (``GET /readyz``) goes through
the ASGI app as usual.

It leans on private details of uvicorn's ``HttpToolsProtocol`` (``_start_asgi_task``, the request cycle's
fields): a measuring device for ``bench batching``, not a way to serve. Status line and two headers only.
"""

from __future__ import annotations

import asyncio
from typing import Any

import numpy as np
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle

from bench.peers.floor import KEYS, model
from service.decode import decode_json_request


class Protocol(HttpToolsProtocol):
    _waiting: RequestResponseCycle | None = None  # a /predict request whose body is still arriving

    def _start_asgi_task(self, cycle: RequestResponseCycle, app: Any) -> None:
        scope = cycle.scope
        if scope["method"] != "POST" or scope["path"] != "/predict":
            super()._start_asgi_task(cycle, app)
        elif cycle.more_body:
            self._waiting = cycle
        else:  # a pipelined request, started after its body was read
            self._predict(cycle)

    def on_message_complete(self) -> None:
        super().on_message_complete()
        cycle = self._waiting
        if cycle is not None and cycle is self.cycle:
            self._waiting = None
            self._predict(cycle)

    def _predict(self, cycle: RequestResponseCycle) -> None:
        decoded = decode_json_request(bytes(cycle.body), KEYS, 256)
        if decoded is None:
            self._write(cycle, b"400 Bad Request", b"")
            return
        future = model.batcher.enqueue(decoded[0])
        future.add_done_callback(lambda done: self._answered(cycle, done))

    def _answered(self, cycle: RequestResponseCycle, done: asyncio.Future[np.ndarray]) -> None:
        self._write(cycle, b"200 OK", model.answer(done.result()))

    def _write(self, cycle: RequestResponseCycle, status: bytes, body: bytes) -> None:
        if cycle.disconnected:
            return
        head = b"HTTP/1.1 %s\r\ncontent-type: application/json\r\ncontent-length: %d\r\n\r\n" % (status, len(body))
        self.transport.write(head + body)
        cycle.response_started = cycle.response_complete = True
        cycle.message_event.set()
        if not cycle.keep_alive:
            self.transport.close()
        self.on_response_complete()
