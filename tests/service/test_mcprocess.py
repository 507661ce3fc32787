"""The MC kernel in a child process (MCSERVE_MC_PROCESS): the same numbers as in the threads, in any company and
split over any calls; a killed child fails only the requests it held (503) and is started again; startup fails fast
with the reason; the lifespan stops the child. Real child processes, spawned as the service spawns them."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry

from service import Settings, create_app, mcchild, mcprocess
from service.engine import Engine
from service.inference import MCResult
from service.mcbatch import MCScheduler
from service.mcchild import serve_call
from service.mckernel import prepare, run_tiles, tiles_of
from service.mcprocess import KernelProcess, KernelProcessError
from service.mcrequest import Accumulator, mc_tiled
from service.mcweights import weights_of
from service.metrics import Metrics

pytestmark = pytest.mark.slow  # real servers, child processes or training runs: `make test`, not test-fast


@pytest.fixture(scope="module")
def engine(trained_artifact: Path, make_settings: Callable[..., Settings]) -> Engine:
    engine = Engine(make_settings(trained_artifact))
    engine.load()
    return engine


@pytest.fixture(scope="module")
def process(trained_artifact: Path, engine: Engine) -> Iterator[KernelProcess]:
    restarts: list[float] = []
    kernel = KernelProcess(trained_artifact, torch.get_num_threads(), True, lambda: restarts.append(time.time()))
    kernel.start()
    kernel.expect(engine.loaded.manifest)
    kernel.restarts = restarts  # type: ignore[attr-defined]  # what the test of a kill reads
    yield kernel
    kernel.close()


def scheduler(engine: Engine, process: KernelProcess, **overrides: object) -> tuple[MCScheduler, CollectorRegistry]:
    registry = CollectorRegistry()
    options: dict[str, object] = {"max_rows": 8192, "max_calls": 2, "share": True, "wait_s": 0.0}
    options |= {"max_queued_work": 10**9, "queue_timeout_s": 60.0} | overrides
    mc = MCScheduler(lambda: engine.loaded.model, lambda: engine.loaded.device, Metrics(registry), **options)  # type: ignore[arg-type]
    mc.use_process(process)
    return mc, registry


def keep(result: MCResult, residuals: object, seconds: float, queued: float) -> MCResult:
    return result


def fields(r: MCResult) -> list[torch.Tensor]:
    return [r.mean_probs, r.variance, r.std, r.predictive_entropy, r.expected_entropy, r.mutual_information]


def same(a: MCResult, b: MCResult) -> bool:
    return all(torch.equal(x, y) for x, y in zip(fields(a), fields(b), strict=True))


def test_answers_from_the_kernel_process_are_bit_identical_to_each_request_alone_in_process(
    engine: Engine, process: KernelProcess, test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    pixels = test_images[0].astype(np.float32)
    jobs = [(pixels[k : k + 1 + k % 3], (1, 50, 100, 300)[k % 4], 2000 + k) for k in range(12)]
    mc, registry = scheduler(engine, process, max_rows=512)  # the 300-pass requests span several calls

    async def main() -> list[MCResult]:
        return await asyncio.gather(*(mc.submit(x, n, seed, "rest", keep) for x, n, seed in jobs))

    answers = asyncio.run(main())
    for (x, n, seed), result in zip(jobs, answers, strict=True):
        assert same(mc_tiled(engine.loaded.model, x, n, seed), result), (n, seed)
    calls = registry.get_sample_value("mcserve_mc_batch_coalesced_requests_count") or 0.0
    served = registry.get_sample_value("mcserve_mc_batch_coalesced_requests_sum") or 0.0
    assert served > calls  # calls were shared
    assert mc.queued_work == 0 and not mc._jobs


def test_an_idle_scheduler_runs_a_small_request_in_its_own_thread_and_a_busy_one_sends_calls_to_the_child(
    engine: Engine, process: KernelProcess, test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    pixels = test_images[0].astype(np.float32)
    mc, _ = scheduler(engine, process)
    before = process.calls
    alone = asyncio.run(mc.submit(pixels[:1], 100, 4, "rest", keep))  # 100 rows, nothing else running
    assert process.calls == before and same(alone, mc_tiled(engine.loaded.model, pixels[:1], 100, 4))

    async def main() -> list[MCResult]:
        return await asyncio.gather(*(mc.submit(pixels[k : k + 1], 100, 4, "rest", keep) for k in range(32)))

    answers = asyncio.run(main())
    assert process.calls > before  # while one call ran here, the next went to the child
    assert same(answers[0], alone)


def test_up_to_mc_process_calls_calls_wait_on_the_child_at_once_and_answers_stay_identical(
    engine: Engine, process: KernelProcess, test_images: tuple[np.ndarray, np.ndarray], monkeypatch: pytest.MonkeyPatch
) -> None:
    """``MCSERVE_MC_PROCESS_CALLS``: with the child in use, that many calls are in flight to it (it computes them one
    after another), never more; the threads' bound (``max_calls``) no longer applies."""
    pixels = test_images[0].astype(np.float32)
    mc, _ = scheduler(engine, process, max_calls=1, process_calls=3, max_rows=200)
    assert mc.slots == 3
    flying, peak = 0, 0
    call = process.call

    async def counted(*args: Any) -> Any:
        nonlocal flying, peak
        flying += 1
        peak = max(peak, flying)
        try:
            return await call(*args)
        finally:
            flying -= 1

    monkeypatch.setattr(process, "call", counted)
    jobs = [(pixels[k : k + 1], 100, 300 + k) for k in range(24)]

    async def main() -> list[MCResult]:
        return await asyncio.gather(*(mc.submit(x, n, seed, "rest", keep) for x, n, seed in jobs))

    answers = asyncio.run(main())
    assert peak == 3
    for (x, n, seed), result in zip(jobs, answers, strict=True):
        assert same(mc_tiled(engine.loaded.model, x, n, seed), result)
    mc.process = None
    assert mc.slots == 1


def test_requests_begun_in_the_threads_finish_there_when_the_kernel_process_comes_up_midway(
    engine: Engine, process: KernelProcess, test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    """The process starts after the service: requests whose first tiles already ran in its threads keep their
    partial sums there (sent to the child they would come back with those tiles missing), new ones go to it."""
    pixels = test_images[0].astype(np.float32)
    mc, _ = scheduler(engine, process, max_rows=512)
    mc.process = None  # as before ``Core.start_kernel_process`` hands it over
    early = [(pixels[8 * k : 8 * k + 8], 2000, 50 + k) for k in range(2)]  # 16,000 rows each: many calls
    late = [(pixels[16 + k : 17 + k], 1000, 70 + k) for k in range(4)]
    before = process.calls

    async def main() -> list[MCResult]:
        first = [asyncio.ensure_future(mc.submit(x, n, seed, "rest", keep)) for x, n, seed in early]
        while len(mc._jobs) < 2 or not all(job.acc is not None and job.next_tile > 1 for job in mc._jobs):  # begun here
            await asyncio.sleep(0.001)
        assert not any(task.done() for task in first)
        mc.use_process(process)
        rest = [mc.submit(x, n, seed, "rest", keep) for x, n, seed in late]
        return list(await asyncio.gather(*first, *rest))

    answers = asyncio.run(main())
    for (x, n, seed), result in zip(early + late, answers, strict=True):
        assert same(mc_tiled(engine.loaded.model, x, n, seed), result), (n, seed)
    assert process.calls > before  # the later requests ran in the child
    assert mc.queued_work == 0 and not mc._jobs


def test_an_accumulator_refuses_to_summarise_a_request_with_tiles_missing(
    engine: Engine, test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    model = engine.loaded.model
    request = prepare(model, test_images[0][:2].astype(np.float32), 300, 5)  # 2 images x 3 blocks
    acc = Accumulator(request, weights_of(model).classes)
    acc.put(2, run_tiles(model, tiles_of(request)[2:]), 0, 4)  # tiles 2..5, never 0 and 1
    with pytest.raises(RuntimeError, match="4 of its 6 tiles"):
        acc.result()


def test_the_childs_call_handler_finishes_a_request_split_over_calls_and_forgets_on_request(
    engine: Engine, test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    """``serve_call``, the child's handler, run here: tile by tile, a 300-pass 2-image request (3 tiles per image)."""
    model = engine.loaded.model
    weights = weights_of(model)
    x = test_images[0][:2].astype(np.float32)
    jobs: dict[int, object] = {}
    first, _ = serve_call(model, weights, jobs, [(7, x, 300, 11, 0, 4)])
    assert first == [(7, None)] and 7 in jobs  # more tiles to come: its state stays
    (answer,), _ = serve_call(model, weights, jobs, [(7, None, 300, 11, 4, 2)])
    assert answer[0] == 7 and not jobs  # done: its state is gone
    alone = mc_tiled(model, x, 300, 11)
    assert same(MCResult.packed(answer[1][0], 2, answer[1][2]), alone) and answer[1][1] is None  # no scores asked for
    missing, _ = serve_call(model, weights, jobs, [(8, None, 100, 1, 0, 1)])
    assert "no state" in missing[0][1]  # a job the child never saw (or lost) fails, never computes garbage


def test_calls_and_answers_cross_the_wire_unchanged(engine: Engine, test_images: tuple[np.ndarray, np.ndarray]) -> None:
    """The child's wire form (raw pixel bytes; a call's summaries and scores in one array each) loses nothing: the
    same pixels arrive, and each request's summaries and input-check scores come back bit for bit."""
    model = engine.loaded.model
    kernel = engine.loaded.kernel
    assert kernel is not None and engine.loaded.input_check is not None
    x = test_images[0][:5].astype(np.float32)
    calls = [(1, x[:2], 100, 3, 0, 2), (2, x[2:3], 300, 4, 0, 1), (3, x[3:], 50, 5, 0, 2)]
    sent = mcchild.calls_from_wire(mcchild.calls_to_wire(calls))
    assert all(np.array_equal(a[1], b[1]) and a[0] == b[0] and a[2:] == b[2:] for a, b in zip(calls, sent, strict=True))
    jobs: dict[int, object] = {}
    answers, seconds = serve_call(model, weights_of(model), jobs, sent, kernel.scores)
    assert answers[1] == (2, None)  # 300 passes: more tiles to come
    back, back_seconds = mcchild.answers_from_wire(mcchild.answers_to_wire(answers, seconds))
    assert back_seconds == seconds and [a[0] for a in back] == [1, 2, 3] and back[1][1] is None
    for (job_id, answer), (_, original) in zip(back, answers, strict=True):
        if original is not None:
            assert np.array_equal(answer[0], original[0]) and np.array_equal(answer[1], original[1])
            assert answer[2] == original[2] and len(answer[1]) == 2 and job_id in (1, 3)
    assert np.array_equal(back[0][1][1], kernel.scores(x[:2]))


def test_a_killed_kernel_process_fails_what_it_held_with_503_and_the_next_request_starts_another(
    engine: Engine, process: KernelProcess, test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    pixels = test_images[0].astype(np.float32)
    mc, _ = scheduler(engine, process, max_rows=256, max_calls=1)
    before, pid = process.generation, process.pid
    assert pid is not None

    async def main() -> tuple[BaseException | MCResult, MCResult]:
        big = asyncio.ensure_future(mc.submit(pixels[:256], 1000, 3, "rest", keep))  # 1,000 calls of 256 rows
        while not (mc._jobs and mc._jobs[0].sent):  # until the child holds some of its partial sums
            await asyncio.sleep(0.005)
        os.kill(pid, signal.SIGKILL)
        try:
            lost: BaseException | MCResult = await big
        except KernelProcessError as exc:
            lost = exc
        return lost, await mc.submit(pixels[:8], 300, 5, "rest", keep)  # 8 calls: the child computes it

    lost, after = asyncio.run(main())
    assert isinstance(lost, KernelProcessError) and lost.status == 503 and "retry" in lost.message
    assert same(after, mc_tiled(engine.loaded.model, pixels[:8], 300, 5))  # the new child answers exactly
    assert process.generation == before + 1 and process.pid != pid
    assert len(process.restarts) == 1  # type: ignore[attr-defined]


def test_the_kernel_process_must_load_the_artifact_the_service_loaded(process: KernelProcess, tmp_path: Path) -> None:
    other = KernelProcess(tmp_path / "missing", 1, False)
    with pytest.raises(KernelProcessError, match=r"could not start: .*missing"):
        other.start()
    assert process.manifest is not None
    stale = KernelProcess(tmp_path, 1, False)
    stale.manifest = process.manifest
    with pytest.raises(KernelProcessError, match="another artifact"):
        stale.expect({**process.manifest, "version": "not-this-one"})


def test_auto_runs_the_kernel_process_with_two_cpus_per_worker_and_never_on_cuda(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert mcprocess.usable_cpus() >= 1  # this machine's, from its affinity and cgroup
    monkeypatch.setattr(mcprocess, "usable_cpus", lambda: 2.0)
    assert mcprocess.wanted("auto", "cpu", 1) and not mcprocess.wanted("auto", "cpu", 2)
    assert mcprocess.wanted("on", "cpu", 2) and not mcprocess.wanted("off", "cpu", 1)
    assert not mcprocess.wanted("on", "cuda", 1)
    monkeypatch.setattr(mcprocess, "usable_cpus", lambda: 1.0)
    assert not mcprocess.wanted("auto", "cpu", 1)


def test_the_app_answers_the_same_with_the_kernel_process_and_stops_it_at_shutdown(
    trained_artifact: Path, make_settings: Callable[..., Settings], test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    body = {"images": test_images[0][:3].tolist(), "n_samples": 300, "seed": 9}  # 900 rows: over LOCAL_ROWS
    answers = {}
    for mode in ("on", "off"):
        with TestClient(create_app(make_settings(trained_artifact, mc_process=mode))) as client:
            core = client.app.state.core  # type: ignore[attr-defined]
            deadline = time.monotonic() + 60
            while mode == "on" and core.mc.process is None and time.monotonic() < deadline:
                time.sleep(0.05)  # it starts in the background; meanwhile the threads answer
            kernel = core.mc.process
            assert (kernel is not None) == (mode == "on")
            assert client.get("/readyz").json()["mc_kernel"] == ("process" if mode == "on" else "threads")
            calls = kernel.calls if kernel is not None else 0
            response = client.post("/predict/uncertainty", json=body)
            assert response.status_code == 200, response.text
            assert kernel is None or kernel.calls == calls + 1  # computed in the child
            answers[mode] = response.json()["predictions"]
            if kernel is not None:
                metrics = client.get("/metrics").text
                assert "mcserve_mc_kernel_restarts_total 0.0" in metrics
                pid = kernel.pid
        if mode == "on":
            with pytest.raises(ProcessLookupError):  # the lifespan's end stopped the child
                os.kill(pid, 0)
    assert answers["on"] == answers["off"]
