"""Dynamic batching: concurrent ``/predict`` requests share one forward pass.

Requests are queued on the event loop. The first request of a batch schedules a flush:
with ``max_wait_s == 0`` (the default) the flush runs on the loop's *next* iteration,
so it only picks up requests that are already waiting and never delays a lone request;
with ``max_wait_s > 0`` the first request waits up to that long for company. A flush
takes queued requests in arrival order until ``max_images`` would be exceeded (a single
request larger than that still runs, alone), concatenates their images, runs one
forward pass and hands every request its own rows.

The forward pass runs on the event loop itself: an eval-mode pass of this MLP costs
about 0.1 ms for one image and about 3 ms for 256, less than a hop to a worker
thread costs at low load, and it is bounded by ``max_images``.

Nothing here knows about HTTP or about the model: ``forward`` maps a ``(N, ...)``
array to ``(N, ...)`` rows.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class BatchStats:
    """What one flush did, for metrics."""

    requests: int
    images: int
    seconds: float  # forward pass only


class MicroBatcher:
    """Coalesces concurrent ``submit`` calls into single ``forward`` calls."""

    def __init__(
        self,
        forward: Callable[[np.ndarray], np.ndarray],
        max_images: int,
        max_wait_s: float = 0.0,
        on_batch: Callable[[BatchStats], None] | None = None,
    ) -> None:
        if max_images < 1:
            raise ValueError("max_images must be at least 1")
        if max_wait_s < 0:
            raise ValueError("max_wait_s must be >= 0")
        self.forward = forward
        self.max_images = max_images
        self.max_wait_s = max_wait_s
        self.on_batch = on_batch
        self._queue: deque[tuple[np.ndarray, asyncio.Future[np.ndarray], float]] = deque()  # (x, rows, deadline)
        self._queued_images = 0
        self._timer: asyncio.Handle | None = None
        self._deadline = 0.0  # loop time at which the pending timer fires
        self._hard = math.inf  # earliest max-wait deadline of what is queued
        self._idle = -math.inf  # with idle waits: the flush comes once no request arrived for that long
        self.last_batch_requests = 0  # requests served by the latest forward pass
        self._started: dict[asyncio.Future[np.ndarray], float] = {}  # submit_timed's futures -> forward start

    @property
    def queued_requests(self) -> int:
        return len(self._queue)

    async def submit(self, x: np.ndarray) -> np.ndarray:
        """The ``forward`` rows for ``x``, computed together with whatever else is queued."""
        return await self.enqueue(x)

    async def submit_timed(
        self, x: np.ndarray, max_wait_s: float | None = None, idle_s: float | None = None
    ) -> tuple[np.ndarray, float]:
        """:meth:`submit`, and the seconds ``x`` waited in the queue before its forward pass started.

        ``max_wait_s`` and ``idle_s`` override the batcher's own wait for company for this request
        (see :meth:`enqueue`)."""
        queued = time.perf_counter()
        future = self.enqueue(x, max_wait_s, idle_s)
        self._started[future] = queued
        try:
            rows = await future
        finally:
            started = self._started.pop(future, queued)
        return rows, max(started - queued, 0.0)

    def enqueue(
        self, x: np.ndarray, max_wait_s: float | None = None, idle_s: float | None = None
    ) -> asyncio.Future[np.ndarray]:
        """Queue ``x`` and return the future of its rows (for callers that cannot await; on the loop's thread).

        ``x`` waits at most ``max_wait_s`` (default: the batcher's ``max_wait_s``) for company; with ``idle_s``
        the wait also ends once no request has arrived for ``idle_s`` (company stopped coming). The flush runs at
        the earliest such deadline of what is queued, so a request that may not wait is never held back by one
        that may."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[np.ndarray] = loop.create_future()
        now = loop.time()
        deadline = now + (self.max_wait_s if max_wait_s is None else max_wait_s)
        self._queue.append((x, future, deadline))
        self._queued_images += int(x.shape[0])
        self._hard = min(self._hard, deadline)
        if idle_s is not None:
            self._idle = max(self._idle, now + idle_s)
        if self._queued_images >= self.max_images:
            self._flush()
        else:
            self._schedule(loop)
        return future

    def _due(self) -> float:
        """Loop time of the flush: the earliest max-wait deadline, or earlier once arrivals have gone idle."""
        return self._hard if self._idle == -math.inf else min(self._hard, self._idle)

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        """Make the pending timer fire no later than :meth:`_due` (on the next iteration if that has passed)."""
        due = self._due()
        if self._timer is not None:
            if self._deadline <= due:
                return  # fires first and re-arms if the flush moved later (see _on_timer)
            self._timer.cancel()
        delay = due - loop.time()
        self._timer = loop.call_later(delay, self._on_timer) if delay > 0 else loop.call_soon(self._on_timer)
        self._deadline = due

    def _on_timer(self) -> None:
        self._timer = None
        loop = asyncio.get_running_loop()
        if self._due() > loop.time():  # company kept arriving: the idle deadline moved on
            self._schedule(loop)
        else:
            self._flush()

    def _take(self) -> list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]:
        """Queued requests in arrival order up to ``max_images`` (at least one); cancelled ones are dropped."""
        batch: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []
        images = 0
        while self._queue:
            x, future, _ = self._queue[0]
            n = int(x.shape[0])
            if batch and images + n > self.max_images:
                break
            self._queue.popleft()
            self._queued_images -= n
            if future.cancelled():  # the client went away while queued: no work for it
                continue
            batch.append((x, future))
            images += n
        return batch

    def _flush(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        while self._queue:
            batch = self._take()
            if batch:
                self._run(batch)
            if self._queued_images < self.max_images:
                break  # the rest (if any) waits for company again, under a fresh timer
        self._idle = -math.inf
        self._hard = min((deadline for _, _, deadline in self._queue), default=math.inf)
        if self._queue and self._timer is None:  # the rest keeps its own deadlines (long past: next iteration)
            self._schedule(asyncio.get_running_loop())

    def _run(self, batch: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]]) -> None:
        start = time.perf_counter()
        if self._started:
            for _, future in batch:
                if future in self._started:
                    self._started[future] = start
        try:
            xs = [x for x, _ in batch]
            out = self.forward(xs[0] if len(xs) == 1 else np.concatenate(xs))
        except Exception as exc:  # every waiting request gets the failure, the loop keeps running
            for _, future in batch:
                if not future.done():
                    future.set_exception(exc)
            return
        seconds = time.perf_counter() - start
        self.last_batch_requests = len(batch)
        row = 0
        for x, future in batch:
            n = int(x.shape[0])
            if not future.done():
                future.set_result(out[row : row + n])
            row += n
        if self.on_batch is not None:
            self.on_batch(BatchStats(requests=len(batch), images=row, seconds=seconds))
