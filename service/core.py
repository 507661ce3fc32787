"""The transport-agnostic core every protocol adapter calls: limits, batched inference and the metrics.

mcserve speaks three protocols: its own REST JSON (``service.routes`` and ``service.fastpath``), the
Open Inference Protocol over HTTP (``service.v2.rest``) and over gRPC (``service.v2.grpc_server``).
Each adapter only translates its wire format into pixel arrays and parameters and back; everything
between is here, so a request costs, counts and answers the same whichever way it came in:

* :meth:`Core.predict`: deterministic rows through the one :class:`~service.batching.MicroBatcher`,
  so concurrent requests of every protocol share forward passes;
* :meth:`Core.uncertainty`: Monte Carlo dropout through the one :class:`~service.mcbatch.MCScheduler`, so
  concurrent requests of every protocol share kernel calls, scheduled fairly by cost, under admission control (a
  bound on queued MC work and a queue deadline), each with its own seed (a seeded answer is the same through every
  protocol and in any company);
* :meth:`Core.mc_limit_problem`: the one statement of the MC work limits;
* the inference metrics, labelled by ``protocol``.

Nothing here knows about HTTP or gRPC; errors are :class:`~service.errors.ServiceError`, which each
adapter maps to its status codes.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import numpy as np

from .admission import Reservation
from .auth import Authenticator, AuthError, current_key
from .batching import BatchStats, MicroBatcher
from .engine import Engine, resolve_device
from .inference import MCResult
from .mcbatch import MCScheduler
from .mcoutcome import MCOutcome, summarise, to_cpu
from .mcprocess import KernelProcess, KernelProcessError, wanted
from .metrics import MCSummary, Metrics
from .sets import SetRequest, answer

log = logging.getLogger("service")
T = TypeVar("T")
SEED_LIMIT = 2**63  # seeds are 0 <= seed < 2**63 (torch.Generator.manual_seed takes any 64-bit value)


class Core:
    """Shared by every adapter of one application: the engine, the batcher and the metrics."""

    def __init__(self, engine: Engine, metrics: Metrics, auth: Authenticator | None = None) -> None:
        self.engine = engine
        self.metrics = metrics
        self.auth = auth or Authenticator(None)
        self.settings = s = engine.settings
        self._decoder: ThreadPoolExecutor | None = None
        self._kernel: KernelProcess | None = None
        self._kernel_starting = False
        self.mc = MCScheduler(
            lambda: engine.loaded.model,
            lambda: engine.loaded.device,
            metrics,
            max_rows=s.mc_chunk_size,
            max_calls=s.max_concurrency,
            process_calls=s.mc_process_calls,
            share=s.mc_batch,
            wait_s=s.mc_batch_wait_ms / 1000.0,
            max_queued_work=s.max_queued_work,
            queue_timeout_s=s.queue_timeout_s,
            max_waiting=s.max_waiting_requests,
            scores=engine.input_residuals_array,
        )
        self.mc.after_call = self._record_mc
        self.batcher = MicroBatcher(
            engine.predict_scored,
            max_images=s.batch_max_images,
            max_wait_s=s.batch_max_wait_ms / 1000.0,
            on_batch=self._on_batch,
        )

    @property
    def ready(self) -> bool:
        return self.engine.ready

    @property
    def kernel_state(self) -> str:
        """Where MC kernel calls run: ``process``, ``starting`` (its process is loading) or ``threads``."""
        if self.mc.process is not None:
            return "process"
        return "starting" if self._kernel is not None and self._kernel_starting else "threads"

    async def start_kernel_process(self, kernel: KernelProcess, manifest: dict[str, Any]) -> None:
        """Start ``kernel`` (seconds: it imports torch and loads the artifact) and hand it the MC calls once it has
        loaded the artifact this process serves; until then, and if it cannot start, they run in the threads."""
        self._kernel = kernel  # closed with the rest, started or not
        self._kernel_starting = True
        try:
            await asyncio.get_running_loop().run_in_executor(None, kernel.start)
            kernel.expect(manifest)
        except KernelProcessError as exc:
            log.error("%s; the MC kernel keeps running in this process's threads", exc.message)
            return
        finally:
            self._kernel_starting = False
        self.mc.use_process(kernel)
        log.info("MC kernel calls now run in process %s", kernel.pid)

    def kernel_process(self) -> KernelProcess | None:
        """The child process the CPU MC kernel runs in (not started), or None (``MCSERVE_MC_PROCESS``)."""
        s = self.settings
        if not wanted(s.mc_process, resolve_device(s.device).type, s.workers):
            return None
        native = "on" if self.engine.mc_code == "c" else "off"  # the child runs the code this process chose
        return KernelProcess(
            s.model_dir, s.torch_threads, s.keep_freed_buffers, self.metrics.kernel_restarts.inc, mc_native=native
        )

    def _on_batch(self, stats: BatchStats) -> None:
        self.metrics.record_batch(stats.requests, stats.images)

    def mc_limit_problem(self, n_samples: int, images: int, name: str = "n_samples") -> str | None:
        """Why ``n_samples`` passes over ``images`` images may not run, or None when they may (``name``: what the
        adapter calls the number of passes)."""
        s = self.settings
        if not 1 <= n_samples <= s.max_samples:
            return f"{n_samples} is out of range; it must be between 1 and {s.max_samples}"
        if n_samples * images > s.max_work:
            return (
                f"{name} x images = {n_samples} x {images} = {n_samples * images} exceeds the per-request work limit "
                f"{s.max_work}; send fewer images or fewer samples"
            )
        return None

    async def predict(self, x: np.ndarray, protocol: str) -> np.ndarray:
        """``(B, C + 1)`` float32 rows for pixels ``(B, 28, 28)``: probabilities, then the input check's score
        (NaN without a check), from a forward pass shared with whatever else is queued. Records the metrics."""
        return (await self.predict_timed(x, protocol))[0]

    async def predict_timed(
        self,
        x: np.ndarray,
        protocol: str,
        wait_s: float | None = None,
        inline: bool = False,
        idle_s: float | None = None,
    ) -> tuple[np.ndarray, float]:
        """:meth:`predict`, and the seconds the request waited for its forward pass to start.

        ``wait_s``: how long this request may wait for company (default ``MCSERVE_BATCH_MAX_WAIT_MS``); ``idle_s``:
        the wait ends sooner once no request arrived for that long (see :meth:`MicroBatcher.enqueue`).
        ``inline``: run the pass at once on the loop, without queueing: for a caller that knows no company is
        coming (a lone gRPC call), saving the suspension a queued request costs."""
        start = time.perf_counter()
        if inline:
            rows, queued_s = self.engine.predict_scored(x), 0.0
        else:
            rows, queued_s = await self.batcher.submit_timed(x, wait_s, idle_s)
        seconds = time.perf_counter() - start  # model time of the shared pass, plus time queued for it
        loaded = self.engine.loaded
        names, check = loaded.class_names, loaded.input_check
        labels = [names[i] for i in rows[:, :-1].argmax(1).tolist()]
        outliers: list[bool | None] = (
            [None] * len(labels) if check is None else (rows[:, -1] > check.threshold).tolist()
        )
        self.metrics.record_predict(labels, outliers, seconds, protocol)
        return rows, queued_s

    async def uncertainty(
        self,
        x: np.ndarray,
        n_samples: int,
        seed: int | None,
        protocol: str,
        encode: Callable[[MCOutcome], T],
        sets: SetRequest | None = None,
        reservation: Reservation | None = None,
    ) -> T:
        """MC dropout over pixels ``(B, 28, 28)`` (limits already checked), ``encode``-d where its last tile was
        computed (a worker thread, or the event loop when the kernel process computed it).

        The request shares kernel calls with whatever other MC requests are running (``service.mcbatch``); its
        answer does not depend on them. ``seed`` None draws a fresh one (echoed in the outcome). ``sets`` (checked
        with :func:`service.sets.set_problem`) asks for prediction sets and abstention. Admission control may
        refuse it with a 503 :class:`~service.admission.Overloaded` before any work; ``reservation`` is the room
        ``self.mc.reserve`` held for it while its body was read (the caller releases it if this raises). Records
        the metrics."""
        key = current_key.get()
        if key is not None:  # the caller's MC budget (n_samples x images), before any work is admitted
            try:
                self.auth.charge_mc(key, n_samples * len(x))
            except AuthError as exc:
                self.metrics.record_denied(exc.reason, protocol)
                from .authhttp import log_denial

                log_denial(exc, key.id, "predict_uncertainty", protocol)
                raise
        seed = self.engine.fresh_seed() if seed is None else seed
        engine = self.engine
        conformal = engine.loaded.conformal if sets is not None and sets.wanted else None

        def finish(
            result: MCResult, residuals: np.ndarray | None, seconds: float, queued_s: float
        ) -> tuple[MCSummary, float, T]:
            result = to_cpu(result)
            answered = None
            if conformal is not None and sets is not None:
                probs = {"mc": result.mean_probs.numpy()}
                if "eval" in (conformal.source, conformal.risk_source):
                    probs["eval"] = engine.predict_scored(x)[:, :-1]
                answered = answer(conformal, sets, probs)
            outcome = MCOutcome(result, residuals, n_samples, seed, seconds, queued_s, answered)
            summary = outcome.summary = summarise(engine, outcome)
            return summary, seconds, encode(outcome)

        _, _, encoded = await self.mc.submit(x, n_samples, seed, protocol, finish, reservation)
        return encoded  # its metrics were recorded with the rest of its kernel call's (``_record_mc``)

    def _record_mc(self, answered: list[tuple[str, Any]]) -> None:
        """The metrics of the MC requests one kernel call answered (each ``(protocol, finish's value)``)."""
        metrics = self.metrics
        metrics.record_uncertainties([(summary, seconds, protocol) for protocol, (summary, seconds, _) in answered])
        for protocol, (summary, _, _) in answered:
            if summary.set_sizes:
                metrics.record_prediction_sets(summary.set_sizes, protocol)
            if summary.abstained:
                metrics.record_abstentions(summary.abstained, protocol)

    async def off_loop(self, fn: Callable[..., T], *args: object) -> T:
        """``fn(*args)`` in the one decode thread: big request bodies are parsed there, one at a time, so the event
        loop keeps answering small requests (health, ``/predict``, errors) meanwhile."""
        if self._decoder is None:
            self._decoder = ThreadPoolExecutor(1, thread_name_prefix="mcserve-decode")
        return await asyncio.get_running_loop().run_in_executor(self._decoder, functools.partial(fn, *args))

    def close(self) -> None:
        """Stop the MC and decode worker threads (the lifespan's end)."""
        self.mc.close()
        if self._kernel is not None:
            self._kernel.close()  # idempotent; the scheduler closed it if it was in use
        if self._decoder is not None:
            self._decoder.shutdown(wait=False, cancel_futures=True)
            self._decoder = None
