"""The floor under mcserve's ``/predict/uncertainty``: the batched MC kernel behind a bare uvicorn endpoint.

``app`` is a raw ASGI callable (``python -m bench.peers.onewrite bench.peers.mc_floor:app --port P``: uvicorn
over the HTTP protocol mcserve runs by default, no FastAPI) that reads each POST body to
the end and does not parse it: every request stands for one fixed test image with T = 100. The requests waiting
at a given moment are coalesced into one call of the service's kernel, ``service.inference.mc_predict(model, x,
100, generator, chunk_size=8192)`` with ``x`` that image repeated B times, run in one worker thread (torch with
one thread, as the service runs in the benches); while it runs, the next requests queue and go together in the
next call. Each request is answered with the same small constant JSON.

No validation, no per-request payload, no metrics, no admission control: the least work any design could do for
this endpoint with this kernel. ``GET`` (readiness) answers ``{}``.
"""

from __future__ import annotations

import asyncio
import json
import os
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import torch

from bench.artifact import sample_image
from bench.peers.bare import lifespan
from mcnet import load_artifact

N_SAMPLES = 100
CHUNK_SIZE = 8192
CONSTANT = json.dumps({"predictions": [{"class_id": 0, "mutual_information": 0.0}]}).encode()
_HEADERS = [(b"content-type", b"application/json")]


class Floor:
    """One fixed image, the artifact's model, and the requests waiting for the next kernel call."""

    def __init__(self) -> None:
        self.waiting: list[asyncio.Future[None]] = []
        self.running = False
        self.kicked = False
        # torch's thread count is per thread under OpenMP: set it where the kernel runs too
        self.executor = ThreadPoolExecutor(1, "mc-floor", initializer=torch.set_num_threads, initargs=(1,))
        self.model: Any = None
        self.image = torch.empty(0)
        self.generator = torch.Generator()
        self.mc_predict: Any = None
        self.calls = 0  # kernel calls and requests they served (for a look in a debugger)
        self.served = 0

    def load(self) -> None:
        torch.set_num_threads(1)
        try:  # as the service does at startup (same allocator behaviour for the same kernel)
            from service.memory import keep_freed_buffers

            keep_freed_buffers()
        except ImportError:
            pass
        from service.inference import mc_predict

        model_dir = os.environ.get("MCSERVE_MODEL_DIR") or os.environ["BENCH_MODEL_DIR"]
        self.model, _ = load_artifact(model_dir)
        self.mc_predict = mc_predict
        self.image = torch.tensor(sample_image(), dtype=torch.float32).reshape(1, 784)
        self.generator.manual_seed(0)
        for batch in (1, 16, 64):  # warm-up: first calls allocate
            self.kernel(batch)

    def kernel(self, batch: int) -> None:
        with torch.inference_mode():
            self.mc_predict(self.model, self.image.repeat(batch, 1), N_SAMPLES, self.generator, chunk_size=CHUNK_SIZE)

    def submit(self) -> asyncio.Future[None]:
        """A future that completes when a kernel call covering this request has run."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[None] = loop.create_future()
        self.waiting.append(future)
        if not self.running and not self.kicked:
            self.kicked = True  # next loop iteration: requests read in this one go together
            loop.call_soon(self._start)
        return future

    def _start(self) -> None:
        self.kicked = False
        if self.running or not self.waiting:
            return
        batch, self.waiting = self.waiting, []
        self.running = True
        loop = asyncio.get_running_loop()
        done = self.executor.submit(self.kernel, len(batch))
        done.add_done_callback(lambda f: loop.call_soon_threadsafe(self._finish, batch, f))

    def _finish(self, batch: list[asyncio.Future[None]], done: Future[None]) -> None:
        self.running = False
        self.calls += 1
        self.served += len(batch)
        exc = done.exception()
        for future in batch:
            if future.done():
                continue
            if exc is None:
                future.set_result(None)
            else:
                future.set_exception(exc)
        self._start()


floor = Floor()


async def _answer(send: Any, status: int, body: bytes) -> None:
    headers = [*_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "lifespan":
        await lifespan(receive, send, floor.load)
        return
    if scope["method"] != "POST":  # readiness
        await _answer(send, 200, b"{}")
        return
    more = True
    while more:  # read the whole body, as a real endpoint must; it is not parsed
        message = await receive()
        more = message.get("more_body", False)
    await floor.submit()
    await _answer(send, 200, CONSTANT)
