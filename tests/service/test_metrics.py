"""/metrics reflects the requests made: parsed with prometheus-client's own text parser."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
from fastapi.testclient import TestClient
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

from mcnet import read_manifest
from service import Settings, create_app
from service.metrics import PROTOCOLS, Metrics


def scrape(client: TestClient) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    r = client.get("/metrics")
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(r.text)
        for s in family.samples
    }


def value(samples: dict[tuple[str, frozenset[tuple[str, str]]], float], metric: str, /, **labels: str) -> float:
    return samples.get((metric, frozenset(labels.items())), 0.0)


def test_metrics_reflect_requests(
    trained_artifact: Path, make_settings: Callable[..., Settings], test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    registry = CollectorRegistry()
    app = create_app(make_settings(trained_artifact), registry=registry)
    images = [img.tolist() for img in test_images[0][:6]]
    with TestClient(app) as client:
        before = scrape(client)
        assert value(before, "mcserve_model_ready") == 1
        manifest = read_manifest(trained_artifact)
        info = dict(name=manifest["name"], version=manifest["version"], sha256=manifest["weights"]["sha256"])
        assert value(before, "mcserve_model_info", **info, device="cpu") == 1

        predicted = [client.post("/predict", json={"images": images[:3]}).json() for _ in range(2)]
        mc = client.post("/predict/uncertainty", json={"images": images, "n_samples": 40, "seed": 5}).json()
        assert client.post("/predict", json={"images": []}).status_code == 422
        assert client.get("/nope/123").status_code == 404
        after = scrape(client)

    route = "mcserve_http_requests_total"
    assert value(after, route, route="/predict", method="POST", status="200", protocol="rest") == 2
    assert value(after, route, route="/predict/uncertainty", method="POST", status="200", protocol="rest") == 1
    assert value(after, route, route="/predict", method="POST", status="422", protocol="rest") == 1
    assert (
        value(after, route, route="unmatched", method="GET", status="404", protocol="rest") == 1
    )  # never the raw path
    assert not any("/nope" in str(labels) for _, labels in after)
    assert value(after, "mcserve_http_request_duration_seconds_count", route="/predict", protocol="rest") == 3
    assert value(after, "mcserve_http_requests_in_flight") == 1  # the scrape itself
    inference = "mcserve_inference_duration_seconds_count"
    assert value(after, inference, endpoint="predict", protocol="rest") == 2
    assert value(after, inference, endpoint="predict_uncertainty", protocol="rest") == 1
    assert value(after, "mcserve_batch_size_images_sum", endpoint="predict", protocol="rest") == 6
    assert value(after, "mcserve_batch_size_images_sum", endpoint="predict_uncertainty", protocol="rest") == 6
    assert (
        value(after, "mcserve_mc_samples_sum", protocol="rest") == 40
        and value(after, "mcserve_mc_samples_count", protocol="rest") == 1
    )
    assert value(after, "mcserve_predictive_entropy_nats_count", protocol="rest") == 6
    mi_sum = sum(p["mutual_information"] for p in mc["predictions"])
    assert abs(value(after, "mcserve_mutual_information_nats_sum", protocol="rest") - mi_sum) < 1e-9
    uncertain = sum(p["uncertain"] for p in mc["predictions"])
    assert value(after, "mcserve_uncertain_predictions_total", protocol="rest") == uncertain
    by_class: dict[str, int] = {}
    for response in predicted:
        for p in response["predictions"]:
            by_class[p["label"]] = by_class.get(p["label"], 0) + 1
    for label, count in by_class.items():
        assert value(after, "mcserve_predictions_total", endpoint="predict", class_name=label, protocol="rest") == count


def test_input_outliers_are_counted_per_endpoint(
    trained_artifact: Path, make_settings: Callable[..., Settings], test_images: tuple[np.ndarray, np.ndarray]
) -> None:
    inverted = [(255 - img).tolist() for img in test_images[0][:3]]
    with TestClient(create_app(make_settings(trained_artifact), registry=CollectorRegistry())) as client:
        before = scrape(client)
        for endpoint in ("predict", "predict_uncertainty"):  # a 0 series from the start, so rate() has data
            for protocol in ("rest", "v2_http", "v2_grpc"):
                key = frozenset({("endpoint", endpoint), ("protocol", protocol)})
                assert before[("mcserve_input_outliers_total", key)] == 0
        assert client.post("/predict", json={"images": inverted}).status_code == 200
        mc = client.post("/predict/uncertainty", json={"images": inverted[:2], "n_samples": 5}).json()
        after = scrape(client)
    assert value(after, "mcserve_input_outliers_total", endpoint="predict", protocol="rest") == 3
    assert value(after, "mcserve_input_outliers_total", endpoint="predict_uncertainty", protocol="rest") == 2
    assert (
        value(after, "mcserve_uncertain_predictions_total", protocol="rest")
        == sum(p["uncertain"] for p in mc["predictions"])
        == 2
    )


def test_prediction_sets_and_abstentions_are_exported_per_protocol() -> None:
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    samples = exposition(metrics)
    for protocol in PROTOCOLS:  # a 0 series from the start, so the dashboard and the drift alert have data
        assert samples[("mcserve_prediction_set_size_count", frozenset({("protocol", protocol)}))] == 0
        assert samples[("mcserve_prediction_set_size_bucket", frozenset({("protocol", protocol), ("le", "+Inf")}))] == 0
        assert samples[("mcserve_abstained_total", frozenset({("protocol", protocol)}))] == 0

    metrics.record_prediction_sets([1, 1, 2, 0, 10, 3], "rest")
    metrics.record_prediction_sets([4], "v2_grpc")
    metrics.record_prediction_sets([], "v2_http")
    metrics.record_abstentions(3, "rest")
    metrics.record_abstentions(0, "v2_http")
    metrics.record_abstentions(2)  # rest by default
    samples = exposition(metrics)

    buckets = {
        dict(labels)["le"]: v
        for (name, labels), v in samples.items()
        if name == "mcserve_prediction_set_size_bucket" and ("protocol", "rest") in labels
    }
    assert buckets == {
        **{f"{k}.0": c for k, c in enumerate((1, 3, 4, 5, 5, 5, 5, 5, 5, 5, 6))},
        "+Inf": 6,
    }
    assert value(samples, "mcserve_prediction_set_size_sum", protocol="rest") == 17
    assert value(samples, "mcserve_prediction_set_size_count", protocol="rest") == 6
    assert value(samples, "mcserve_prediction_set_size_bucket", protocol="v2_grpc", le="3.0") == 0
    assert value(samples, "mcserve_prediction_set_size_bucket", protocol="v2_grpc", le="4.0") == 1
    assert value(samples, "mcserve_prediction_set_size_sum", protocol="v2_grpc") == 4
    assert value(samples, "mcserve_prediction_set_size_count", protocol="v2_http") == 0
    assert value(samples, "mcserve_abstained_total", protocol="rest") == 5
    assert value(samples, "mcserve_abstained_total", protocol="v2_http") == 0
    assert value(samples, "mcserve_abstained_total", protocol="v2_grpc") == 0


def exposition(metrics: Metrics) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    return {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(metrics.exposition().decode())
        for s in family.samples
    }
