"""The provisioned Grafana dashboard: structure, datasource, coverage, and metric names that exist.

Whether every query returns data from the live service is checked by the compose smoke test.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

from prometheus_client import CollectorRegistry

from service.metrics import MCSummary, Metrics

ROOT = Path(__file__).resolve().parents[2]
METRIC = re.compile(r"\bmcserve_[a-z_]+\b")


def exported_sample_names() -> set[str]:
    """Every sample name the service exports (``_total``, ``_bucket``, ``_sum``, ``_count``, ...)."""
    registry = CollectorRegistry()
    metrics = Metrics(registry)
    metrics.set_model("m", "v", "s", "cpu")
    metrics.record_http("/x", "GET", "200", 0.1, "rest")
    metrics.inference_latency.labels(endpoint="predict", protocol="rest").observe(0.1)
    metrics.record_predictions("predict", ["Bag"], [True], "rest")
    metrics.record_uncertainty(MCSummary(["Bag"], [True], [0.5], [0.1], [True], 10), 0.1, "rest")
    return {s.name for family in registry.collect() for s in family.samples}


def datasource_uid(read_yaml: Callable[[str], Any]) -> str:
    (source,) = read_yaml("deploy/grafana/provisioning/datasources/prometheus.yml")["datasources"]
    assert source["type"] == "prometheus" and source["url"] == "http://prometheus:9090"
    return str(source["uid"])


def test_dashboard_json_is_generated_from_the_code(load_module: Callable[[str], ModuleType]) -> None:
    module = load_module("deploy/grafana/dashboard.py")
    assert (ROOT / "deploy/grafana/dashboards/mcserve.json").read_text() == module.render()


def test_every_panel_and_target_uses_the_provisioned_datasource(
    dashboard: dict[str, Any], read_yaml: Callable[[str], Any]
) -> None:
    uid = datasource_uid(read_yaml)
    assert dashboard["panels"]
    for panel in dashboard["panels"]:
        assert panel["datasource"] == {"type": "prometheus", "uid": uid}, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"]["uid"] == uid, panel["title"]
            assert target["expr"].strip(), panel["title"]


def test_structure_ids_refs_and_grid(dashboard: dict[str, Any]) -> None:
    assert dashboard["uid"] == "mcserve" and dashboard["title"]
    ids = [p["id"] for p in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        refs = [t["refId"] for t in panel["targets"]]
        assert len(refs) == len(set(refs)), panel["title"]
        grid = panel["gridPos"]
        assert grid["x"] + grid["w"] <= 24 and grid["w"] > 0 and grid["h"] > 0
    cells: set[tuple[int, int]] = set()
    for panel in dashboard["panels"]:  # panels never overlap
        g = panel["gridPos"]
        area = {(x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])}
        assert not cells & area, panel["title"]
        cells |= area


def test_dashboard_covers_what_on_call_needs(dashboard: dict[str, Any]) -> None:
    exprs = "\n".join(t["expr"] for p in dashboard["panels"] for t in p["targets"])
    for needed in (
        "rate(mcserve_http_requests_total",  # request rate by route
        'status=~"5..',  # errors
        "histogram_quantile(0.5, sum by (le, route) (rate(mcserve_http_request_duration_seconds_bucket",
        "histogram_quantile(0.95, sum by (le, route) (rate(mcserve_http_request_duration_seconds_bucket",
        "histogram_quantile(0.99, sum by (le, route) (rate(mcserve_http_request_duration_seconds_bucket",
        "mcserve_inference_duration_seconds_bucket",
        "mcserve_mc_samples",
        "mcserve_mutual_information_nats_bucket",
        "mcserve_predictive_entropy_nats_bucket",
        "mcserve_uncertain_predictions_total",
        "mcserve_input_outliers_total",
        "sum by (class_name) (rate(mcserve_predictions_total",
        "mcserve_model_info",
        "sum(rate(mcserve_prediction_set_size_sum",
        "histogram_quantile(0.9, sum by (le) (rate(mcserve_prediction_set_size_bucket",
        "rate(mcserve_abstained_total",
    ):
        assert needed in exprs, needed
    kinds = {p["title"]: p["type"] for p in dashboard["panels"]}
    assert kinds["Mutual information distribution"] == "heatmap"
    assert kinds["Predictive entropy distribution"] == "heatmap"


def test_dashboard_and_rules_use_only_metrics_the_service_exports(
    dashboard: dict[str, Any], read_yaml: Callable[[str], Any]
) -> None:
    exported = exported_sample_names()
    exprs = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    exprs += [r["expr"] for g in read_yaml("deploy/prometheus/rules/mcserve.yml")["groups"] for r in g["rules"]]
    used = {m for expr in exprs for m in METRIC.findall(expr)}
    assert used, "no mcserve_ metric referenced"
    assert used <= exported, f"not exported by service/metrics.py: {sorted(used - exported)}"


def test_query_extraction_finds_every_target(
    dashboard: dict[str, Any], load_module: Callable[[str], ModuleType]
) -> None:
    checker = load_module("scripts/check_prometheus.py")
    found = [expr for _, expr in checker.dashboard_exprs(dashboard)]
    assert found == [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    assert all("$" not in checker.expand(expr) for expr in found)  # every macro and variable substituted


def test_every_query_follows_the_instance_variable(dashboard: dict[str, Any]) -> None:
    (variable,) = [v for v in dashboard["templating"]["list"] if v["name"] == "instance"]
    assert variable["query"]["query"] == "label_values(mcserve_model_ready, instance)"
    assert variable["multi"] and variable["includeAll"] and variable["allValue"] == ".*"
    selector = re.compile(r"\b(?:mcserve_[a-z_]+|up)\b(\{[^}]*\})?")
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            for match in selector.finditer(target["expr"]):
                assert 'instance=~"$instance"' in (match.group(1) or ""), (panel["title"], target["expr"])
    (per_instance,) = [p for p in dashboard["panels"] if p["title"] == "Requests per instance"]
    assert per_instance["targets"][0]["expr"] == (
        'sum by (instance) (rate(mcserve_http_requests_total{instance=~"$instance"}[$__rate_interval]))'
    )
