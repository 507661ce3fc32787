"""One Monte Carlo kernel call over the tiles of some jobs: in a worker thread, or in the kernel process.

``service.mcbatch.MCScheduler`` decides which tiles of which jobs make a call and when it runs; the functions here
compute it and leave each job's ``outcome`` (``(True, finish(...))`` once its last tile is done, or ``(False,
exception)``). :func:`run_here` runs in the scheduler's worker threads; :func:`run_in_process` is a coroutine of the
event loop, which writes the call to the kernel process and finishes the jobs when the reply comes. They know
nothing of HTTP or gRPC.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch

from mcnet import DropoutMLP

from .inference import MCResult, mc_predict_torch
from .mckernel import PASS_BLOCK, Prepared, Tile, blocks_for, prepare, prepare_many, run_tiles
from .mcprocess import KernelProcess, KernelProcessError
from .mcrequest import Accumulator
from .mcweights import Weights, weights_of

# (result, input-check scores or None, seconds computing, seconds queued) -> what the caller gets; runs in the
# worker thread that computed the last tile, or on the event loop when the kernel process did
Finish = Callable[[MCResult, np.ndarray | None, float, float], Any]
Scores = Callable[[np.ndarray], np.ndarray | None]  # the input check's scores of pixels (B, 28, 28); None: no check


@dataclass(eq=False)
class Job:
    x: np.ndarray
    n_samples: int
    seed: int
    protocol: str
    finish: Finish
    future: asyncio.Future[Any]
    submitted: float  # perf_counter
    tiles: int  # images x blocks; 1 when ``whole``
    work: int  # passes x images not yet dispatched
    whole: bool = False  # CUDA: the torch kernel computes the whole job in one call
    cancelled: bool = False  # its caller went away: no further tiles are computed
    next_tile: int = 0
    busy: bool = False
    started: float | None = None  # perf_counter of the first call that took a tile
    compute_s: float = 0.0
    request: Prepared | None = None
    acc: Accumulator | None = None
    outcome: tuple[bool, Any] | None = field(default=None)  # (ok, value or exception), set in the worker
    id: int = 0  # its name in the kernel process
    sent: int = 0  # the kernel process generation that holds its state (0: none yet)

    def tile_rows(self, q: int) -> int:
        n = self.n_samples
        if self.whole:
            return n * len(self.x)
        if n <= PASS_BLOCK:  # one tile per image, of all its passes
            return n
        return min(PASS_BLOCK, n - (q % blocks_for(n)) * PASS_BLOCK)

    def rows(self, first: int, count: int) -> int:
        if count == 1:
            return self.tile_rows(first)
        if self.n_samples <= PASS_BLOCK and not self.whole:
            return count * self.n_samples
        return sum(self.tile_rows(q) for q in range(first, first + count))


Pick = tuple[Job, int, int]  # a job, its first tile in the call, how many of its tiles


def run_here(model: DropoutMLP, device: torch.device, scores: Scores, picks: list[Pick]) -> None:
    """One kernel call in this thread; finished jobs are finished here too (``finish`` encodes)."""
    start = time.perf_counter()
    if picks[0][0].whole:  # the torch kernel, the whole job at once (one job per call)
        job = picks[0][0]
        gen = torch.Generator(device=device).manual_seed(job.seed)
        complete(job, lambda: mc_predict_torch(model, torch.from_numpy(job.x), job.n_samples, gen), scores, start)
        return
    tiles: list[Tile] = []
    live: list[Pick] = []
    weights = weights_of(model)  # once per call: checking the cached layouts costs tens of microseconds
    _prepare([job for job, _, _ in picks if job.request is None], model, weights)
    for job, first, count in picks:
        if job.request is None:  # its preparation failed (``outcome`` says why)
            continue
        nb = job.request.blocks
        tiles.extend(Tile(job.request, q // nb, q % nb) for q in range(first, first + count))
        live.append((job, first, count))
    if not tiles:
        return
    try:
        parts = run_tiles(model, tiles)
    except Exception as exc:
        for job, _, _ in live:
            job.outcome = (False, exc)
        return
    seconds = time.perf_counter() - start
    offset = 0
    for job, first, count in live:
        assert job.acc is not None
        job.acc.put(first, parts, offset, offset + count)
        offset += count
        job.compute_s += seconds
        if first + count == job.tiles:
            complete(job, job.acc.result, scores, None)


async def run_in_process(process: KernelProcess, picks: list[Pick], forget: list[int]) -> None:
    """:func:`run_here` through the kernel process, on the event loop: the same tiles, computed there, which also
    scores the finished jobs' pixels; they are finished here. ``forget``: jobs dropped midway whose state the child
    may free. When the child dies, the jobs whose partial sums it held fail (503, retry); the jobs this call
    started go again to the next child (nothing of theirs was lost)."""
    todo = list(picks)
    for attempt in range(2):
        calls, sent = [], []
        for job, first, count in todo:
            if job.sent and job.sent != process.generation:  # its partial sums died with an earlier child
                job.outcome = (False, KernelProcessError("the MC kernel process restarted during this request; retry"))
                continue
            calls.append((job.id, None if job.sent else job.x, job.n_samples, job.seed, first, count))
            sent.append((job, first, count))
        if not calls:
            return
        try:
            answers, seconds, generation = await process.call(calls, forget if attempt == 0 else [])
        except KernelProcessError as exc:
            todo = [pick for pick in sent if not pick[0].sent]
            for job, _, _ in sent:
                if job.sent or attempt:
                    job.outcome = (False, exc)
            continue
        except Exception as exc:
            for job, _, _ in sent:
                job.outcome = (False, exc)
            return
        for (job, _, _), (job_id, answer) in zip(sent, answers, strict=True):
            assert job_id == job.id
            job.sent = generation
            job.compute_s += seconds
            if isinstance(answer, str):
                lost = answer.startswith("KernelProcessError")
                error = KernelProcessError(f"{answer}; retry") if lost else RuntimeError(f"MC kernel: {answer}")
                job.outcome = (False, error)
            elif answer is not None:
                buffer, residuals, n_samples = answer
                result = functools.partial(MCResult.packed, buffer, len(job.x), n_samples)
                complete(job, result, functools.partial(_given, residuals), None)
        return


def _given(residuals: np.ndarray | None, x: np.ndarray) -> np.ndarray | None:
    """The input-check scores the kernel process computed for a job's pixels ``x``."""
    return residuals


def _prepare(jobs: list[Job], model: DropoutMLP, weights: Weights) -> None:
    """fc1 for the jobs starting in this call, together (``prepare_many``: the same numbers as each alone)."""
    if not jobs:
        return
    try:
        prepared = prepare_many(model, [(job.x, job.n_samples, job.seed) for job in jobs], weights)
    except Exception:  # one request's own fault (e.g. its pixels): find it, fail it alone
        for job in jobs:
            try:
                job.request = prepare(model, job.x, job.n_samples, job.seed, weights)
                job.acc = Accumulator(job.request, weights.classes)
            except Exception as exc:
                job.outcome = (False, exc)
        return
    for job, request in zip(jobs, prepared, strict=True):
        job.request = request
        job.acc = Accumulator(request, weights.classes)


def complete(job: Job, result: Callable[[], MCResult], scores: Scores, start: float | None) -> None:
    """``job.outcome`` from its result and the input check's ``scores`` of its pixels: ``finish``-ed (the caller's
    encoding), or the exception any of them raised."""
    try:
        mc = result()
        residuals = scores(job.x)
        if start is not None:
            job.compute_s += time.perf_counter() - start
        queued = (job.started or job.submitted) - job.submitted
        job.outcome = (True, job.finish(mc, residuals, job.compute_s, queued))
    except Exception as exc:
        job.outcome = (False, exc)
