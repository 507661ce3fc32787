"""Builds deploy/grafana/dashboards/mcserve.json (the provisioned mcserve dashboard) as code.

    python deploy/grafana/dashboard.py            # rewrite the JSON
    python deploy/grafana/dashboard.py --check    # exit 1 if the committed JSON is stale

Every panel queries the provisioned datasource (uid ``mcserve-prometheus``). The only
Grafana macro used in queries is ``$__rate_interval``; the compose smoke test substitutes
it and runs every query against a live Prometheus that scraped the live service.

With several replicas, the ``instance`` variable (multi-value, All by default) filters every query to the chosen
replicas (``instance=~"$instance"`` on each selector), and the "Requests per instance" panel shows how the load
spreads; the scale smoke test (scripts/scale_smoke.sh) checks that the totals equal the sums over instances.
"""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

DATASOURCE = {"type": "prometheus", "uid": "mcserve-prometheus"}
OUT = Path(__file__).resolve().parent / "dashboards" / "mcserve.json"
RATE = "$__rate_interval"
# inference routes of every protocol: REST, v2 HTTP (/v2/models/{model_name}[/versions/..]/infer), v2 gRPC ModelInfer
PREDICT_ROUTES = 'route=~"/predict.*|.*/infer|.*/ModelInfer"'

INSTANCE = 'instance=~"$instance"'
# a series selector: a metric name (mcserve_*, or up) and its optional {matchers}
_SELECTOR = re.compile(r"\b(mcserve_[a-z_]+|up)(\{[^}]*\})?")

Panel = dict[str, Any]


def per_instance(expr: str) -> str:
    """``expr`` with ``instance=~"$instance"`` added to every series selector."""

    def scoped(match: re.Match[str]) -> str:
        inner = (match.group(2) or "{}")[1:-1]
        return f"{match.group(1)}{{{INSTANCE}{', ' + inner if inner else ''}}}"

    return _SELECTOR.sub(scoped, expr)


def target(expr: str, legend: str, ref: str, fmt: str = "time_series") -> dict[str, Any]:
    return {"datasource": DATASOURCE, "expr": per_instance(expr), "legendFormat": legend, "refId": ref, "format": fmt}


def quantiles(metric: str, by: str, selector: str = "") -> list[dict[str, Any]]:
    """p50/p95/p99 of a histogram, one series per ``by`` label."""
    out = []
    for ref, q in zip("ABC", (0.5, 0.95, 0.99), strict=True):
        expr = f"histogram_quantile({q}, sum by (le, {by}) (rate({metric}_bucket{{{selector}}}[{RATE}])))"
        out.append(target(expr, f"p{round(q * 100)} {{{{{by}}}}}", ref))
    return out


def panel(title: str, kind: str, targets: list[dict[str, Any]], unit: str, desc: str, **extra: Any) -> Panel:
    return {
        "type": kind,
        "title": title,
        "description": desc,
        "datasource": DATASOURCE,
        "targets": targets,
        "fieldConfig": {"defaults": {"unit": unit}, "overrides": []},
        "options": extra.pop("options", {}),
        **extra,
    }


def heatmap(title: str, metric: str, desc: str) -> Panel:
    expr = f"sum by (le) (increase({metric}_bucket[{RATE}]))"
    return panel(
        title,
        "heatmap",
        [target(expr, "{{le}}", "A", fmt="heatmap")],
        "short",
        desc,
        options={"calculate": False, "yAxis": {"unit": "short"}, "cellGap": 1, "color": {"scheme": "Oranges"}},
    )


def panels() -> list[Panel]:
    rate_all = f"rate(mcserve_http_requests_total[{RATE}])"
    errors = f'sum by (route) (rate(mcserve_http_requests_total{{status=~"5.."}}[{RATE}]))'
    share = (
        f"sum(rate(mcserve_uncertain_predictions_total[{RATE}]))"
        f' / sum(rate(mcserve_predictions_total{{endpoint="predict_uncertainty"}}[{RATE}]))'
    )
    outliers = (
        f"sum by (endpoint) (rate(mcserve_input_outliers_total[{RATE}]))"
        f" / sum by (endpoint) (rate(mcserve_predictions_total[{RATE}]))"
    )
    mean_samples = f"sum(rate(mcserve_mc_samples_sum[{RATE}])) / sum(rate(mcserve_mc_samples_count[{RATE}]))"
    coalesced = "mcserve_batch_coalesced_requests"
    set_size = "mcserve_prediction_set_size"
    mean_set_size = f"sum(rate({set_size}_sum[{RATE}])) / sum(rate({set_size}_count[{RATE}]))"
    # ceil: the sizes are whole numbers and the buckets 0, 1, ..., 10, so the quantile interpolated in its
    # bucket (k - 1, k] rounds up to the exact k
    set_size_q = [
        target(f"ceil(histogram_quantile({q}, sum by (le) (rate({set_size}_bucket[{RATE}]))))", f"p{q * 100:.0f}", ref)
        for ref, q in (("B", 0.5), ("C", 0.9))
    ]
    abstained = "abstained images/s"
    mean_coalesced = f"sum(rate({coalesced}_sum[{RATE}])) / sum(rate({coalesced}_count[{RATE}]))"
    return [
        panel(
            "Model",
            "stat",
            [target("max by (name, version, sha256, device) (mcserve_model_info)", "{{version}} on {{device}}", "A")],
            "none",
            "Loaded model version (labels: name, version, sha256, device).",
            options={"textMode": "name", "reduceOptions": {"calcs": ["lastNotNull"]}},
        ),
        panel(
            "API up / model ready",
            "stat",
            [
                target('up{job="mcserve-api"}', "up {{instance}}", "A"),
                target("mcserve_model_ready", "ready {{instance}}", "B"),
            ],
            "none",
            "Scrape health of each api target and whether its model is loaded.",
        ),
        panel(
            "Requests in flight",
            "stat",
            [target("sum(mcserve_http_requests_in_flight)", "in flight", "A")],
            "short",
            "HTTP requests being served right now.",
        ),
        panel(
            "Requests per instance",
            "timeseries",
            [target(f"sum by (instance) ({rate_all})", "{{instance}}", "A")],
            "reqps",
            "HTTP requests per second served by each replica (Prometheus target): with a load balancer in front, "
            "each should carry about its share; a replica at 0 is out of rotation or down.",
        ),
        panel(
            "Request rate by route",
            "timeseries",
            [target(f"sum by (route) ({rate_all})", "{{route}}", "A")],
            "reqps",
            "HTTP requests per second by route template.",
        ),
        panel(
            "Request rate by protocol",
            "timeseries",
            [target(f"sum by (protocol) ({rate_all})", "{{protocol}}", "A")],
            "reqps",
            "Requests per second by protocol: rest (mcserve's JSON API), v2_http and v2_grpc "
            "(Open Inference Protocol).",
        ),
        panel(
            "MC requests shed (503 overloaded)",
            "timeseries",
            [target(f"sum by (reason) (rate(mcserve_shed_requests_total[{RATE}]))", "{{reason}}", "A")],
            "reqps",
            "Monte Carlo requests refused by admission control: queue of MC work full, or queue deadline missed "
            "(alert: above 1% of MC requests for 5 min).",
        ),
        panel(
            "Errors by route and status",
            "timeseries",
            [
                target(
                    f'sum by (route, status) (rate(mcserve_http_requests_total{{status=~"[45].."}}[{RATE}]))',
                    "{{route}} {{status}}",
                    "A",
                )
            ],
            "reqps",
            "4xx and 5xx responses per second.",
        ),
        panel(
            "5xx error ratio by route",
            "timeseries",
            [target(f"({errors} or sum by (route) ({rate_all}) * 0) / sum by (route) ({rate_all})", "{{route}}", "A")],
            "percentunit",
            "Share of requests answered with 5xx (alert: above 5% for 5 min).",
        ),
        panel(
            "Request latency p50/p95/p99 (predict routes)",
            "timeseries",
            quantiles("mcserve_http_request_duration_seconds", "route", PREDICT_ROUTES),
            "s",
            "End-to-end latency of the inference routes of every protocol (alert: p99 above 1 s for 10 min).",
        ),
        panel(
            "Inference latency p50/p95/p99",
            "timeseries",
            quantiles("mcserve_inference_duration_seconds", "endpoint"),
            "s",
            "Model time per request (decoding excluded) by endpoint.",
        ),
        panel(
            "MC samples per uncertainty request",
            "timeseries",
            [target(mean_samples, "mean", "A"), *quantiles("mcserve_mc_samples", "job")[2:]],
            "short",
            "Monte Carlo dropout passes requested (mean and p99).",
        ),
        panel(
            "Share of uncertain predictions",
            "timeseries",
            [target(share, "uncertain share", "A")],
            "percentunit",
            "Images flagged uncertain: mutual information above the model's threshold or an input outlier "
            "(drift alert on a jump).",
        ),
        panel(
            "Share of input outliers by endpoint",
            "timeseries",
            [target(outliers, "{{endpoint}}", "A")],
            "percentunit",
            "Images the pixel-space input check flagged as unlike the training images (about 1% of real garments; "
            "a rise means inverted, cropped, non-garment or corrupted inputs).",
        ),
        heatmap(
            "Mutual information distribution",
            "mcserve_mutual_information_nats",
            "Per-image mutual information (epistemic uncertainty), nats, over time.",
        ),
        heatmap(
            "Predictive entropy distribution",
            "mcserve_predictive_entropy_nats",
            "Per-image predictive entropy (total uncertainty), nats, over time.",
        ),
        panel(
            "Prediction-set size (conformal)",
            "timeseries",
            [
                target(mean_set_size, "mean", "A"),
                *set_size_q,
                target(f"sum(rate(mcserve_abstained_total[{RATE}]))", abstained, "D"),
            ],
            "short",
            "Classes in each image's conformal prediction set, for requests that ask for a coverage (mean, p50, "
            "p90; drift alert when the mean jumps above 1.5x its 24 h baseline), and images abstained on per "
            "second (requests with max_risk; right axis).",
            fieldConfig={
                "defaults": {"unit": "short"},
                "overrides": [
                    {
                        "matcher": {"id": "byName", "options": abstained},
                        "properties": [{"id": "custom.axisPlacement", "value": "right"}],
                    }
                ],
            },
        ),
        panel(
            "Predictions by class",
            "timeseries",
            [target(f"sum by (class_name) (rate(mcserve_predictions_total[{RATE}]))", "{{class_name}}", "A")],
            "short",
            "Predicted images per second by class (both endpoints).",
            options={"legend": {"displayMode": "table", "placement": "right"}},
        ),
        panel(
            "Batch size p50/p95/p99",
            "timeseries",
            quantiles("mcserve_batch_size_images", "endpoint"),
            "short",
            "Images per inference request by endpoint.",
        ),
        panel(
            "Dynamic batching: /predict requests per forward pass",
            "timeseries",
            [target(mean_coalesced, "mean", "A"), *quantiles("mcserve_batch_coalesced_requests", "job")[2:]],
            "short",
            "Requests that shared one eval-mode forward pass (mean and p99); 1 means no coalescing.",
        ),
    ]


def layout(items: list[Panel]) -> list[Panel]:
    """Three stats across the top, then two graphs per row."""
    x = y = row_h = 0
    for pid, item in enumerate(items, start=1):
        w, h = (8, 4) if item["type"] == "stat" else (12, 8)
        if x + w > 24:
            x, y = 0, y + row_h
        row_h = h if x == 0 else max(row_h, h)
        item["id"] = pid
        item["gridPos"] = {"x": x, "y": y, "w": w, "h": h}
        x += w
    return items


def instance_variable() -> dict[str, Any]:
    """The replicas to show: every ``instance`` that exports ``mcserve_model_ready``; several may be chosen."""
    query = "label_values(mcserve_model_ready, instance)"
    return {
        "name": "instance",
        "label": "Instance",
        "type": "query",
        "datasource": DATASOURCE,
        "definition": query,
        "query": {"query": query, "refId": "instance"},
        "refresh": 2,
        "multi": True,
        "includeAll": True,
        "allValue": ".*",
        "current": {"selected": True, "text": ["All"], "value": ["$__all"]},
        "sort": 1,
    }


def dashboard() -> dict[str, Any]:
    return {
        "uid": "mcserve",
        "title": "mcserve",
        "description": "Fashion-MNIST MLP with Monte Carlo dropout uncertainty: traffic, latency, uncertainty, model.",
        "tags": ["mcserve"],
        "timezone": "utc",
        "editable": False,
        "refresh": "10s",
        "schemaVersion": 39,
        "version": 1,
        "time": {"from": "now-1h", "to": "now"},
        "templating": {"list": [instance_variable()]},
        "annotations": {"list": []},
        "panels": layout(panels()),
    }


def render() -> str:
    return json.dumps(dashboard(), indent=2) + "\n"


def main(argv: list[str]) -> int:
    text = render()
    if "--check" in argv:
        if not OUT.exists() or OUT.read_text() != text:
            print(f"{OUT} is stale: run python deploy/grafana/dashboard.py", file=sys.stderr)
            return 1
        return 0
    OUT.write_text(text)
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
