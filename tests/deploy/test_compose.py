"""docker-compose.yml and its overrides, statically; `make compose-smoke` runs them for real."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any


def test_train_is_a_one_shot_job_writing_to_a_named_volume(compose: dict[str, Any]) -> None:
    train = compose["services"]["train"]
    assert train["build"]["target"] == "train"
    assert train["restart"] == "no"
    assert "models:/models" in train["volumes"]
    assert "models" in compose["volumes"]
    assert "MCSERVE_FORCE_RETRAIN" in train["environment"]


def test_api_waits_for_train_and_has_a_healthcheck_on_port_8000_and_grpc_on_8001(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert api["build"]["target"] == "serve"
    assert api["depends_on"]["train"]["condition"] == "service_completed_successfully"
    assert api["healthcheck"]["test"] == ["CMD", "mcserve-healthcheck"]
    assert api["ports"] == [
        "${MCSERVE_BIND:-127.0.0.1}:${MCSERVE_API_PORT:-8000}:8000",
        "${MCSERVE_BIND:-127.0.0.1}:${MCSERVE_API_GRPC_PORT:-8001}:8001",
    ]
    assert api["environment"]["MCSERVE_PORT"] == "8000"
    assert api["environment"]["MCSERVE_GRPC_PORT"] == "8001"
    assert "models:/models:ro" in api["volumes"]


def test_ports_are_published_on_localhost_by_default(compose: dict[str, Any]) -> None:
    for name, service in compose["services"].items():
        for port in service.get("ports", []):
            assert port.startswith("${MCSERVE_BIND:-127.0.0.1}:"), name


def test_prometheus_loads_config_and_rules(compose: dict[str, Any]) -> None:
    prom = compose["services"]["prometheus"]
    assert "./deploy/prometheus/prometheus.yml:/etc/prometheus/prometheus.yml:ro" in prom["volumes"]
    assert "./deploy/prometheus/rules:/etc/prometheus/rules:ro" in prom["volumes"]
    assert "--config.file=/etc/prometheus/prometheus.yml" in prom["command"]


def test_grafana_has_no_default_admin_password_and_an_anonymous_viewer(compose: dict[str, Any]) -> None:
    env = compose["services"]["grafana"]["environment"]
    assert "GF_SECURITY_ADMIN_PASSWORD" not in env
    assert env["GF_SECURITY_DISABLE_INITIAL_ADMIN_CREATION"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true"
    assert env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Viewer"
    volumes = compose["services"]["grafana"]["volumes"]
    assert "./deploy/grafana/provisioning:/etc/grafana/provisioning:ro" in volumes


def test_grafana_admin_override_requires_a_password(read_yaml: Callable[[str], Any]) -> None:
    env = read_yaml("deploy/compose.grafana-admin.yml")["services"]["grafana"]["environment"]
    assert env["GF_SECURITY_ADMIN_PASSWORD"].startswith("${GRAFANA_ADMIN_PASSWORD:?")


def test_gpu_override_reserves_a_gpu_for_train_and_api_with_cuda_torch(read_yaml: Callable[[str], Any]) -> None:
    gpu = read_yaml("deploy/compose.gpu.yml")["services"]
    for name in ("train", "api"):
        (device,) = gpu[name]["deploy"]["resources"]["reservations"]["devices"]
        assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]
        assert "/whl/cu" in gpu[name]["build"]["args"]["TORCH_INDEX_URL"]
    assert gpu["api"]["environment"]["MCSERVE_DEVICE"].endswith("cuda}")


def test_smoke_override_puts_every_running_service_on_host_network(
    compose: dict[str, Any], read_yaml: Callable[[str], Any]
) -> None:
    smoke = read_yaml("deploy/compose.smoke.yml")["services"]
    assert set(smoke) == set(compose["services"])
    for name, service in smoke.items():
        if "profiles" in service:  # left out of the smoke test (grafana)
            continue
        assert service["network_mode"] == "host", name
        assert service["pull_policy"] == "never", name
        if "ports" in compose["services"][name]:
            assert service["ports"] == [], name  # `!reset []`
    assert smoke["grafana"]["profiles"]
    assert smoke["api"]["environment"]["MCSERVE_HOST"] == "127.0.0.1"
    assert smoke["api"]["environment"]["MCSERVE_GRPC_PORT"].startswith("${MCSERVE_SMOKE_GRPC_PORT:-182")
    assert "127.0.0.1:" in " ".join(smoke["prometheus"]["command"])
