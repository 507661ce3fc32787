"""Admission control for Monte Carlo work: the bound on queued work, reservations for unread bodies, and the 503.

:class:`~service.mcbatch.MCScheduler` admits every MC request through an :class:`Admission`:

* **the bound**: a request whose work (passes x images) would take the admitted, not yet computed work (plus the
  reservations below) past ``MCSERVE_MAX_QUEUED_WORK`` is refused at once;
* **the deadline**: one that no kernel call has started within ``MCSERVE_QUEUE_TIMEOUT_S`` of its arrival is
  refused then;
* **big bodies wait unread**: an adapter that has a big MC body to parse (hundreds of kilobytes of JSON) first
  :meth:`Admission.reserve`-s the most work a request may have, *before* it reads the body. While the queue has no
  room the request waits in line (first come, first served, at most ``MCSERVE_MAX_WAITING_REQUESTS`` of them), its
  body left in the socket: the server's flow control stops reading it, so the client is held back by TCP and a
  waiting request costs no CPU. It gets its reservation when room frees up, or a 503 at the deadline. Refusing
  such a request at once instead would only invite the client to send its body again: a flood of clients that do
  not back off then costs the server a body's transfer per refusal (thousands a second), and the requests that
  should be fast wait for the event loop;
* **small requests never wait in that line**: they are admitted while their own work fits, so a 1-image request is
  not stuck behind big ones (the scheduler then interleaves everyone's tiles by cost). Reservations never take the
  last sixteenth of the bound (``small_room``): a flood of big requests fills the queue only up to there, and small
  requests still fit beside it.

Every refusal is a 503 :class:`Overloaded` with ``Retry-After`` (gRPC: UNAVAILABLE), counted in
``mcserve_shed_requests_total{endpoint,reason,protocol}``; ``mcserve_mc_waiting_requests`` is the line's length.
``/predict``, validation errors, health and metrics never
queue here. Nothing here knows about HTTP or gRPC.
"""

from __future__ import annotations

import asyncio
from collections import deque
from dataclasses import dataclass, field

from .errors import ServiceError
from .metrics import Metrics
from .promfast import set_gauge

_ENDPOINT = "predict_uncertainty"
BIG_BODY_BYTES = 64 * 1024  # an MC request body over this (about 20 images as JSON) reserves room before it is read


class Overloaded(ServiceError):
    """503 ``overloaded``: the request was refused before any work, and may be retried."""

    def __init__(self, message: str) -> None:
        super().__init__(503, "overloaded", message, None)


@dataclass(eq=False)
class Reservation:
    """Room held in the queue for a request whose body is not read yet; hand it to ``submit`` or ``release`` it."""

    work: int
    deadline: float  # the event loop's time by which a kernel call must start the request
    held: bool = True


@dataclass(eq=False)
class _Waiter:
    work: int
    deadline: float
    protocol: str
    future: asyncio.Future[Reservation] = field(repr=False)


class Admission:
    """The queue bound of one scheduler. Use it from the event loop's thread only."""

    def __init__(self, metrics: Metrics, *, max_queued_work: int, queue_timeout_s: float, max_waiting: int) -> None:
        self.metrics = metrics
        self.max_queued_work = max_queued_work
        self.queue_timeout_s = queue_timeout_s
        self.max_waiting = max_waiting
        self.small_room = max_queued_work // 16  # kept for requests that never wait (small bodies)
        self.queued_work = 0  # admitted passes x images not yet dispatched to a kernel call
        self.reserved = 0  # held for requests whose bodies are being read
        self._waiting: deque[_Waiter] = deque()

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def would_refuse(self, work: int) -> bool:
        """Whether a request of ``work`` (passes x images) does not fit now (an empty queue takes any request)."""
        held = self.queued_work + self.reserved
        return bool(held) and held + work > self.max_queued_work

    def _room_for_big(self, work: int) -> bool:
        held = self.queued_work + self.reserved
        return not held or held + work <= self.max_queued_work - self.small_room

    def refuse_full(self, protocol: str) -> Overloaded:
        """The 503 for a request refused because the queue is full (counted as shed)."""
        self.metrics.record_shed(_ENDPOINT, "queue_full", protocol)
        return Overloaded(
            f"the Monte Carlo queue is full ({self.queued_work + self.reserved} passes x images waiting, the limit "
            f"is {self.max_queued_work}, MCSERVE_MAX_QUEUED_WORK); retry later"
        )

    def refuse_late(self, protocol: str) -> Overloaded:
        """The 503 for a request that could not start within the deadline (counted as shed)."""
        self.metrics.record_shed(_ENDPOINT, "queue_timeout", protocol)
        return Overloaded(
            f"no Monte Carlo kernel call could start this request within {self.queue_timeout_s:g} s "
            "(MCSERVE_QUEUE_TIMEOUT_S); the server is overloaded, retry later"
        )

    def deadline(self) -> float:
        return asyncio.get_running_loop().time() + self.queue_timeout_s

    def add(self, delta: int) -> None:
        """Admitted work changes by ``delta`` (negative: dispatched to a call, or dropped)."""
        self.queued_work += delta
        set_gauge(self.metrics.mc_queued_work, self.queued_work)
        if delta < 0:
            self._wake()

    async def reserve(self, work: int, protocol: str) -> Reservation:
        """Room for ``work``, held before a big body is read: at once when it fits and nobody waits, else in line
        until it fits. Raises :class:`Overloaded` when the line is full, or at the deadline."""
        deadline = self.deadline()
        if not self._waiting and self._room_for_big(work):
            return self._hold(work, deadline)
        if len(self._waiting) >= self.max_waiting:
            raise self.refuse_full(protocol)
        loop = asyncio.get_running_loop()
        waiter = _Waiter(work, deadline, protocol, loop.create_future())
        self._waiting.append(waiter)
        self._line_moved()
        timer = loop.call_at(deadline, self._expire, waiter)
        try:
            return await waiter.future
        except asyncio.CancelledError:  # the client went away while waiting, or just after its turn came
            if waiter in self._waiting:
                self._waiting.remove(waiter)
                self._line_moved()
            elif waiter.future.done() and not waiter.future.cancelled() and waiter.future.exception() is None:
                self.release(waiter.future.result())
            raise
        finally:
            timer.cancel()

    def release(self, reservation: Reservation) -> None:
        """Give back a reservation that will not be submitted (a bad body, a refused key); idempotent."""
        if reservation.held:
            reservation.held = False
            self.reserved -= reservation.work
            self._wake()

    def admit(self, work: int, protocol: str, reservation: Reservation | None) -> float:
        """Account ``work`` as queued, in place of ``reservation`` when given (its room is the request's), else
        only if it fits; returns the request's deadline. Raises :class:`Overloaded` when it does not fit."""
        if reservation is not None and reservation.held:
            reservation.held = False
            self.reserved -= reservation.work
            self.queued_work += work
            self.metrics.mc_queued_work.set(self.queued_work)
            if work < reservation.work:
                self._wake()
            return reservation.deadline
        if self.would_refuse(work):
            raise self.refuse_full(protocol)
        self.add(work)
        return reservation.deadline if reservation is not None else self.deadline()

    def _hold(self, work: int, deadline: float) -> Reservation:
        self.reserved += work
        return Reservation(work, deadline)

    def _line_moved(self) -> None:
        self.metrics.mc_waiting.set(len(self._waiting))

    def _wake(self) -> None:
        """Hand freed room to the waiting line, in order: the first waiter that does not fit stops it."""
        moved = False
        while self._waiting:
            waiter = self._waiting[0]
            if not waiter.future.done():
                if not self._room_for_big(waiter.work):
                    break
                waiter.future.set_result(self._hold(waiter.work, waiter.deadline))
            self._waiting.popleft()
            moved = True
        if moved:
            self._line_moved()

    def _expire(self, waiter: _Waiter) -> None:
        if waiter in self._waiting and not waiter.future.done():
            self._waiting.remove(waiter)
            self._line_moved()
            waiter.future.set_exception(self.refuse_late(waiter.protocol))
