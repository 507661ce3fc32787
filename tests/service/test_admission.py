"""Admission control for MC work: under a flood of max-work requests the service refuses fast (503 overloaded with
Retry-After) instead of queueing without bound; `/predict` and validation errors never wait for MC work."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path

import httpx
import numpy as np
from prometheus_client import CollectorRegistry

from service import Settings, create_app
from service.engine import Engine


def test_a_flood_of_heavy_mc_requests_is_shed_fast_and_light_requests_do_not_wait(
    trained_artifact: Path, make_settings: Callable[..., Settings], test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    work = 64 * 400  # passes x images of one heavy request
    settings = make_settings(
        trained_artifact, max_concurrency=1, max_samples=400, max_queued_work=2 * work, queue_timeout_s=0.5
    )
    engine = Engine(settings)
    engine.load()
    registry = CollectorRegistry()
    app = create_app(settings, engine=engine, registry=registry)
    heavy = {"images": test_images[0][:64].tolist(), "n_samples": 400, "seed": 1}
    light = {"images": [test_images[0][0].tolist()]}

    async def timed(client: httpx.AsyncClient, path: str, body: object) -> tuple[httpx.Response, float]:
        start = time.perf_counter()
        response = await client.post(path, json=body)
        return response, time.perf_counter() - start

    async def main() -> tuple[list[tuple[httpx.Response, float]], list[tuple[httpx.Response, float]]]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://mcserve", timeout=60) as client:
            flood = [asyncio.ensure_future(timed(client, "/predict/uncertainty", heavy)) for _ in range(12)]
            await asyncio.sleep(0.05)
            others = [
                await timed(client, "/predict", light),
                await timed(client, "/predict/uncertainty", {"images": [[0] * 5]}),  # a 422: validation first
            ]
            return list(await asyncio.gather(*flood)), others

    flood, (predicted, invalid) = asyncio.run(main())
    statuses = [r.status_code for r, _ in flood]
    assert set(statuses) <= {200, 503} and statuses.count(200) >= 1 and statuses.count(503) >= 1, statuses
    for response, seconds in flood:
        if response.status_code == 503:
            assert response.headers["retry-after"] == "1"
            error = response.json()["error"]
            assert error["code"] == "overloaded" and "MCSERVE_" in error["message"], error
            assert seconds < 30
    full = [r for r, _ in flood if "MAX_QUEUED_WORK" in r.text]
    assert full and all(s < 5 for r, s in flood if "MAX_QUEUED_WORK" in r.text)  # refused on arrival
    assert predicted[0].status_code == 200 and invalid[0].status_code == 422
    shed = sum(
        registry.get_sample_value(
            "mcserve_shed_requests_total", {"endpoint": "predict_uncertainty", "reason": reason, "protocol": "rest"}
        )
        or 0
        for reason in ("queue_full", "queue_timeout")
    )
    assert shed == statuses.count(503)
    assert engine.settings.max_queued_work == 2 * work
    core = app.state.core
    assert core.mc.queued_work == 0  # nothing left accounted as queued


def test_admission_settings_are_validated() -> None:
    import pytest
    from pydantic import ValidationError

    with pytest.raises(ValidationError):
        Settings(queue_timeout_s=0)
    with pytest.raises(ValidationError):
        Settings(max_queued_work=0)
