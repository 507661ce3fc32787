"""Exposing the api (deploy/compose.exposed.yml): only with API keys. Rendered by the real `docker compose config`,
the Prometheus config checked by the real promtool, the smoke test's auth client run against a stand-in server.
`make compose-smoke` runs the exposed profile for real."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any, ClassVar

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
BASE = ["-f", "docker-compose.yml"]
EXPOSED = [*BASE, "-f", "deploy/compose.exposed.yml"]
SMOKE_EXPOSED = [*EXPOSED, "-f", "deploy/compose.smoke.yml"]
KEYS_SECRET = "/run/secrets/mcserve_api_keys"
TOKEN_SECRET = "/run/secrets/mcserve_prometheus_credentials"


def render(compose_cli: list[str], files: list[str], tmp_path: Path, **env: str) -> subprocess.CompletedProcess[str]:
    """`docker compose ... config --format json` in a clean environment (only PATH and the given variables)."""
    clean = {"PATH": "/usr/local/bin:/usr/bin:/bin", "HOME": str(tmp_path), "DOCKER_CONFIG": str(tmp_path), **env}
    return subprocess.run(
        [*compose_cli, *files, "config", "--format", "json"],
        cwd=ROOT, env=clean, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip


def rendered(compose_cli: list[str], files: list[str], tmp_path: Path, **env: str) -> dict[str, Any]:
    out = render(compose_cli, files, tmp_path, **env)
    assert out.returncode == 0, out.stderr
    data: dict[str, Any] = json.loads(out.stdout)
    return data


def host_ips(service: dict[str, Any]) -> set[str]:
    return {p.get("host_ip", "") for p in service.get("ports") or []}


@pytest.fixture
def key_files(tmp_path: Path) -> dict[str, str]:
    keys, token = tmp_path / "keys.toml", tmp_path / "prometheus.token"
    keys.write_text("")
    token.write_text("mcs_x\n")
    return {"MCSERVE_API_KEYS_FILE": str(keys), "MCSERVE_PROMETHEUS_TOKEN_FILE": str(token)}


def test_plain_compose_needs_no_variable_and_publishes_on_loopback_without_keys(
    compose_cli: list[str], tmp_path: Path
) -> None:
    data = rendered(compose_cli, BASE, tmp_path)
    for name in ("api", "prometheus", "grafana"):
        assert host_ips(data["services"][name]) == {"127.0.0.1"}, name
    api = data["services"]["api"]
    assert "MCSERVE_API_KEYS_FILE" not in api["environment"] and not api.get("secrets")
    assert "secrets" not in data


@pytest.mark.parametrize("bind", ["0.0.0.0", "192.168.1.20", "::"])
def test_mcserve_bind_without_the_exposed_override_is_refused_with_a_clear_message(
    compose_cli: list[str], tmp_path: Path, key_files: dict[str, str], bind: str
) -> None:
    # even with the key variables set: without the override nothing would mount or enforce them
    out = render(compose_cli, BASE, tmp_path, MCSERVE_BIND=bind, **key_files)
    assert out.returncode != 0
    assert "MCSERVE_BIND is set: the api is exposed only with API keys, add -f deploy/compose.exposed.yml" in out.stderr
    for extra in (["-f", "deploy/compose.gpu.yml"], ["-f", "deploy/compose.grafana-admin.yml"]):
        out = render(compose_cli, [*BASE, *extra], tmp_path, MCSERVE_BIND=bind, GRAFANA_ADMIN_PASSWORD="x")
        assert out.returncode != 0 and "deploy/compose.exposed.yml" in out.stderr, extra


@pytest.mark.parametrize(
    ("missing", "message"),
    [
        ("MCSERVE_API_KEYS_FILE", "set MCSERVE_API_KEYS_FILE to a keys file made with mcserve-keys"),
        ("MCSERVE_PROMETHEUS_TOKEN_FILE", "set MCSERVE_PROMETHEUS_TOKEN_FILE to a file holding a metrics-scope token"),
    ],
)
def test_exposed_override_refuses_without_the_keys_file_or_prometheus_token(
    compose_cli: list[str], tmp_path: Path, key_files: dict[str, str], missing: str, message: str
) -> None:
    env = {k: v for k, v in key_files.items() if k != missing}
    for blank in ({}, {missing: ""}):  # unset or empty, as the Grafana admin override treats its password
        out = render(compose_cli, EXPOSED, tmp_path, MCSERVE_BIND="0.0.0.0", **env, **blank)
        assert out.returncode != 0 and message in out.stderr, out.stderr


def test_exposed_override_mounts_the_keys_and_the_token_as_secrets(
    compose_cli: list[str], tmp_path: Path, key_files: dict[str, str]
) -> None:
    data = rendered(compose_cli, EXPOSED, tmp_path, MCSERVE_BIND="0.0.0.0", **key_files)
    assert {name: s["file"] for name, s in data["secrets"].items()} == {
        "mcserve_api_keys": key_files["MCSERVE_API_KEYS_FILE"],
        "mcserve_prometheus_credentials": key_files["MCSERVE_PROMETHEUS_TOKEN_FILE"],
    }
    api, prom, grafana = (data["services"][n] for n in ("api", "prometheus", "grafana"))
    assert api["secrets"] == [{"source": "mcserve_api_keys", "target": KEYS_SECRET}]
    assert api["environment"]["MCSERVE_API_KEYS_FILE"] == KEYS_SECRET
    assert api["read_only"] is True and api.get("env_file") in (None, [])  # the bind guard is lifted, nothing else
    assert {(p["host_ip"], p["target"]) for p in api["ports"]} == {("0.0.0.0", 8000), ("0.0.0.0", 8001)}
    assert prom["secrets"] == [{"source": "mcserve_prometheus_credentials", "target": TOKEN_SECRET}]
    config = {v["target"]: v["source"] for v in prom["volumes"]}["/etc/prometheus/prometheus.yml"]
    assert config == str(ROOT / "deploy/prometheus/prometheus.exposed.yml")
    assert "/etc/prometheus/rules" in {v["target"] for v in prom["volumes"]}
    # Prometheus and Grafana have no mcserve keys: they stay on loopback unless asked otherwise
    assert host_ips(prom) == host_ips(grafana) == {"127.0.0.1"}
    assert not grafana.get("secrets")


def test_exposed_override_binds_where_asked(compose_cli: list[str], tmp_path: Path, key_files: dict[str, str]) -> None:
    data = rendered(compose_cli, EXPOSED, tmp_path, **key_files)  # the override alone means exposure: 0.0.0.0
    assert host_ips(data["services"]["api"]) == {"0.0.0.0"}
    data = rendered(
        compose_cli, EXPOSED, tmp_path, MCSERVE_BIND="192.168.1.20", MCSERVE_MONITORING_BIND="10.0.0.5", **key_files
    )
    assert host_ips(data["services"]["api"]) == {"192.168.1.20"}
    assert host_ips(data["services"]["prometheus"]) == host_ips(data["services"]["grafana"]) == {"10.0.0.5"}


def test_exposed_override_composes_with_the_gpu_and_grafana_admin_overrides(
    compose_cli: list[str], tmp_path: Path, key_files: dict[str, str]
) -> None:
    files = [*EXPOSED, "-f", "deploy/compose.gpu.yml", "-f", "deploy/compose.grafana-admin.yml"]
    data = rendered(compose_cli, files, tmp_path, MCSERVE_BIND="0.0.0.0", GRAFANA_ADMIN_PASSWORD="x", **key_files)
    api = data["services"]["api"]
    assert api["environment"]["MCSERVE_DEVICE"] == "cuda" and api["environment"]["MCSERVE_API_KEYS_FILE"] == KEYS_SECRET


def test_smoke_runs_the_exposed_override_on_host_network_with_its_generated_prometheus_config(
    compose_cli: list[str], tmp_path: Path, key_files: dict[str, str]
) -> None:
    prom_config = tmp_path / "prometheus-exposed.yml"
    data = rendered(compose_cli, SMOKE_EXPOSED, tmp_path, MCSERVE_SMOKE_PROM_CONFIG=str(prom_config), **key_files)
    api, prom = data["services"]["api"], data["services"]["prometheus"]
    assert api["network_mode"] == prom["network_mode"] == "host"
    assert not api.get("ports") and not prom.get("ports")
    assert api["environment"]["MCSERVE_HOST"] == "127.0.0.1"
    assert api["environment"]["MCSERVE_API_KEYS_FILE"] == KEYS_SECRET
    assert prom["secrets"] == [{"source": "mcserve_prometheus_credentials", "target": TOKEN_SECRET}]
    assert {v["target"]: v["source"] for v in prom["volumes"]}["/etc/prometheus/prometheus.yml"] == str(prom_config)


def test_the_secrets_land_where_the_service_and_prometheus_look(read_yaml: Callable[[str], Any]) -> None:
    exposed = read_yaml("deploy/compose.exposed.yml")
    assert exposed["services"]["api"]["environment"]["MCSERVE_API_KEYS_FILE"] == KEYS_SECRET
    jobs = read_yaml("deploy/prometheus/prometheus.exposed.yml")["scrape_configs"]
    (job,) = [j for j in jobs if j["job_name"] == "mcserve-api"]
    assert job["authorization"] == {"type": "Bearer", "credentials_file": TOKEN_SECRET}
    assert set(exposed["secrets"]) == {KEYS_SECRET.rsplit("/", 1)[1], TOKEN_SECRET.rsplit("/", 1)[1]}


def test_exposed_prometheus_config_is_the_plain_one_plus_the_bearer_token(read_yaml: Callable[[str], Any]) -> None:
    plain = read_yaml("deploy/prometheus/prometheus.yml")
    exposed = read_yaml("deploy/prometheus/prometheus.exposed.yml")
    for job in exposed["scrape_configs"]:
        if job["job_name"] == "mcserve-api":
            del job["authorization"]
    assert exposed == plain


def test_promtool_checks_the_exposed_config_with_its_token_file(promtool: str, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "deploy/prometheus", tmp_path / "prometheus")
    config = tmp_path / "prometheus/prometheus.exposed.yml"
    token = tmp_path / "prometheus.token"
    token.write_text("mcs_token\n")
    text = config.read_text()
    assert text.count(TOKEN_SECRET) == 1
    config.write_text(text.replace(TOKEN_SECRET, str(token)))
    out = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr
    assert re.search(r"SUCCESS: [1-9]\d* rules found", out.stdout + out.stderr), out.stdout
    token.unlink()  # promtool really reads the authorization block: without the file the config is refused
    out = subprocess.run([promtool, "check", "config", str(config)], capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and str(token) in out.stdout + out.stderr


def test_compose_files_hold_no_token_or_digest(root: Path) -> None:
    for path in [root / "docker-compose.yml", *sorted((root / "deploy").glob("compose*.yml"))]:
        text = path.read_text()
        assert not re.search(r"mcs_[A-Za-z0-9_-]{20,}|\b[0-9a-f]{64}\b", text), path


def test_bind_guard_file_is_empty_of_settings(root: Path) -> None:
    lines = (root / "deploy/bind-guard.env").read_text().splitlines()
    assert lines and all(line.startswith("#") for line in lines)
    compose = yaml.safe_load((root / "docker-compose.yml").read_text())
    (guard,) = compose["services"]["api"]["env_file"]
    assert guard.startswith("./deploy/bind-guard.env${MCSERVE_BIND:+ ")


def test_compose_smoke_script_parses_and_runs_the_exposed_profile(root: Path) -> None:
    script = root / "scripts/compose_smoke.sh"
    out = subprocess.run(["bash", "-n", str(script)], capture_output=True, text=True, timeout=30, check=False)
    assert out.returncode == 0, out.stderr
    text = script.read_text()
    for needle in ("deploy/compose.exposed.yml", "python -m service.keys new", "smoke_auth.py", "kill -s HUP api"):
        assert needle in text, needle


# ---- scripts/smoke_auth.py against a stand-in for the api and Prometheus ------------------------------------------

TOKENS = {"tok-infer": {"infer"}, "tok-metrics": {"metrics"}, "tok-limited": {"infer"}}
OPEN = {"/livez", "/readyz", "/v2/health/live", "/v2/health/ready"}


class StandIn(BaseHTTPRequestHandler):
    """Answers as the service with keys on should (unless a test breaks one rule), and as Prometheus's targets API."""

    broken: ClassVar[str] = ""
    limited_seen: ClassVar[int] = 0
    target: ClassVar[dict[str, str]] = {"health": "up", "lastError": ""}

    def log_message(self, *args: Any) -> None:
        pass

    def reply(self, status: int, body: Any, headers: dict[str, str] | None = None) -> None:
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status: int, code: str, headers: dict[str, str] | None = None) -> None:
        if self.path.startswith("/v2"):  # the Open Inference Protocol's error shape
            return self.reply(status, {"error": code}, headers)
        self.reply(status, {"error": {"code": code, "message": code, "field": None}}, headers)

    def handle_any(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        path = self.path.split("?")[0]
        if path == "/api/v1/targets":
            target = {"labels": {"job": "mcserve-api"}, "scrapeUrl": "http://127.0.0.1/metrics", **StandIn.target}
            return self.reply(200, {"status": "success", "data": {"activeTargets": [target]}})
        if path in OPEN:
            return self.reply(200, {"status": "ok"})
        scheme, _, token = (self.headers.get("Authorization") or "").partition(" ")
        if scheme != "Bearer" or token not in TOKENS:
            challenge = {} if self.broken == "no-challenge" else {"WWW-Authenticate": "Bearer"}
            return self.error(401, "unauthorized", challenge)
        scope = "metrics" if path == "/metrics" else "infer"
        if scope not in TOKENS[token] and not (self.broken == "metrics-open" and path == "/metrics"):
            return self.error(403, "forbidden")
        if token == "tok-limited":
            StandIn.limited_seen += 1
            if StandIn.limited_seen > 3:
                return self.error(429, "rate_limited", {"Retry-After": "20"})
        if path == "/metrics":
            return self.reply(200, b"# TYPE mcserve_requests_total counter\nmcserve_requests_total 1\n")
        return self.reply(200, {"ok": True})

    do_GET = do_POST = handle_any


@pytest.fixture
def stand_in(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    StandIn.broken, StandIn.limited_seen, StandIn.target = "", 0, {"health": "up", "lastError": ""}
    server = ThreadingHTTPServer(("127.0.0.1", 0), StandIn)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    for name in ("infer", "metrics", "limited"):
        (tmp_path / f"{name}.token").write_text(f"tok-{name}\n")
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", tmp_path
    finally:
        server.shutdown()
        server.server_close()


def smoke_auth_args(url: str, d: Path, *extra: str) -> list[str]:
    return [
        "--url", url, "--infer-token-file", str(d / "infer.token"), "--metrics-token-file", str(d / "metrics.token"),
        "--limited-token-file", str(d / "limited.token"), "--limited-rpm", "3", "--prometheus", url, *extra,
    ]  # fmt: skip


def test_smoke_auth_passes_against_a_service_that_enforces_the_keys(
    stand_in: tuple[str, Path], load_module: Callable[[str], ModuleType], capsys: pytest.CaptureFixture[str]
) -> None:
    smoke = load_module("scripts/smoke_auth.py")
    assert smoke.main(smoke_auth_args(*stand_in)) == 0
    out = capsys.readouterr().out
    assert "GET /metrics -> 403 forbidden" in out and "429 rate_limited, Retry-After: 20" in out
    assert "prometheus: target mcserve-api" in out and "smoke_auth: OK" in out


@pytest.mark.parametrize(
    ("broken", "message"),
    [
        ("metrics-open", "GET /metrics (infer key): HTTP 200, expected 403"),
        ("no-challenge", "401 without 'WWW-Authenticate: Bearer'"),
    ],
)
def test_smoke_auth_fails_when_a_rule_is_broken(
    stand_in: tuple[str, Path],
    load_module: Callable[[str], ModuleType],
    capsys: pytest.CaptureFixture[str],
    broken: str,
    message: str,
) -> None:
    StandIn.broken = broken
    smoke = load_module("scripts/smoke_auth.py")
    assert smoke.main(smoke_auth_args(*stand_in)) == 1
    assert message in capsys.readouterr().err


def test_smoke_auth_fails_when_prometheus_cannot_scrape(
    stand_in: tuple[str, Path], load_module: Callable[[str], ModuleType], capsys: pytest.CaptureFixture[str]
) -> None:
    StandIn.target = {"health": "down", "lastError": "server returned HTTP status 401 Unauthorized"}
    smoke = load_module("scripts/smoke_auth.py")
    assert smoke.main(smoke_auth_args(*stand_in, "--wait-s", "0.5")) == 1
    err = capsys.readouterr().err
    assert "target mcserve-api not up" in err and "401 Unauthorized" in err
