"""MicroBatcher: concurrent submits share forward passes, within the limits, without delaying a lone request."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from service.batching import BatchStats, MicroBatcher


class Recorder:
    """A forward function (rows times two) that records the batch sizes it was called with."""

    def __init__(self, fail: bool = False) -> None:
        self.calls: list[int] = []
        self.fail = fail

    def __call__(self, x: np.ndarray) -> np.ndarray:
        self.calls.append(int(x.shape[0]))
        if self.fail:
            raise RuntimeError("forward failed")
        return x * 2


def rows(n: int, start: float) -> np.ndarray:
    return np.arange(start, start + n, dtype=np.float32)[:, None]


def test_concurrent_requests_share_one_forward_and_each_gets_its_own_rows() -> None:
    forward = Recorder()
    stats: list[BatchStats] = []
    batcher = MicroBatcher(forward, max_images=256, on_batch=stats.append)

    async def main() -> list[np.ndarray]:
        return await asyncio.gather(*(batcher.submit(rows(k + 1, 100.0 * k)) for k in range(5)))

    outs = asyncio.run(main())
    assert forward.calls == [1 + 2 + 3 + 4 + 5]
    for k, out in enumerate(outs):
        assert np.array_equal(out, rows(k + 1, 100.0 * k) * 2)
    assert stats[0].requests == 5 and stats[0].images == 15 and stats[0].seconds >= 0
    assert batcher.queued_requests == 0


def test_max_images_splits_batches_in_arrival_order_and_an_oversized_request_runs_alone() -> None:
    forward = Recorder()
    batcher = MicroBatcher(forward, max_images=4)

    async def main() -> list[np.ndarray]:
        sizes = [3, 1, 2, 6, 1]
        return await asyncio.gather(*(batcher.submit(rows(n, 10.0 * i)) for i, n in enumerate(sizes)))

    outs = asyncio.run(main())
    assert forward.calls == [4, 2, 6, 1]  # [3+1] full; [2] then the 6 that would overflow; [6] alone; [1]
    assert [int(o.shape[0]) for o in outs] == [3, 1, 2, 6, 1]
    assert np.array_equal(outs[3], rows(6, 30.0) * 2)


def test_max_images_one_turns_coalescing_off() -> None:
    forward = Recorder()
    batcher = MicroBatcher(forward, max_images=1)

    async def main() -> None:
        await asyncio.gather(*(batcher.submit(rows(1, float(i))) for i in range(6)))

    asyncio.run(main())
    assert forward.calls == [1] * 6


def test_a_lone_request_is_not_delayed_by_default_but_waits_for_company_with_max_wait() -> None:
    async def lone(max_wait_s: float) -> float:
        batcher = MicroBatcher(Recorder(), max_images=256, max_wait_s=max_wait_s)
        loop = asyncio.get_running_loop()
        start = loop.time()
        await batcher.submit(rows(1, 0.0))
        return loop.time() - start

    assert asyncio.run(lone(0.0)) < 0.05
    assert asyncio.run(lone(0.2)) >= 0.19


def test_max_wait_gathers_requests_that_arrive_within_the_window() -> None:
    forward = Recorder()
    batcher = MicroBatcher(forward, max_images=256, max_wait_s=0.3)

    async def late(delay: float, n: int) -> np.ndarray:
        await asyncio.sleep(delay)
        return await batcher.submit(rows(n, 0.0))

    async def main() -> None:
        await asyncio.gather(late(0.0, 1), late(0.05, 2), late(0.1, 3))

    asyncio.run(main())
    assert forward.calls == [6]


def test_a_failing_forward_fails_every_request_of_the_batch_and_the_batcher_recovers() -> None:
    forward = Recorder(fail=True)
    batcher = MicroBatcher(forward, max_images=256)

    async def main() -> list[object]:
        return await asyncio.gather(*(batcher.submit(rows(1, 0.0)) for _ in range(3)), return_exceptions=True)

    results = asyncio.run(main())
    assert all(isinstance(r, RuntimeError) for r in results)
    forward.fail = False
    assert np.array_equal(asyncio.run(batcher.submit(rows(2, 1.0))), rows(2, 1.0) * 2)


def test_a_cancelled_request_is_dropped_before_the_forward_pass() -> None:
    forward = Recorder()
    batcher = MicroBatcher(forward, max_images=256, max_wait_s=0.2)

    async def main() -> np.ndarray:
        gone = asyncio.ensure_future(batcher.submit(rows(5, 0.0)))
        await asyncio.sleep(0.01)
        gone.cancel()  # the client disconnected while queued
        return await batcher.submit(rows(1, 7.0))

    out = asyncio.run(main())
    assert forward.calls == [1]
    assert np.array_equal(out, rows(1, 7.0) * 2)


@pytest.mark.parametrize("kwargs", [{"max_images": 0}, {"max_images": 4, "max_wait_s": -1.0}])
def test_bad_limits_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        MicroBatcher(Recorder(), **kwargs)  # type: ignore[arg-type]


def test_a_request_that_may_not_wait_is_not_held_back_by_one_that_may() -> None:
    """Per-request waits (gRPC waits for company, REST does not): the pending flush runs at the earliest deadline."""
    forward = Recorder()
    batcher = MicroBatcher(forward, max_images=256)

    async def main() -> tuple[float, float, float]:
        loop = asyncio.get_running_loop()
        start = loop.time()
        waiting = asyncio.ensure_future(batcher.submit_timed(rows(1, 0.0), max_wait_s=5.0))
        await asyncio.sleep(0)  # the first request is queued with a 5 s deadline
        (out, queued_s), _ = await asyncio.gather(waiting, batcher.submit_timed(rows(1, 10.0), max_wait_s=0.0))
        return loop.time() - start, queued_s, float(out[0, 0])

    elapsed, queued_s, first = asyncio.run(main())
    assert elapsed < 1.0 and queued_s < 1.0  # flushed on the next iteration, not after 5 s
    assert forward.calls == [2] and first == 0.0  # and both shared that pass


def test_a_waiting_request_gathers_company_until_its_deadline() -> None:
    forward = Recorder()
    batcher = MicroBatcher(forward, max_images=256)

    async def main() -> list[float]:
        first = asyncio.ensure_future(batcher.submit_timed(rows(1, 0.0), max_wait_s=0.05))
        later = []
        for k in range(3):  # arrivals spread over 30 ms join the pass the first one waits for
            await asyncio.sleep(0.01)
            later.append(asyncio.ensure_future(batcher.submit_timed(rows(1, k + 1.0), max_wait_s=0.05)))
        results = await asyncio.gather(first, *later)
        return [queued for _, queued in results]

    queued = asyncio.run(main())
    assert forward.calls == [4]
    assert 0.03 <= queued[0] < 1.0  # the first waited for the others; the wait is reported
