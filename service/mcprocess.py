"""The Monte Carlo kernel in a child process, beside the event loop instead of under its lock.

Why: in one process the kernel's many small numpy and torch calls and the event loop's HTTP work take turns on
Python's GIL, so at c = 64 the process used about 1.1 of the machine's 2 cores with a third of the machine idle.
With ``MCSERVE_MC_PROCESS`` on, :class:`~service.mcbatch.MCScheduler` keeps every decision (admission, fairness,
which tiles share a call) and sends each call's tiles here; a child process runs the same ``service.mckernel``
code with the same torch thread count, so a seeded answer is bit-identical either way.

The protocol, pickled over a pipe, one reply per call and in the order of the calls:

* parent -> child: ``(calls, forget)``. ``calls``: ``(job id, pixels or None, n_samples, seed, first tile, tile
  count)`` per job in the call; the pixels come with a job's first call only. ``forget``: ids of jobs the parent
  dropped (their caller went away) whose prepared state the child may free. ``None`` asks the child to exit.
* child -> parent: ``(answers, seconds)``: per job of the call, in order, ``(job id, answer)`` with ``answer``
  ``None`` (more tiles to come), the :class:`MCResult` fields as float32 arrays (its last tile is done), or a
  ``str`` (why its kernel work failed); ``seconds``: the call's compute time.

When the child dies (killed, out of memory), the calls waiting for it fail with :class:`KernelProcessError`, the
jobs whose tiles lived in it fail too (their partial sums are gone), and the next call starts a new child.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import multiprocessing
import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import numpy as np

from .errors import ServiceError

log = logging.getLogger("service")

Call = tuple[int, np.ndarray | None, int, int, int, int]  # job id, pixels (first call only), T, seed, first, count
Answer = tuple[int, Any]  # job id, None | MCResult arrays | error text
START_TIMEOUT_S = 120.0  # spawning imports torch and loads the artifact: seconds on a small machine


def usable_cpus() -> float:
    """CPUs this process may use: its affinity, capped by a cgroup v2 quota (``cpu.max``) when there is one."""
    cpus = float(len(os.sched_getaffinity(0)))
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
    except (OSError, ValueError):
        return cpus
    return cpus if quota == "max" else min(cpus, int(quota) / int(period))


def wanted(setting: str, device_type: str, workers: int) -> bool:
    """Whether ``MCSERVE_MC_PROCESS`` (``setting``) runs the kernel in a child process for this worker."""
    if device_type != "cpu" or setting == "off":  # on CUDA the torch kernel runs each job in one call, in process
        return False
    return setting == "on" or usable_cpus() >= 2 * workers


class KernelProcessError(ServiceError):
    """503 ``kernel_restarted``: the kernel process could not start, or exited while this request needed it."""

    def __init__(self, message: str) -> None:
        super().__init__(503, "kernel_restarted", message, None)


def _child(conn: Any, model_dir: str, threads: int, keep_freed: bool, mc_native: str) -> None:
    """The child's main: load the artifact, say which it is, then answer calls until told to stop."""
    try:
        import torch

        from mcnet import load_artifact

        from . import mcnative

        mcnative.configure(mc_native)  # type: ignore[arg-type]  # "on" or "off": the parent's choice, never auto
        from .mcweights import weights_of
        from .memory import keep_freed_buffers

        if threads > 0:  # else torch's default, as in the parent (MCSERVE_TORCH_THREADS)
            torch.set_num_threads(threads)
        if keep_freed:
            keep_freed_buffers()
        model, manifest = load_artifact(model_dir, torch.device("cpu"))
        weights = weights_of(model)
    except Exception as exc:  # the parent raises it: startup fails fast with this message
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", manifest))
    jobs: dict[int, Any] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if message is None:
            return
        calls, forget = message
        for job_id in forget:
            jobs.pop(job_id, None)
        conn.send(serve_call(model, weights, jobs, calls))


def serve_call(model: Any, weights: Any, jobs: dict[int, Any], calls: list[Call]) -> tuple[list[Answer], float]:
    """One call's tiles, as ``MCScheduler`` computes them in a thread: prepare the new jobs together, run every
    tile in one ``run_tiles``, finish the jobs whose last tile this was. ``jobs``: id -> (Prepared, Accumulator)."""
    from .mckernel import Tile, prepare, prepare_many, run_tiles
    from .mcrequest import Accumulator

    start = time.perf_counter()
    failed: dict[int, str] = {}
    new = [(job_id, x, n, seed) for job_id, x, n, seed, _, _ in calls if x is not None]
    if new:
        prepared: list[Any]
        try:
            prepared = prepare_many(model, [(x, n, seed) for _, x, n, seed in new], weights)
        except Exception:  # one request's own fault: find it, fail it alone
            prepared = []
            for job_id, x, n, seed in new:
                try:
                    prepared.append(prepare(model, x, n, seed, weights))
                except Exception as exc:
                    prepared.append(None)
                    failed[job_id] = f"{type(exc).__name__}: {exc}"
        for (job_id, _, _, _), request in zip(new, prepared, strict=True):
            if request is not None:
                jobs[job_id] = (request, Accumulator(request, weights.classes))
    tiles: list[Tile] = []
    live: list[Call] = []
    for c in calls:
        job_id, first, count = c[0], c[4], c[5]
        if job_id in failed:
            continue
        if job_id not in jobs:
            failed[job_id] = "KernelProcessError: the kernel process has no state for this request"
            continue
        request = jobs[job_id][0]
        nb = request.blocks
        tiles.extend(Tile(request, q // nb, q % nb) for q in range(first, first + count))
        live.append(c)
    done: dict[int, Any] = {}
    if tiles:
        try:
            parts = run_tiles(model, tiles)
        except Exception as exc:
            for c in live:
                failed[c[0]] = f"{type(exc).__name__}: {exc}"
                jobs.pop(c[0], None)
            live = []
        offset = 0
        for job_id, _, _, _, first, count in live:
            request, acc = jobs[job_id]
            acc.put(first, parts, offset, offset + count)
            offset += count
            if first + count == request.images * request.blocks:
                del jobs[job_id]
                try:
                    r = acc.result()
                except Exception as exc:
                    failed[job_id] = f"{type(exc).__name__}: {exc}"
                    continue
                done[job_id] = (
                    r.mean_probs.numpy(), r.variance.numpy(), r.std.numpy(), r.predictive_entropy.numpy(),
                    r.expected_entropy.numpy(), r.mutual_information.numpy(), r.n_samples,
                )  # fmt: skip
    answers = [(c[0], failed.get(c[0], done.get(c[0]))) for c in calls]
    return answers, time.perf_counter() - start


class KernelProcess:
    """One child process running kernel calls; :meth:`call` is thread-safe and blocks (run it in a worker thread)."""

    def __init__(
        self,
        model_dir: Path,
        threads: int,
        keep_freed: bool,
        on_restart: Callable[[], None] | None = None,
        mc_native: str | None = None,
    ) -> None:
        """``mc_native``: ``on`` or ``off``, the MC kernel code the child must run; None: the one this process runs
        (``service.mcnative``), so that both compute the same numbers."""
        if mc_native is None:
            from . import mcnative

            mc_native = "on" if mcnative.choice().native else "off"
        self._args = (str(model_dir), threads, keep_freed, mc_native)
        self.manifest: dict[str, Any] | None = None  # what the first child loaded; later ones must load the same
        self._on_restart = on_restart
        self._lock = threading.Lock()  # one sender at a time; replies come in send order
        self._pending: collections.deque[Future[tuple[list[Answer], float]]] = collections.deque()
        self._proc: Any = None
        self._conn: Any = None
        self.generation = 0  # bumped by each start: a job's state lives in the child of one generation
        self.calls = 0  # calls sent (to every generation)
        self._closed = False

    @property
    def pid(self) -> int | None:
        return None if self._proc is None else self._proc.pid

    def start(self) -> None:
        """Spawn the child and wait until it has loaded the artifact; raises :class:`KernelProcessError` (why).
        Runs beside the parent's own loading; :meth:`expect` then checks that both loaded the same artifact."""
        with self._lock:
            self._start_locked()

    def expect(self, manifest: dict[str, Any]) -> None:
        """Raise :class:`KernelProcessError` unless the child loaded the artifact whose manifest is ``manifest``."""
        if self.manifest != manifest:
            self.close()
            raise KernelProcessError(
                f"the MC kernel process loaded another artifact from {self._args[0]} than the service did (it "
                "changed on disk during startup); start the service again"
            )

    def _start_locked(self) -> None:
        if self._closed:
            raise KernelProcessError("the service is shutting down")
        ctx = multiprocessing.get_context("spawn")  # never fork a process that has threads and torch state
        parent, child = ctx.Pipe()
        proc = ctx.Process(target=_child, args=(child, *self._args), name="mcserve-kernel", daemon=True)
        proc.start()
        child.close()
        if not parent.poll(START_TIMEOUT_S):
            proc.kill()
            raise KernelProcessError(f"the MC kernel process did not start within {START_TIMEOUT_S:.0f} s")
        try:
            status, detail = parent.recv()
        except (EOFError, OSError):
            proc.join(5)
            status, detail = "failed", f"it exited with code {proc.exitcode}"
        if status != "ready":
            proc.join(5)
            raise KernelProcessError(f"the MC kernel process could not start: {detail}")
        if self.manifest is None:
            self.manifest = detail
        elif detail != self.manifest:  # a restart found another artifact on disk: never serve a mix of two models
            parent.send(None)
            proc.join(5)
            raise KernelProcessError(
                f"the artifact in {self._args[0]} changed on disk since the service loaded it; restart the service"
            )
        self._proc, self._conn = proc, parent
        self.generation += 1
        threading.Thread(target=self._read, args=(parent, proc), name="mcserve-kernel-reader", daemon=True).start()
        log.info("MC kernel process %d started", proc.pid)

    def call(self, calls: list[Call], forget: list[int]) -> tuple[list[Answer], float, int]:
        """Send one call and wait for its answers: ``(answers, seconds, generation of the child that computed
        them)``; raises :class:`KernelProcessError` when the child dies first."""
        future: Future[tuple[list[Answer], float]] = Future()
        with self._lock:
            if self._closed:
                raise KernelProcessError("the service is shutting down")
            if self._conn is None:  # the last child died: start another (its jobs failed with it)
                self._start_locked()
                if self._on_restart is not None:
                    self._on_restart()
            conn, generation = self._conn, self.generation
            self._pending.append(future)
            self.calls += 1
            try:
                conn.send((calls, forget))
            except (OSError, ValueError) as exc:  # a dead pipe: the reader fails the other waiting calls
                self._pending.remove(future)
                if self._conn is conn:
                    self._conn = None
                raise KernelProcessError(f"the MC kernel process is gone ({exc}); retry") from exc
        answers, seconds = future.result()
        return answers, seconds, generation

    def _read(self, conn: Any, proc: Any) -> None:
        """The reader thread of one child: hands each reply to the oldest waiting call; fails them all at its end."""
        while True:
            try:
                reply = conn.recv()
            except (EOFError, OSError):
                break
            with self._lock:
                future = self._pending.popleft() if self._pending else None
            if future is not None:
                future.set_result(reply)
        with self._lock:  # first of all: no further call goes to this child
            if self._conn is conn:
                self._conn = None
            waiting = list(self._pending)
            self._pending.clear()
            closed = self._closed
        proc.join(1)
        if not closed:
            log.error("MC kernel process %d exited with code %s; the next call starts another", proc.pid, proc.exitcode)
        error = KernelProcessError(
            f"the MC kernel process exited (code {proc.exitcode}) during this request; it restarts: retry"
        )
        for future in waiting:
            future.set_exception(error)

    def close(self) -> None:
        """Ask the child to exit (the lifespan's end); kill it if it does not within a few seconds."""
        with self._lock:
            self._closed = True
            conn, proc = self._conn, self._proc
            self._conn = None
        if conn is not None:
            with contextlib.suppress(OSError, ValueError):
                conn.send(None)
        if proc is not None:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
