"""Prometheus metrics on a caller-owned registry (``service.httpmetrics`` records the HTTP ones of the routes).

With one worker (the default) every metric lives in this process's registry. With
``MCSERVE_WORKERS`` > 1, ``python -m service`` switches prometheus-client to its
multiprocess mode before the workers import it: every value is kept in a per-process
file under ``multiprocess_dir`` and :meth:`Metrics.exposition` sums the files, so a scrape
that reaches any worker sees the whole server. Gauges say how they combine (in flight:
the sum over live workers; ready: the minimum, so 1 only when every live worker is ready).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, multiprocess

from .promfast import inc, observe, observe_many

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
ROW_BUCKETS = (1, 10, 100, 250, 500, 1000, 2000, 4000, 8192, 16384, 65536)
SAMPLE_BUCKETS = (1, 5, 10, 25, 50, 100, 250, 500, 1000, 2500, 5000)
ENTROPY_BUCKETS = (0.01, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 2.5)
MI_BUCKETS = (0.001, 0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0)
SET_SIZE_BUCKETS = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10)  # classes in a conformal prediction set (10 classes at most)
PROTOCOLS = ("rest", "v2_http", "v2_grpc")  # the ``protocol`` label's values: mcserve's own REST, v2 HTTP, v2 gRPC
DENIAL_REASONS = ("missing", "invalid", "scope", "requests", "mc_passes")  # service.auth.AuthError.reason
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


@dataclass(slots=True)
class MCSummary:
    """What the metrics record of one Monte Carlo request, per image (plain lists: no torch, no payload shape)."""

    labels: Sequence[str]
    outliers: Sequence[bool | None]
    predictive_entropy: Sequence[float]
    mutual_information: Sequence[float]
    uncertain: Sequence[bool]
    n_samples: int
    set_sizes: Sequence[int] = ()  # conformal prediction-set sizes, when the request asked for a coverage
    abstained: int = 0  # images abstained on, when the request asked for a max_risk
    class_ids: Sequence[int] = ()  # each image's predicted class (the encoders' too)


class Metrics:
    """All of the service's metrics, registered on ``registry`` (never the global default)."""

    def __init__(self, registry: CollectorRegistry, multiprocess_dir: Path | None = None) -> None:
        self.registry = registry
        self.multiprocess_dir = multiprocess_dir
        self.requests = Counter(
            "mcserve_http_requests",
            "Requests by protocol (rest, v2_http, v2_grpc), route template (a gRPC method's path), method and status "
            "code (gRPC codes as their HTTP equivalents)",
            ["route", "method", "status", "protocol"], registry=registry,
        )  # fmt: skip
        self.request_latency = Histogram(
            "mcserve_http_request_duration_seconds", "Request latency by route template and protocol",
            ["route", "protocol"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.in_flight = Gauge(
            "mcserve_http_requests_in_flight", "HTTP requests being served", registry=registry,
            multiprocess_mode="livesum",
        )  # fmt: skip
        self.inference_latency = Histogram(
            "mcserve_inference_duration_seconds", "Model time (decode excluded) per request by endpoint and protocol",
            ["endpoint", "protocol"], buckets=LATENCY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.batch_size = Histogram(
            "mcserve_batch_size_images", "Images per inference request by endpoint and protocol",
            ["endpoint", "protocol"], buckets=BATCH_BUCKETS, registry=registry,
        )  # fmt: skip
        self.mc_samples = Histogram(
            "mcserve_mc_samples", "Monte Carlo passes per uncertainty request by protocol",
            ["protocol"], buckets=SAMPLE_BUCKETS, registry=registry,
        )  # fmt: skip
        self.predictive_entropy = Histogram(
            "mcserve_predictive_entropy_nats", "Predictive entropy per image (uncertainty endpoint) by protocol",
            ["protocol"], buckets=ENTROPY_BUCKETS, registry=registry,
        )  # fmt: skip
        self.mutual_information = Histogram(
            "mcserve_mutual_information_nats", "Mutual information per image (uncertainty endpoint) by protocol",
            ["protocol"], buckets=MI_BUCKETS, registry=registry,
        )  # fmt: skip
        self.predictions = Counter(
            "mcserve_predictions", "Predicted images by endpoint, predicted class and protocol",
            ["endpoint", "class_name", "protocol"], registry=registry,
        )  # fmt: skip
        self.uncertain = Counter(
            "mcserve_uncertain_predictions",
            "Images flagged uncertain (MI above threshold or input outlier) by protocol",
            ["protocol"],
            registry=registry,
        )
        self.input_outliers = Counter(
            "mcserve_input_outliers",
            "Images the input check flagged as unlike the training images, by endpoint and protocol",
            ["endpoint", "protocol"], registry=registry,
        )  # fmt: skip
        for endpoint in ("predict", "predict_uncertainty"):  # exported as 0 from the start: rates need a series
            for protocol in PROTOCOLS:
                self.input_outliers.labels(endpoint, protocol)
        self.shed = Counter(
            "mcserve_shed_requests", "Requests refused with 503 overloaded (MC admission control), by reason",
            ["endpoint", "reason", "protocol"], registry=registry,
        )  # fmt: skip
        for reason in ("queue_full", "queue_timeout"):  # exported as 0 from the start: rates need a series
            for protocol in PROTOCOLS:
                self.shed.labels("predict_uncertainty", reason, protocol)
        self.prediction_set_size = Histogram(
            "mcserve_prediction_set_size",
            "Classes in each image's conformal prediction set (requests that ask for a coverage), by protocol",
            ["protocol"], buckets=SET_SIZE_BUCKETS, registry=registry,
        )  # fmt: skip
        self.abstained = Counter(
            "mcserve_abstained",
            "Images the service abstained on (requests with max_risk): confidence below the threshold that "
            "guarantees max_risk",
            ["protocol"], registry=registry,
        )  # fmt: skip
        for protocol in PROTOCOLS:  # exported from the start: the dashboard and the drift alert need a series
            self.prediction_set_size.labels(protocol)
            self.abstained.labels(protocol)
        self.key_requests = Counter(
            "mcserve_key_requests", "Requests let in by an API key, by key id (never the token) and protocol",
            ["key", "protocol"], registry=registry,
        )  # fmt: skip
        self.denied = Counter(
            "mcserve_auth_denied", "Requests refused by API-key checks, by reason (missing, invalid, scope, requests, "
            "mc_passes) and protocol", ["reason", "protocol"], registry=registry,
        )  # fmt: skip
        for reason in DENIAL_REASONS:
            for protocol in PROTOCOLS:
                self.denied.labels(reason, protocol)
        self.model_info = Gauge(
            "mcserve_model_info", "Loaded model (value 1) with its identity as labels",
            ["name", "version", "sha256", "device"], registry=registry, multiprocess_mode="livemax",
        )  # fmt: skip
        self.coalesced_requests = Histogram(
            "mcserve_batch_coalesced_requests", "Requests served by one /predict forward pass (dynamic batching)",
            buckets=BATCH_BUCKETS, registry=registry,
        )  # fmt: skip
        self.coalesced_images = Histogram(
            "mcserve_batch_coalesced_images", "Images in one /predict forward pass (dynamic batching)",
            buckets=BATCH_BUCKETS, registry=registry,
        )  # fmt: skip
        self.mc_coalesced_requests = Histogram(
            "mcserve_mc_batch_coalesced_requests",
            "Uncertainty requests sharing one Monte Carlo kernel call (cross-request MC batching)",
            buckets=BATCH_BUCKETS, registry=registry,
        )  # fmt: skip
        self.mc_coalesced_rows = Histogram(
            "mcserve_mc_batch_coalesced_rows", "Rows (passes x images) in one Monte Carlo kernel call",
            buckets=ROW_BUCKETS, registry=registry,
        )  # fmt: skip
        self.mc_queued_work = Gauge(
            "mcserve_mc_queued_work", "Monte Carlo work (passes x images) admitted and not yet computed",
            registry=registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self.mc_waiting = Gauge(
            "mcserve_mc_waiting_requests",
            "Big Monte Carlo requests waiting, bodies unread, for room in the queue (MCSERVE_MAX_WAITING_REQUESTS)",
            registry=registry, multiprocess_mode="livesum",
        )  # fmt: skip
        self.kernel_restarts = Counter(
            "mcserve_mc_kernel_restarts", "MC kernel processes started again after one exited (MCSERVE_MC_PROCESS)",
            registry=registry,
        )  # fmt: skip
        self.ready = Gauge(
            "mcserve_model_ready", "1 when the model is loaded and warmed up", registry=registry,
            multiprocess_mode="livemin",
        )  # fmt: skip
        self._children: dict[tuple[int, tuple[str, ...]], Any] = {}

    def child(self, metric: Any, *values: str) -> Any:
        """``metric.labels(*values)``, cached: every label value here comes from a small fixed set
        (route templates, endpoints, class names, status codes), so the cache stays small, and the
        hot path skips prometheus-client's per-call label validation."""
        key = (id(metric), values)
        found = self._children.get(key)
        if found is None:
            found = self._children[key] = metric.labels(*values)
        return found

    def exposition(self) -> bytes:
        """The text format of every metric: this process's, or with several workers the sum over all of them."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry()
        multiprocess.MultiProcessCollector(merged, path=str(self.multiprocess_dir))
        return generate_latest(merged)

    def process_exiting(self) -> None:
        """A worker shutting down drops out of the live gauges (a crashed one stays until the server restarts)."""
        if self.multiprocess_dir is not None:
            multiprocess.mark_process_dead(os.getpid(), path=str(self.multiprocess_dir))

    def set_model(self, name: str, version: str, sha256: str, device: str) -> None:
        if self.multiprocess_dir is None:  # a worker loads one model for its life; clear() is single-process only
            self.model_info.clear()
        self.model_info.labels(name=name, version=version, sha256=sha256, device=device).set(1)
        self.ready.set(1)

    def record_http(self, route: str, method: str, status: str, seconds: float, protocol: str = "rest") -> None:
        """One answered request: its latency by route template and its count by route, method and status."""
        observe(self.child(self.request_latency, route, protocol), seconds)
        inc(self.child(self.requests, route, method, status, protocol))

    def record_predictions(
        self, endpoint: str, labels: Sequence[str], outliers: Sequence[bool | None], protocol: str
    ) -> None:
        """Images answered by ``endpoint``: the batch size, each predicted class and the input-check outliers."""
        observe(self.child(self.batch_size, endpoint, protocol), len(labels))
        child, predictions = self.child, self.predictions
        for label in labels:
            inc(child(predictions, endpoint, label, protocol))
        flagged = sum(o is True for o in outliers)
        if flagged:
            inc(child(self.input_outliers, endpoint, protocol), flagged)

    def record_predict(
        self, labels: Sequence[str], outliers: Sequence[bool | None], seconds: float, protocol: str = "rest"
    ) -> None:
        """One answered deterministic request: its model time, batch size and predicted classes."""
        observe(self.child(self.inference_latency, "predict", protocol), seconds)
        self.record_predictions("predict", labels, outliers, protocol)

    def record_uncertainty(self, summary: MCSummary, seconds: float, protocol: str = "rest") -> None:
        """One answered Monte Carlo request, including each image's entropy and MI."""
        self.record_uncertainties([(summary, seconds, protocol)])

    def record_uncertainties(self, answered: Sequence[tuple[MCSummary, float, str]]) -> None:
        """Answered Monte Carlo requests ``(summary, model seconds, protocol)``, counted per protocol and bucket first
        (the requests one kernel call answered: a few updates instead of a dozen per request)."""
        by_protocol: dict[str, list[tuple[MCSummary, float]]] = {}
        for summary, seconds, protocol in answered:
            by_protocol.setdefault(protocol, []).append((summary, seconds))
        child = self.child
        for protocol, group in by_protocol.items():
            pe = [v for summary, _ in group for v in summary.predictive_entropy]
            observe_many(child(self.predictive_entropy, protocol), pe)
            observe_many(child(self.mutual_information, protocol), [v for s, _ in group for v in s.mutual_information])
            uncertain = sum(sum(s.uncertain) for s, _ in group)
            if uncertain:
                inc(child(self.uncertain, protocol), uncertain)
            observe_many(child(self.inference_latency, "predict_uncertainty", protocol), [t for _, t in group])
            observe_many(child(self.mc_samples, protocol), [s.n_samples for s, _ in group])
            observe_many(child(self.batch_size, "predict_uncertainty", protocol), [len(s.labels) for s, _ in group])
            labels: dict[str, int] = {}
            flagged = 0
            for s, _ in group:
                for label in s.labels:
                    labels[label] = labels.get(label, 0) + 1
                flagged += sum(o is True for o in s.outliers)
            for label, n in labels.items():
                inc(child(self.predictions, "predict_uncertainty", label, protocol), n)
            if flagged:
                inc(child(self.input_outliers, "predict_uncertainty", protocol), flagged)

    def record_prediction_sets(self, sizes: Sequence[int], protocol: str = "rest") -> None:
        """The size (number of classes) of each image's conformal prediction set, for a request with a coverage."""
        histogram = self.child(self.prediction_set_size, protocol)
        for size in sizes:
            histogram.observe(size)

    def record_abstentions(self, count: int, protocol: str = "rest") -> None:
        """``count`` images of a request with a ``max_risk`` that the service abstained on."""
        if count:
            self.child(self.abstained, protocol).inc(count)

    def record_key_request(self, key: str, protocol: str) -> None:
        """One request let in by API key ``key`` (its id)."""
        self.child(self.key_requests, key, protocol).inc()

    def record_denied(self, reason: str, protocol: str) -> None:
        """One request refused by the API-key checks."""
        self.child(self.denied, reason, protocol).inc()

    def record_shed(self, endpoint: str, reason: str, protocol: str) -> None:
        """One request refused by admission control (``reason``: queue_full or queue_timeout)."""
        self.child(self.shed, endpoint, reason, protocol).inc()

    def record_mc_batch(self, requests: int, rows: int) -> None:
        """One Monte Carlo kernel call: how many uncertainty requests and rows (passes x images) it served."""
        observe(self.mc_coalesced_requests, requests)
        observe(self.mc_coalesced_rows, rows)

    def record_batch(self, requests: int, images: int) -> None:
        """One dynamic-batching forward pass of ``/predict``: how many requests and images it served."""
        observe(self.coalesced_requests, requests)
        observe(self.coalesced_images, images)
