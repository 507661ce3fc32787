"""MCScheduler: concurrent MC requests share kernel calls, fairly by cost, with answers that do not depend on the
company they keep; admission control refuses overload; a request whose caller went away stops costing work."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from prometheus_client import CollectorRegistry

from mcnet import DropoutMLP
from service import Settings
from service.admission import Overloaded
from service.engine import Engine
from service.inference import MCResult
from service.mcbatch import MCScheduler
from service.mcrequest import mc_tiled
from service.metrics import Metrics


@pytest.fixture(scope="module")
def engine(trained_artifact: Path, make_settings: Callable[..., Settings]) -> Engine:
    engine = Engine(make_settings(trained_artifact))
    engine.load()
    return engine


def scheduler(engine: Engine, **overrides: Any) -> tuple[MCScheduler, CollectorRegistry]:
    registry = CollectorRegistry()
    options: dict[str, Any] = {
        "max_rows": 8192,
        "max_calls": 1,
        "share": True,
        "wait_s": 0.0,
        "max_queued_work": 10**9,
        "queue_timeout_s": 60.0,
    }
    options.update(overrides)
    mc = MCScheduler(lambda: engine.loaded.model, lambda: engine.loaded.device, Metrics(registry), **options)
    return mc, registry


def keep(result: MCResult, residuals: object, seconds: float, queued: float) -> tuple[MCResult, float]:
    return result, time.perf_counter()


def fields(r: MCResult) -> list[torch.Tensor]:
    return [r.mean_probs, r.variance, r.std, r.predictive_entropy, r.expected_entropy, r.mutual_information]


def coalesced(registry: CollectorRegistry) -> tuple[float, float]:
    """(kernel calls, requests served by them) from the coalescing histogram."""
    count = registry.get_sample_value("mcserve_mc_batch_coalesced_requests_count") or 0.0
    total = registry.get_sample_value("mcserve_mc_batch_coalesced_requests_sum") or 0.0
    return count, total


def test_concurrent_requests_share_calls_and_get_their_answer_alone(
    engine: Engine, test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    model: DropoutMLP = engine.loaded.model
    pixels = test_images[0].astype(np.float32)
    jobs = [(pixels[k : k + 1 + k % 3], (1, 50, 100, 300)[k % 4], 1000 + k) for k in range(12)]
    mc, registry = scheduler(engine, max_calls=2)

    async def main() -> list[Any]:
        return await asyncio.gather(*(mc.submit(x, n, seed, "rest", keep) for x, n, seed in jobs))

    answers = asyncio.run(main())
    mc.close()
    for (x, n, seed), (result, _) in zip(jobs, answers, strict=True):
        alone = mc_tiled(model, x, n, seed)
        assert all(torch.equal(a, b) for a, b in zip(fields(alone), fields(result), strict=True)), (n, seed)
    calls, requests = coalesced(registry)
    assert requests > calls  # some call served more than one request
    assert mc.queued_work == 0 and registry.get_sample_value("mcserve_mc_queued_work") == 0


def test_a_small_request_is_not_stuck_behind_big_ones(
    engine: Engine, test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    pixels = test_images[0].astype(np.float32)
    mc, _ = scheduler(engine, max_rows=1024)

    async def main() -> tuple[float, list[float]]:
        heavy = [asyncio.ensure_future(mc.submit(pixels[:64], 400, k, "rest", keep)) for k in range(2)]
        await asyncio.sleep(0)  # the heavy requests are queued first
        _, small_done = await mc.submit(pixels[100:101], 100, 7, "rest", keep)
        return small_done, [done for _, done in await asyncio.gather(*heavy)]

    small_done, heavy_done = asyncio.run(main())
    mc.close()
    assert small_done < min(heavy_done)  # 2 x 25,600 rows were queued ahead of its 100


def test_without_sharing_every_call_serves_one_request(
    engine: Engine, test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    pixels = test_images[0].astype(np.float32)
    mc, registry = scheduler(engine, share=False)

    async def main() -> list[Any]:
        return await asyncio.gather(*(mc.submit(pixels[k : k + 1], 100, k, "rest", keep) for k in range(6)))

    answers = asyncio.run(main())
    mc.close()
    calls, requests = coalesced(registry)
    assert calls == requests == 6
    alone = mc_tiled(engine.loaded.model, pixels[2:3], 100, 2)
    assert torch.equal(answers[2][0].mean_probs, alone.mean_probs)


def test_the_queue_bound_refuses_at_once_and_the_deadline_refuses_a_request_that_cannot_start(
    engine: Engine, test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    pixels = test_images[0].astype(np.float32)
    work = 64 * 400
    mc, registry = scheduler(engine, max_rows=10**6, max_queued_work=work + 100, queue_timeout_s=0.005)

    async def attempt(x: np.ndarray, n: int, protocol: str) -> Any:
        try:
            return await mc.submit(x, n, 2, protocol, keep)
        except Overloaded as exc:
            return exc

    async def main() -> list[Any]:
        running = asyncio.ensure_future(attempt(pixels[:128], 400, "rest"))  # one call of 51,200 rows: > 5 ms
        await asyncio.sleep(0)
        queued = asyncio.ensure_future(attempt(pixels[:64], 400, "rest"))  # waits: the only thread is busy
        await asyncio.sleep(0)
        full = await attempt(pixels[:2], 100, "v2_http")  # 25,600 queued + 200 > the bound: refused at once
        late = await attempt(pixels[:1], 10, "v2_grpc")  # fits, but cannot start within 5 ms
        return [await running, await queued, full, late]

    running, queued, full, late = asyncio.run(main())
    mc.close()
    assert running[0].mean_probs.shape == (128, 10)
    assert isinstance(full, Overloaded) and "MCSERVE_MAX_QUEUED_WORK" in full.message and full.status == 503
    for refused in (queued, late):
        assert isinstance(refused, Overloaded) and "MCSERVE_QUEUE_TIMEOUT_S" in refused.message
    shed = "mcserve_shed_requests_total"
    expected = (("queue_full", "v2_http", 1), ("queue_timeout", "v2_grpc", 1), ("queue_timeout", "rest", 1))
    for reason, protocol, count in expected:
        labels = {"endpoint": "predict_uncertainty", "reason": reason, "protocol": protocol}
        assert registry.get_sample_value(shed, labels) == count, labels
    assert mc.queued_work == 0


def test_a_cancelled_request_stops_costing_work(engine: Engine, test_images: tuple[np.ndarray, np.ndarray]) -> None:
    pixels = test_images[0].astype(np.float32)
    mc, registry = scheduler(engine, max_rows=256)

    async def main() -> float:
        task = asyncio.ensure_future(mc.submit(pixels[:256], 2000, 1, "rest", keep))  # 2,000 calls of 256 rows
        await asyncio.sleep(0.02)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        await asyncio.sleep(0.1)  # a call in flight may finish
        calls, _ = coalesced(registry)
        return calls

    calls = asyncio.run(main())
    mc.close()
    assert calls < 400  # far fewer than the 2,000 calls the whole request needs
    assert mc.queued_work == 0 and not mc._jobs
