"""Compose smoke test, Prometheus side: the api target is up, the alert rules are loaded, and
every PromQL expression of the Grafana dashboard parses and returns data from a live Prometheus
that scraped the live service.

    python3 scripts/check_prometheus.py --url http://127.0.0.1:18290 \
        --dashboard deploy/grafana/dashboards/mcserve.json --job mcserve-api [--wait-s 60]

Standard library only. Exit 1 listing every query that failed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

# Grafana macros -> what Grafana would put there for a short, recent time range (5 s scrapes).
# Dashboard variables -> their "All" value (the instance variable's allValue: every replica).
MACROS = {"$__rate_interval": "1m", "$__interval": "15s", "$__range": "5m", "$instance": ".*"}


def dashboard_exprs(node: Any) -> Iterator[tuple[str, str]]:
    """(panel title, expr) for every ``expr`` anywhere in a dashboard JSON document."""
    if isinstance(node, dict):
        title = str(node.get("title", ""))
        for key, value in node.items():
            if key == "expr" and isinstance(value, str):
                yield title, value
            else:
                for sub_title, expr in dashboard_exprs(value):
                    yield sub_title or title, expr
    elif isinstance(node, list):
        for item in node:
            yield from dashboard_exprs(item)


def expand(expr: str) -> str:
    for macro, value in MACROS.items():
        expr = expr.replace(macro, value)
    return expr


def api(base: str, path: str, **params: str) -> Any:
    url = f"{base}{path}" + (f"?{urllib.parse.urlencode(params)}" if params else "")
    try:
        with urllib.request.urlopen(url, timeout=15) as resp:
            body = json.loads(resp.read())
    except urllib.error.HTTPError as exc:  # 400 for a query that does not parse: keep the message
        body = json.loads(exc.read() or b"{}")
    if body.get("status") != "success":
        raise ValueError(f"{body.get('errorType', 'error')}: {body.get('error', body)}")
    return body["data"]


def finite_values(data: dict[str, Any]) -> list[float]:
    kind, result = data["resultType"], data["result"]
    if kind == "vector":
        return [float(s["value"][1]) for s in result if math.isfinite(float(s["value"][1]))]
    if kind == "scalar":
        value = float(result[1])
        return [value] if math.isfinite(value) else []
    return []


def check_target_up(base: str, job: str) -> str | None:
    try:
        data = api(base, "/api/v1/query", query=f'up{{job="{job}"}} == 1')
    except ValueError as exc:
        return str(exc)
    return None if data["result"] else f'up{{job="{job}"}} is not 1'


def check_rules(base: str) -> tuple[int, list[str]]:
    groups = api(base, "/api/v1/rules")["groups"]
    rules = [rule for group in groups for rule in group["rules"]]
    bad = [
        f"rule {r['name']}: health {r.get('health')} {r.get('lastError', '')}"
        for r in rules
        if r.get("health") == "err"
    ]
    return len(rules), bad


def check_queries(base: str, dashboard: Path) -> tuple[int, list[str]]:
    failures = []
    exprs = list(dashboard_exprs(json.loads(dashboard.read_text())))
    for title, expr in exprs:
        try:
            values = finite_values(api(base, "/api/v1/query", query=expand(expr)))
        except ValueError as exc:
            failures.append(f"[{title}] {expr}\n    -> {exc}")
            continue
        if not values:
            failures.append(f"[{title}] {expr}\n    -> no data (no series with a finite value)")
    return len(exprs), failures


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--dashboard", type=Path, required=True)
    ap.add_argument("--job", default="mcserve-api")
    ap.add_argument("--wait-s", type=float, default=60.0, help="how long to wait for the target and the data")
    args = ap.parse_args(argv)
    base = args.url.rstrip("/")
    deadline = time.monotonic() + args.wait_s
    while True:  # scrapes every 5 s: the first check right after traffic may be early
        problems = []
        down = check_target_up(base, args.job)
        if down:
            problems.append(f"target: {down}")
        n_rules, bad_rules = check_rules(base)
        if n_rules == 0:
            problems.append("no alerting/recording rules loaded")
        problems += bad_rules
        n_queries, failures = check_queries(base, args.dashboard)
        problems += failures
        if not problems or time.monotonic() > deadline:
            break
        time.sleep(5)
    if problems:
        print(f"check_prometheus: FAIL ({len(problems)} problems):", file=sys.stderr)
        for problem in problems:
            print(f"  {problem}", file=sys.stderr)
        return 1
    print(
        f"check_prometheus: OK: up{{job={args.job!r}}} == 1, {n_rules} rules loaded and healthy, "
        f"all {n_queries} dashboard queries parse and return data"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
