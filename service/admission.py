"""Admission control for Monte Carlo work: a bound on queued work and a queue deadline, so overload is refused fast.

An MC request is *queued* from the moment it passes validation until a worker thread (one of
``MCSERVE_MAX_CONCURRENCY``) takes it. Two rules keep that wait bounded:

* **queue full**: a request whose work (passes x images) would take the queued work past
  ``MCSERVE_MAX_QUEUED_WORK`` is refused at once (a request alone in the queue is always admitted: its work is
  within ``MCSERVE_MAX_WORK`` already);
* **queue deadline**: a request that has not started within ``MCSERVE_QUEUE_TIMEOUT_S`` is refused then.

Both answer 503 ``overloaded`` with ``Retry-After`` (gRPC: UNAVAILABLE) and count in
``mcserve_shed_requests_total{endpoint,reason,protocol}``. ``/predict``, validation errors, health and metrics
never queue here.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import anyio

from .errors import ServiceError
from .metrics import Metrics


class Overloaded(ServiceError):
    """503 ``overloaded``: the request was refused before any work, and may be retried."""

    def __init__(self, message: str) -> None:
        super().__init__(503, "overloaded", message, None)


class Admission:
    def __init__(self, max_queued_work: int, queue_timeout_s: float, metrics: Metrics) -> None:
        self.max_queued_work = max_queued_work
        self.queue_timeout_s = queue_timeout_s
        self.metrics = metrics
        self.queued_work = 0  # passes x images of the requests waiting for a worker

    @asynccontextmanager
    async def admit(self, work: int, limiter: anyio.CapacityLimiter, protocol: str) -> AsyncIterator[None]:
        """Hold one of ``limiter``'s tokens for the body, or raise :class:`Overloaded` without taking one."""
        if self.queued_work and self.queued_work + work > self.max_queued_work:
            self.metrics.record_shed("predict_uncertainty", "queue_full", protocol)
            raise Overloaded(
                f"the Monte Carlo queue is full ({self.queued_work} passes x images waiting, the limit is "
                f"{self.max_queued_work}, MCSERVE_MAX_QUEUED_WORK); retry later"
            )
        self.queued_work += work
        try:
            with anyio.move_on_after(self.queue_timeout_s) as waited:
                await limiter.acquire()
        finally:
            self.queued_work -= work
        if waited.cancelled_caught:
            self.metrics.record_shed("predict_uncertainty", "queue_timeout", protocol)
            raise Overloaded(
                f"no worker was free within {self.queue_timeout_s:g} s (MCSERVE_QUEUE_TIMEOUT_S); the server is "
                "overloaded, retry later"
            )
        try:
            yield
        finally:
            limiter.release()
