"""Cross-request batching, fair scheduling and admission control for Monte Carlo work.

Every uncertainty request, whatever protocol it came by, becomes a *job* here. A job is cut into the
kernel's tiles (``service.mckernel``: one image's passes, at most ``PASS_BLOCK`` of them), and the
scheduler packs tiles of many jobs into kernel calls of at most ``MCSERVE_MC_CHUNK_SIZE`` rows, up to
``MCSERVE_MAX_CONCURRENCY`` at once: in worker threads, or in the kernel process (``service.mcprocess``), which
the event loop drives itself:

* **fair by cost**: each call first takes one tile from every waiting job (round robin, least recently
  served first), then fills what is left of its row budget with further tiles of the same jobs. A 1-image
  request therefore starts in the next call, however many 100,000-row requests are queued; a big request
  advances by a budget's worth of rows per call. A job is in at most one call at a time.
* **never delays a lone request**: a call starts as soon as a call slot is free; with
  ``MCSERVE_MC_BATCH_WAIT_MS`` > 0 an idle scheduler waits that long for company first.
* **bit-identical in any company**: tiles compute the same numbers whoever shares their call, so
  batching changes when an answer comes, never what it is. ``MCSERVE_MC_BATCH=false`` runs one job per call.
* **admission control** (``service.admission``): a job whose work (passes x images) would take the admitted,
  not yet computed work past ``MCSERVE_MAX_QUEUED_WORK`` is refused at once; one that has not started within
  ``MCSERVE_QUEUE_TIMEOUT_S`` of its arrival is refused then; a big body waits unread for room. All are a 503
  :class:`~service.admission.Overloaded`.

On CUDA the torch kernel runs each job whole in one call (one job per call): the tiled kernel is numpy.
Nothing here knows about HTTP or gRPC.
"""

from __future__ import annotations

import asyncio
import functools
import heapq
import itertools
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import numpy as np
import torch

from mcnet import DropoutMLP

from .admission import Admission, Reservation
from .mccall import Finish, Scores, run_here, run_in_process
from .mccall import Job as _Job
from .mckernel import PASS_BLOCK, blocks_for
from .mcprocess import KernelProcess
from .metrics import Metrics

LOCAL_ROWS = 4 * PASS_BLOCK  # with the kernel process: the largest call an idle scheduler runs in its own thread


class MCScheduler:
    """Runs every Monte Carlo request of one application. Make it inside the running event loop."""

    def __init__(
        self,
        model: Callable[[], DropoutMLP],
        device: Callable[[], torch.device],
        metrics: Metrics,
        *,
        max_rows: int,
        max_calls: int,
        share: bool,
        wait_s: float,
        max_queued_work: int,
        queue_timeout_s: float,
        max_waiting: int = 128,
        scores: Scores = lambda x: None,
        process_calls: int = 3,
    ) -> None:
        """``max_calls``: calls at once in the worker threads; ``process_calls``: calls at once in the kernel process
        (once it is in use). ``scores``: the input check's scores of a request's pixels
        (``Engine.input_residuals_array``), handed to its ``finish`` with its MC result; the kernel process computes
        the same with its own copy of the check."""
        self._model = model
        self._scores = scores
        self._device = device
        self.metrics = metrics
        self.max_rows = max_rows
        self.max_calls = max_calls
        self.process_calls = process_calls
        self.share = share
        self.wait_s = wait_s
        self.admission = Admission(
            metrics, max_queued_work=max_queued_work, queue_timeout_s=queue_timeout_s, max_waiting=max_waiting
        )
        self._jobs: list[_Job] = []  # admitted, not finished; least recently served first
        self._running = 0
        self._pending: asyncio.Handle | asyncio.TimerHandle | None = None
        self._executor: ThreadPoolExecutor | None = None
        self.process: KernelProcess | None = None  # MCSERVE_MC_PROCESS: the kernel runs there, not in the threads
        self._ids = itertools.count(1)
        self._forget: list[int] = []  # jobs dropped midway whose state the kernel process may free
        self._unstarted: dict[int, _Job] = {}  # admitted, not started: the deadline timer's to refuse
        self._deadlines: list[tuple[float, int]] = []  # heap of (deadline, job id); stale once a job started
        self._watch: asyncio.TimerHandle | None = None
        self._watch_at = 0.0
        # called on the event loop with (protocol, finish's value) of each request a kernel call answered, together:
        # the core records their metrics in one go (aggregated, far fewer updates than one request at a time)
        self.after_call: Callable[[list[tuple[str, Any]]], None] | None = None

    def use_process(self, process: KernelProcess) -> None:
        """Run every CPU kernel call in ``process`` (started) from now on; :meth:`close` closes it."""
        self.process = process

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
        if self.process is not None:
            self.process.close()

    @property
    def slots(self) -> int:
        """Kernel calls that may run at once: ``process_calls`` with the kernel process, else ``max_calls``."""
        return self.max_calls if self.process is None else self.process_calls

    @property
    def queued_work(self) -> int:
        """Admitted passes x images not yet dispatched to a kernel call."""
        return self.admission.queued_work

    async def submit(
        self,
        x: np.ndarray,
        n_samples: int,
        seed: int,
        protocol: str,
        finish: Finish,
        reservation: Reservation | None = None,
    ) -> Any:
        """``finish(result, compute_s, queued_s)`` of MC dropout over pixels ``x`` ``(B, 28, 28)``, once computed;
        raises :class:`Overloaded` when admission control refuses the request. ``reservation``: the room
        :meth:`reserve` held for it before its body was read (its deadline counts from then)."""
        work = n_samples * len(x)
        deadline = self.admission.admit(work, protocol, reservation)
        loop = asyncio.get_running_loop()
        whole = self._device().type != "cpu"
        tiles = 1 if whole else len(x) * blocks_for(n_samples)
        job = _Job(x, n_samples, seed, protocol, finish, loop.create_future(), time.perf_counter(), tiles, work, whole)
        job.id = next(self._ids)
        self._jobs.append(job)
        self._unstarted[job.id] = job
        heapq.heappush(self._deadlines, (deadline, job.id))
        if self._watch is None or deadline < self._watch_at:
            self._arm(loop, deadline)
        self._schedule(loop)
        try:
            return await job.future
        except asyncio.CancelledError:  # the caller went away (client disconnect, shutdown): stop its work
            job.cancelled = True
            if not job.busy:
                self._drop(job)
            raise
        finally:
            self._unstarted.pop(job.id, None)

    def _drop(self, job: _Job) -> None:
        if job in self._jobs:
            self._jobs.remove(job)
            if job.sent and job.outcome is None:  # dropped midway: the kernel process may free its state
                self._forget.append(job.id)
        if job.work:
            self._set_queued(-job.work)
            job.work = 0

    async def reserve(self, work: int, protocol: str) -> Reservation:
        """Room for a request of at most ``work`` whose body is not read yet (``Admission.reserve``): adapters call it
        before they read a big MC body, so that while the queue is full such bodies wait in the socket, unread."""
        return await self.admission.reserve(work, protocol)

    def release(self, reservation: Reservation) -> None:
        """Give back a reservation its request will not use (idempotent)."""
        self.admission.release(reservation)

    def _set_queued(self, delta: int) -> None:
        self.admission.add(delta)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._watch is not None:
            self._watch.cancel()
        self._watch_at, self._watch = when, loop.call_at(when, self._expire)

    def _expire(self) -> None:
        """The one deadline timer: refuse every job that has not started by its deadline, then wait for the next
        (one timer for all jobs: a timer per request cost the event loop more than its admission)."""
        self._watch = None
        loop = asyncio.get_running_loop()
        now, deadlines, unstarted = loop.time(), self._deadlines, self._unstarted
        while deadlines:
            deadline, job_id = deadlines[0]
            job = unstarted.get(job_id)
            if job is not None and deadline > now:
                self._arm(loop, deadline)
                return
            heapq.heappop(deadlines)
            if job is None:  # started, finished or gone since
                continue
            del unstarted[job_id]
            if job.future.done():
                continue
            self._drop(job)
            job.future.set_exception(self.admission.refuse_late(job.protocol))

    def _schedule(self, loop: asyncio.AbstractEventLoop) -> None:
        """Dispatch soon: on the loop's next iteration (requests arriving in this one join), or after the wait."""
        if self._pending is not None:
            return
        if self.wait_s > 0 and self._running == 0:
            self._pending = loop.call_later(self.wait_s, self._dispatch)
        else:
            self._pending = loop.call_soon(self._dispatch)

    def _dispatch(self) -> None:
        self._pending = None
        loop = asyncio.get_running_loop()
        while self._running < self.slots:
            picks = self._pick(self._budget())
            if not picks:
                return
            now = time.perf_counter()
            dispatched = 0
            for job, first, count in picks:
                job.busy = True
                job.next_tile = first + count
                if job.started is None:
                    job.started = now
                    self._unstarted.pop(job.id, None)
                rows = min(job.rows(first, count), job.work)
                job.work -= rows
                dispatched += rows
                self._jobs.remove(job)  # least recently served goes last
                self._jobs.append(job)
            self._set_queued(-dispatched)
            here = self._runs_here(picks)
            self._running += 1
            call: asyncio.Future[None]
            if here:
                call = loop.run_in_executor(self._worker(), self._call_here, picks)
            else:
                call = asyncio.ensure_future(self._call_process(picks))
            call.add_done_callback(functools.partial(self._done, picks))

    def _worker(self) -> ThreadPoolExecutor:
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.max_calls, thread_name_prefix="mcserve-mc")
        return self._executor

    def _runs_here(self, picks: list[tuple[_Job, int, int]]) -> bool:
        """Whether a call runs in this process's worker thread rather than in the kernel process: always without
        one; with one, only a small call (at most ``LOCAL_ROWS``) on an idle scheduler whose jobs all finish in it.
        An idle server then answers a lone request without the round trip through the child (waking an idle
        process on another core), and a busy one sends every call there; a job's partial sums live where its
        first tiles ran, so a job that needs more calls always goes to the child (except one begun in the threads
        before the child came up: :meth:`_call` keeps it here)."""
        if self.process is None:
            return True
        if self._running or any(job.sent for job, _, _ in picks):
            return False
        rows = sum(job.rows(first, count) for job, first, count in picks)
        return rows <= LOCAL_ROWS and all(first + count == job.tiles for job, first, count in picks)

    def _budget(self) -> int:
        """Rows for the next call: ``max_rows``; with the kernel process, the waiting work shared among the free
        call slots. One process computes its calls one after the other: a call that took every waiting request
        would leave the other slot empty, and this process idle while the child computes (and the child while this
        process answers). Smaller calls keep both busy: this one finishes a call while the child runs the next."""
        if self.process is None:
            return self.max_rows
        ready = [job for job in self._jobs if not job.busy and not job.cancelled]
        if len(ready) < 2:  # one job is in one call at a time: cutting it smaller only adds round trips
            return self.max_rows
        waiting = sum(job.work for job in ready)
        free = max(1, self.slots - self._running)
        return max(1, min(self.max_rows, -(-waiting // free)))

    def _pick(self, budget: int) -> list[tuple[_Job, int, int]]:
        """The next call's tiles: one from every waiting job in turn, then more of the same jobs while rows remain
        (at most ``budget`` rows, and at least one tile)."""
        picks: list[list[Any]] = []
        for job in self._jobs:
            if job.busy or job.cancelled or job.next_tile >= job.tiles:
                continue
            rows = job.tile_rows(job.next_tile)
            if picks and rows > budget:
                break
            picks.append([job, job.next_tile, 1])
            budget -= rows
            if not self.share:
                break
        for pick in picks:
            job, q = pick[0], pick[1] + 1
            while q < job.tiles and job.tile_rows(q) <= budget:
                budget -= job.tile_rows(q)
                q += 1
            pick[2] = q - pick[1]
        return [(p[0], p[1], p[2]) for p in picks]

    def _call_here(self, picks: list[tuple[_Job, int, int]]) -> None:
        """One kernel call in a worker thread (``service.mccall``)."""
        run_here(self._model(), self._device(), self._scores, picks)

    async def _call_process(self, picks: list[tuple[_Job, int, int]]) -> None:
        """One kernel call whose tiles are computed in the kernel process; the event loop waits for its reply."""
        assert self.process is not None
        # jobs whose first tiles ran in the threads before the kernel process came up keep their partial sums
        # here: they finish here (the child would start them afresh and answer with their first tiles missing)
        local = [pick for pick in picks if pick[0].request is not None]
        sent = [pick for pick in picks if pick[0].request is None]
        loop = asyncio.get_running_loop()
        here = loop.run_in_executor(self._worker(), self._call_here, local) if local else None
        if sent:
            forget, self._forget = self._forget, []
            await run_in_process(self.process, sent, forget)
        if here is not None:
            await here

    def _done(self, picks: list[tuple[_Job, int, int]], call: asyncio.Future[None]) -> None:
        self._running -= 1
        error = call.exception() if not call.cancelled() else asyncio.CancelledError()
        self.metrics.record_mc_batch(len(picks), sum(j.rows(f, c) for j, f, c in picks))
        answered: list[tuple[str, Any]] = []
        for job, _, _ in picks:
            job.busy = False
            if error is not None and job.outcome is None:
                job.outcome = (False, error)
            if job.outcome is not None or job.cancelled:
                self._drop(job)
                if job.outcome is not None and not job.future.done():
                    ok, value = job.outcome
                    if ok:
                        job.future.set_result(value)
                        answered.append((job.protocol, value))
                    else:
                        job.future.set_exception(value)
        if answered and self.after_call is not None:
            self.after_call(answered)
        if self._jobs:
            self._schedule(asyncio.get_running_loop())
