"""Prometheus config and alert rules, checked and unit-tested by the real promtool."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)


def test_promtool_check_config_passes_and_loads_the_rules(promtool: str) -> None:
    out = run(promtool, "check", "config", str(ROOT / "deploy/prometheus/prometheus.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"SUCCESS: [1-9]\d* rules found", out.stdout + out.stderr), out.stdout


def test_promtool_rule_unit_tests_pass(promtool: str) -> None:
    out = run(promtool, "test", "rules", str(ROOT / "deploy/prometheus/tests/mcserve_test.yml"))
    assert out.returncode == 0, out.stdout + out.stderr
    assert "SUCCESS" in out.stdout + out.stderr


BROKEN_THRESHOLDS = [
    ("McserveHighErrorRatio", "mcserve:http_errors:ratio_rate5m > 0.05", "mcserve:http_errors:ratio_rate5m > 0.5"),
    (
        "McservePredictionSetSizeJump",
        "mcserve:prediction_set_size:mean_rate15m > 1.5 * mcserve:prediction_set_size:mean_rate24h_offset1h",
        "mcserve:prediction_set_size:mean_rate15m > 3 * mcserve:prediction_set_size:mean_rate24h_offset1h",
    ),
    (
        "McservePredictionSetSizeJump",
        "sum(rate(mcserve_prediction_set_size_count[15m])) >= 0.1",
        "sum(rate(mcserve_prediction_set_size_count[15m])) >= 0.001",
    ),
]


@pytest.mark.parametrize(
    ("alert", "threshold", "broken"), BROKEN_THRESHOLDS, ids=["error-ratio-slo", "set-size-factor", "set-size-volume"]
)
def test_promtool_rule_tests_catch_a_broken_threshold(
    promtool: str, tmp_path: Path, alert: str, threshold: str, broken: str
) -> None:
    """The unit tests would notice if a threshold (an SLO, a drift factor, a minimum volume) silently changed."""
    shutil.copytree(ROOT / "deploy/prometheus", tmp_path / "prometheus")
    rules = tmp_path / "prometheus/rules/mcserve.yml"
    text = rules.read_text()
    assert text.count(threshold) == 1
    rules.write_text(text.replace(threshold, broken))
    out = run(promtool, "test", "rules", str(tmp_path / "prometheus/tests/mcserve_test.yml"))
    assert out.returncode != 0
    assert alert in out.stdout + out.stderr


def test_api_is_scraped_every_5s_and_rules_are_loaded(read_yaml: Callable[[str], Any]) -> None:
    config = read_yaml("deploy/prometheus/prometheus.yml")
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == "mcserve-api"]
    assert job["scrape_interval"] == "5s"
    assert job["static_configs"][0]["targets"] == ["api:8000"]
    assert config["rule_files"] == ["rules/*.yml"]


def test_issue_alerts_exist_with_severity_and_summary(read_yaml: Callable[[str], Any]) -> None:
    rules = read_yaml("deploy/prometheus/rules/mcserve.yml")
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    for name in (
        "McserveHighErrorRatio",
        "McserveP99LatencyAboveSLO",
        "McserveUncertainShareJump",
        "McserveApiDown",
        "McservePredictionSetSizeJump",
    ):
        assert name in alerts
        assert alerts[name]["labels"]["severity"] in {"warning", "critical"}
        assert alerts[name]["annotations"]["summary"]
