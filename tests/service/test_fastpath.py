"""The /predict fast path: same payloads as the FastAPI route, dynamic batching under concurrency, metrics."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import orjson
import pytest
import torch
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from service import Settings, create_app
from service.engine import Engine


@pytest.fixture(scope="module")
def engine(trained_artifact: Path, make_settings: Callable[..., Settings]) -> Engine:
    e = Engine(make_settings(trained_artifact))
    e.load()
    return e


@pytest.fixture(scope="module")
def both(trained_artifact: Path, make_settings: Callable[..., Settings]) -> Iterator[tuple[TestClient, TestClient]]:
    """(fast path on, fast path off) in-process clients of the same artifact."""
    fast = create_app(make_settings(trained_artifact))
    slow = create_app(make_settings(trained_artifact, fast_path=False))
    with TestClient(fast) as f, TestClient(slow) as s:
        yield f, s


def _bodies(images: np.ndarray) -> list[dict[str, Any]]:
    return [
        {"images": [images[0].tolist()]},  # 28x28 nested integers
        {"images": [images[1].reshape(-1).tolist()]},  # flat 784
        {"images": [(images[2] * 0.5 + 0.25).reshape(-1).tolist()]},  # floats
        {"images": [images[3].tolist(), images[4].reshape(-1).tolist(), (images[5] / 2).tolist()]},  # mixed batch
        {"images": [np.full((28, 28), 255).tolist(), np.zeros(784, dtype=int).tolist()]},  # range ends
    ]


def test_fast_path_payloads_equal_the_routes(
    both: tuple[TestClient, TestClient], test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    fast, slow = both
    for body in _bodies(test_images[0]):
        a, b = fast.post("/predict", json=body), slow.post("/predict", json=body)
        assert a.status_code == b.status_code == 200
        assert a.headers["content-type"] == "application/json"
        assert a.json() == b.json()  # alone in its batch: the same forward pass, bit for bit


def test_png_and_charset_requests_fall_through_to_the_route(
    both: tuple[TestClient, TestClient],
    test_images: tuple[np.ndarray, np.ndarray],
    png_b64: Callable[..., str],
) -> None:
    fast, slow = both
    png = {"images_png": [png_b64(test_images[0][0])]}
    assert fast.post("/predict", json=png).json() == slow.post("/predict", json=png).json()
    body = b'{"images": [' + str(test_images[0][1].reshape(-1).tolist()).encode() + b"]}"
    headers = {"content-type": "application/json; charset=utf-8"}
    a, b = fast.post("/predict", content=body, headers=headers), slow.post("/predict", content=body, headers=headers)
    assert a.status_code == 200 and a.json() == b.json()


def _metric(client: TestClient, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return 0.0


def test_concurrent_requests_are_batched_and_each_gets_its_own_prediction(
    engine: Engine, test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    images, _ = test_images
    registry = CollectorRegistry()
    app = create_app(engine.settings, engine=engine, registry=registry)
    n = 48

    async def main() -> list[httpx.Response]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://mcserve") as client:
            return await asyncio.gather(
                *(client.post("/predict", json={"images": [images[i].tolist()]}) for i in range(n))
            )

    responses = asyncio.run(main())
    x = torch.from_numpy(images[:n].astype(np.float32))
    alone = np.stack([engine.predict(x[i : i + 1])[0].numpy() for i in range(n)])  # one image per pass
    residuals = engine.input_residuals(x)
    assert residuals is not None
    for i, r in enumerate(responses):
        assert r.status_code == 200
        (pred,) = r.json()["predictions"]
        np.testing.assert_allclose(pred["probabilities"], alone[i], rtol=0, atol=1e-6)
        assert pred["class_id"] == int(np.argmax(alone[i]))
        # the batch's input-check column reaches the request it belongs to
        assert abs(pred["input_residual"] - residuals[i]) <= 1e-6 * max(1.0, residuals[i])
    batches = registry.get_sample_value("mcserve_batch_coalesced_requests_count")
    served = registry.get_sample_value("mcserve_batch_coalesced_requests_sum")
    assert served == n
    assert batches is not None and batches < n  # at least one pass served several requests
    requests = registry.get_sample_value(
        "mcserve_http_requests_total", {"route": "/predict", "method": "POST", "status": "200", "protocol": "rest"}
    )
    assert requests == n
    assert (
        registry.get_sample_value("mcserve_batch_size_images_count", {"endpoint": "predict", "protocol": "rest"}) == n
    )


def test_fast_path_requests_are_counted_like_route_requests(
    both: tuple[TestClient, TestClient], test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    fast, slow = both
    body = {"images": [test_images[0][7].tolist()] * 3}
    for client in (fast, slow):
        label = slow.post("/predict", json=body).json()["predictions"][0]["label"]
        before = _metric(client, "mcserve_predictions_total", endpoint="predict", class_name=label, protocol="rest")
        before_http = _metric(
            client, "mcserve_http_requests_total", method="POST", route="/predict", status="200", protocol="rest"
        )
        assert client.post("/predict", json=body).json()["predictions"][0]["label"] == label
        assert (
            _metric(client, "mcserve_predictions_total", endpoint="predict", class_name=label, protocol="rest")
            == before + 3
        )
        after_http = _metric(
            client, "mcserve_http_requests_total", method="POST", route="/predict", status="200", protocol="rest"
        )
        assert after_http == before_http + 1


def test_large_bodies_are_served_by_the_route_with_the_same_payload(
    both: tuple[TestClient, TestClient], test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    from service.fastpath import FAST_PATH_MAX_BODY_BYTES

    fast, slow = both
    body = {"images": [image.tolist() for image in test_images[0][:40]]}
    assert len(orjson.dumps(body)) > FAST_PATH_MAX_BODY_BYTES
    batches = _metric(fast, "mcserve_batch_coalesced_requests_count")
    a, b = fast.post("/predict", json=body), slow.post("/predict", json=body)
    assert a.status_code == 200 and a.json() == b.json()
    # served by the route, which shares the one batcher of service.core with the fast path
    assert _metric(fast, "mcserve_batch_coalesced_requests_count") == batches + 1


def test_a_chunked_body_past_the_fast_paths_limit_reaches_the_route_whole(
    both: tuple[TestClient, TestClient], test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    """No Content-Length: the fast path reads up to its limit, then hands what it read plus the rest to the route."""
    from service.fastpath import FAST_PATH_MAX_BODY_BYTES

    fast, slow = both
    data = orjson.dumps({"images": [image.tolist() for image in test_images[0][:100]]})
    assert len(data) > 2 * FAST_PATH_MAX_BODY_BYTES

    def chunks() -> Iterator[bytes]:
        for i in range(0, len(data), 4096):
            yield data[i : i + 4096]

    headers = {"content-type": "application/json"}
    a = fast.post("/predict", content=chunks(), headers=headers)
    assert "content-length" not in a.request.headers  # really sent in chunks
    b = slow.post("/predict", content=data, headers=headers)
    assert a.status_code == 200 and a.json() == b.json() and len(a.json()["predictions"]) == 100


def test_uncertainty_fast_path_payloads_equal_the_routes(
    both: tuple[TestClient, TestClient], test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    fast, slow = both
    for i, body in enumerate(_bodies(test_images[0])):
        body = {**body, "seed": 1000 + i, **({"n_samples": 7 * (i + 1)} if i % 2 else {})}  # default T when absent
        a, b = fast.post("/predict/uncertainty", json=body), slow.post("/predict/uncertainty", json=body)
        assert a.status_code == b.status_code == 200
        assert a.headers["content-type"] == "application/json"
        assert a.json() == b.json()  # the same seed and masks, the same kernel: identical summaries
    seedless = {"images": [test_images[0][0].tolist()], "n_samples": 20}
    a, b = (
        fast.post("/predict/uncertainty", json=seedless).json(),
        slow.post("/predict/uncertainty", json=seedless).json(),
    )
    assert a.keys() == b.keys() and a["seed"] != b["seed"]  # a fresh seed per request, reported back
    assert fast.post("/predict/uncertainty", json={**seedless, "seed": a["seed"]}).json() == a  # and reproducible


def test_uncertainty_fast_path_is_counted_like_the_route(
    both: tuple[TestClient, TestClient], test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    fast, slow = both
    body = {"images": [test_images[0][3].tolist()] * 2, "n_samples": 10, "seed": 5}
    for client in (fast, slow):
        label = client.post("/predict/uncertainty", json=body).json()["predictions"][0]["label"]
        labels = {"endpoint": "predict_uncertainty", "class_name": label, "protocol": "rest"}
        route = {"method": "POST", "route": "/predict/uncertainty", "status": "200", "protocol": "rest"}
        before, before_http = (
            _metric(client, "mcserve_predictions_total", **labels),
            _metric(client, "mcserve_http_requests_total", **route),
        )
        client.post("/predict/uncertainty", json=body)
        assert _metric(client, "mcserve_predictions_total", **labels) == before + 2
        assert _metric(client, "mcserve_http_requests_total", **route) == before_http + 1


def test_uncertainty_requests_the_fast_path_must_not_answer_fall_through(
    both: tuple[TestClient, TestClient], test_images: tuple[np.ndarray, np.ndarray], png_b64: Callable[..., str]
) -> None:
    """Irregular but valid requests (null seed, PNG) get the route's answer; invalid ones its error."""
    fast, slow = both
    image = test_images[0][0].tolist()
    for body in (
        {"images": [image], "n_samples": None, "seed": 3},  # null: the route applies the default
        {"images_png": [png_b64(test_images[0][0])], "seed": 3},
        {"images": [image], "n_samples": 10**6, "seed": 3},  # over the per-request work limit: 422
        {"images": [image], "seed": 3, "extra": 1},
    ):
        a, b = fast.post("/predict/uncertainty", json=body), slow.post("/predict/uncertainty", json=body)
        assert (a.status_code, a.json()) == (b.status_code, b.json())


def test_well_formed_requests_are_answered_by_the_fast_path_itself(
    engine: Engine, test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    """Behind the middleware sits an app that fails: every answer here comes from the fast path."""
    from service.core import Core
    from service.fastpath import FastPredictPath
    from service.metrics import Metrics

    async def no_route(scope: Any, receive: Any, send: Any) -> None:
        raise AssertionError(f"fell through to the route: {scope['path']}")

    path = FastPredictPath(no_route, Core(engine, Metrics(CollectorRegistry())))
    image = test_images[0][0].tolist()

    async def main() -> list[httpx.Response]:
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=path), base_url="http://mcserve") as client:
            return [
                await client.post("/predict", json={"images": [image]}),
                await client.post("/predict/uncertainty", json={"images": [image]}),
                await client.post("/predict/uncertainty", json={"images": [image, image], "n_samples": 9, "seed": 4}),
            ]

    plain, default, seeded = asyncio.run(main())
    assert plain.status_code == default.status_code == seeded.status_code == 200
    assert default.json()["n_samples"] == engine.settings.default_samples
    assert seeded.json()["seed"] == 4 and len(seeded.json()["predictions"]) == 2
