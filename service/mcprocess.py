"""The Monte Carlo kernel in a child process, beside the event loop instead of under its lock: the parent's side.

Why: in one process the kernel's many small numpy and torch calls and the event loop's HTTP work take turns on
Python's GIL, so at c = 64 the process used about 1.1 of the machine's 2 cores with a third of the machine idle.
With ``MCSERVE_MC_PROCESS`` on, :class:`~service.mcbatch.MCScheduler` keeps every decision (admission, fairness,
which tiles share a call) and sends each call's tiles here; a child process (``service.mcchild``) runs the same
``service.mckernel`` code with the same torch thread count, so a seeded answer is bit-identical either way.

The event loop drives the child itself: :meth:`KernelProcess.call` writes the call to the child's socket without
blocking and the loop reads the reply when it comes (``service.mclink``), so a call costs no thread switch in this
process (a worker thread that sent each call and a reader thread that received it took turns on the GIL with the
loop for every call, which cost more than the call's own work). The protocol, one reply per call and in the order of the
calls, ``multiprocessing.Connection``'s frames:

* parent -> child: ``(calls, forget)``. ``calls``: ``(job id, pixels or None, n_samples, seed, first tile, tile
  count)`` per job in the call; the pixels (raw float32 bytes) come with a job's first call only. ``forget``: ids
  of jobs the parent dropped (their caller went away) whose prepared state the child may free. ``None`` asks the
  child to exit.
* child -> parent: per job of the call, in order, ``(job id, answer)`` with ``answer`` ``None`` (more tiles to
  come), where its summaries and input-check scores lie in the call's one summaries array and one scores array
  (its last tile is done), or a ``str`` (why its kernel work failed); the call's compute time; the two arrays
  (``service.mcchild.answers_to_wire``).

When the child dies (killed, out of memory), the calls waiting for it fail with :class:`KernelProcessError`, the
jobs whose tiles lived in it fail too (their partial sums are gone), and the next call starts a new child.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import multiprocessing
import os
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .mcchild import Answer, Call, answers_from_wire, calls_to_wire, child_main
from .mclink import KernelProcessError as KernelProcessError  # re-exported: callers catch it from here
from .mclink import Link

log = logging.getLogger("service")

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


class KernelProcess:
    """One child process running kernel calls. :meth:`start` blocks (run it in a worker thread); :meth:`call` is a
    coroutine of the event loop: it writes the call to the child's socket and the loop reads the reply when it
    comes, so a call costs no thread switch on this side."""

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
        self._lock = threading.Lock()  # one start at a time
        self._proc: Any = None
        self._conn: Any = None
        self._link: Link | None = None  # the running loop's reader and writer of ``_conn``
        self._restarting: asyncio.Future[None] | None = None
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
        proc = ctx.Process(target=child_main, args=(child, *self._args), name="mcserve-kernel", daemon=True)
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
        log.info("MC kernel process %d started", proc.pid)

    async def call(self, calls: list[Call], forget: list[int]) -> tuple[list[Answer], float, int]:
        """Send one call and wait for its answers: ``(answers, seconds, generation of the child that computed
        them)``; raises :class:`KernelProcessError` when the child dies first (the next call starts another)."""
        if self._closed:
            raise KernelProcessError("the service is shutting down")
        loop = asyncio.get_running_loop()
        if self._conn is None:  # the last child died: start another (its jobs failed with it)
            await self._restart(loop)
        link = self._link
        if link is None or link.loop is not loop or link.conn is not self._conn:
            if link is not None:
                link.detach(KernelProcessError("the MC kernel process was handed to another event loop; retry"))
            link = self._link = Link(loop, self._conn, self._proc, self._lost)
        generation = self.generation
        self.calls += 1
        wire = await link.send((calls_to_wire(calls), forget))
        answers, seconds = answers_from_wire(wire)
        return answers, seconds, generation

    async def _restart(self, loop: asyncio.AbstractEventLoop) -> None:
        """Start the next child in a worker thread (seconds); the calls that arrive meanwhile wait for the same one."""
        if self._restarting is None:
            restarting = self._restarting = loop.run_in_executor(None, self._start_again)
            restarting.add_done_callback(lambda _: setattr(self, "_restarting", None))
        await asyncio.shield(self._restarting)

    def _start_again(self) -> None:
        self.start()
        if self._on_restart is not None:
            self._on_restart()

    def _lost(self, link: Link) -> None:
        """The child behind ``link`` is gone: no further call goes to it (the next starts another)."""
        if self._link is link:
            self._link = None
        if self._conn is link.conn:
            self._conn = None
        if not self._closed:
            log.error("MC kernel process %d exited; the next call starts another", link.proc.pid)

    def close(self) -> None:
        """Ask the child to exit (the lifespan's end); kill it if it does not within a few seconds."""
        with self._lock:
            self._closed = True
            conn, proc, link = self._conn, self._proc, self._link
            self._conn, self._link = None, None
        if link is not None:
            link.detach(KernelProcessError("the service is shutting down"))
        if conn is not None:
            with contextlib.suppress(OSError, ValueError):
                os.set_blocking(conn.fileno(), True)
                conn.send(None)
        if proc is not None:
            proc.join(5)
            if proc.is_alive():
                proc.kill()
                proc.join(5)
