"""API keys against real servers (``python -m service``: uvicorn and the gRPC server), over REST, v2 REST and v2
gRPC, in plaintext and over TLS with a self-signed certificate made by ``openssl`` at test time.

The matrix: no key, wrong key, wrong scope, right scope, each limit crossed (429 with Retry-After, another key
unaffected), health open; key rotation by SIGHUP under load with no failed request for a key that stays valid;
no token or Authorization header in the logs or the metrics.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import httpx
import numpy as np
import pytest
import tritonclient.grpc as grpcclient
from grpc_health.v1 import health_pb2, health_pb2_grpc
from tritonclient.utils import InferenceServerException

from bench import procs

pytestmark = pytest.mark.slow  # real servers, child processes or training runs: `make test`, not test-fast

REPO = Path(__file__).resolve().parents[2]
PORTS = range(18750, 18800)  # reserved for these tests
M = "fashion-mnist-dropout-mlp"
IMAGE = [0.0] * 784


@dataclass
class Keys:
    path: Path
    tokens: dict[str, str]  # key id -> token

    def header(self, key_id: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.tokens[key_id]}"}


def _table(key_id: str, token: str, scopes: list[str], extra: str = "") -> str:
    digest = hashlib.sha256(token.encode()).hexdigest()
    quoted = ", ".join(f'"{s}"' for s in scopes)
    return f'[[keys]]\nid = "{key_id}"\nsha256 = "{digest}"\nscopes = [{quoted}]\n{extra}\n'


SPECS = {
    "app": (["infer"], ""),
    "mon": (["metrics"], ""),
    "adm": (["admin"], ""),
    "slow": (["infer"], "requests_per_minute = 3"),
    "mc": (["infer"], "mc_passes_per_minute = 250"),
    "new": (["infer"], ""),  # not in the file at first: the rotation test adds it
}


def write_keys(path: Path, tokens: dict[str, str], ids: list[str]) -> None:
    path.write_text("".join(_table(i, tokens[i], *SPECS[i]) for i in ids))


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> Keys:
    tokens = {i: "mcs_" + secrets.token_urlsafe(24) for i in SPECS}
    path = tmp_path_factory.mktemp("keys") / "keys.toml"
    write_keys(path, tokens, list(SPECS)[:-1])
    return Keys(path, tokens)


@dataclass
class Server:
    proc: subprocess.Popen[bytes]
    url: str
    grpc: str
    cert: Path | None
    log: Path

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=str(self.cert) if self.cert else True, timeout=30, **kw)


def _free_ports(n: int) -> list[int]:
    return procs.free_ports(PORTS, n)


def start(model: Path, keys: Path, log: Path, tls: tuple[Path, Path] | None = None) -> Server:
    http_port, grpc_port = _free_ports(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCSERVE_")}
    env |= {
        "MCSERVE_MODEL_DIR": str(model), "MCSERVE_DEVICE": "cpu", "MCSERVE_HOST": "127.0.0.1",
        "MCSERVE_PORT": str(http_port), "MCSERVE_GRPC_PORT": str(grpc_port), "MCSERVE_LOG_LEVEL": "info",
        "MCSERVE_TORCH_THREADS": "1", "MCSERVE_API_KEYS_FILE": str(keys), "MCSERVE_DEFAULT_SAMPLES": "20",
        "PYTHONPATH": str(REPO),
    }  # fmt: skip
    if tls:
        env |= {"MCSERVE_TLS_CERTFILE": str(tls[0]), "MCSERVE_TLS_KEYFILE": str(tls[1])}
    with open(log, "wb") as sink:
        proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=sink, stderr=sink)
    scheme = "https" if tls else "http"
    server = Server(proc, f"{scheme}://127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", tls[0] if tls else None, log)
    with server.client() as c:

        def ready() -> bool:
            try:
                return c.get("/readyz").status_code == 200  # open without a key
            except httpx.TransportError:
                return False

        procs.wait_ready(proc, ready, log.read_text)
    return server


def stop(server: Server) -> str:
    server.proc.send_signal(signal.SIGTERM)
    server.proc.wait(timeout=30)
    return server.log.read_text()


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """A self-signed certificate for localhost / 127.0.0.1, made with the real openssl."""
    d = tmp_path_factory.mktemp("tls")
    crt, key = d / "server.crt", d / "server.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=localhost",
         "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(crt)],
        check=True, capture_output=True,
    )  # fmt: skip
    return crt, key


@pytest.fixture(scope="module", params=["plain", "tls"])
def server(
    request: pytest.FixtureRequest, trained_artifact: Path, keys: Keys, cert: tuple[Path, Path],
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Server]:  # fmt: skip
    log = tmp_path_factory.mktemp("log") / "server.log"
    # each server gets its own copy of the keys file: the rotation test rewrites it
    own = log.parent / "keys.toml"
    own.write_text(keys.path.read_text())
    srv = start(trained_artifact, own, log, cert if request.param == "tls" else None)
    yield srv
    text = stop(srv)
    for token in keys.tokens.values():  # no token ever reaches the logs
        assert token not in text
    assert "Bearer " not in text and "authorization" not in text.lower().replace("authorization header", "")


def _v2_infer(model: str = M, parameters: dict[str, Any] | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {"inputs": [{"name": "images", "shape": [1, 784], "datatype": "FP32", "data": IMAGE}]}
    if parameters:
        body["parameters"] = parameters
    return body


REST_CASES = [  # (key or None or "bogus", method, path, expected status)
    (None, "POST", "/predict", 401),
    ("bogus", "POST", "/predict", 401),
    ("mon", "POST", "/predict", 403),
    ("app", "POST", "/predict", 200),
    ("adm", "POST", "/predict", 200),
    (None, "GET", "/metrics", 401),
    ("app", "GET", "/metrics", 403),
    ("mon", "GET", "/metrics", 200),
    ("adm", "GET", "/metrics", 200),
    (None, "GET", "/info", 401),
    ("app", "GET", "/info", 200),
    (None, "GET", "/livez", 200),
    (None, "GET", "/readyz", 200),
    (None, "GET", "/v2/health/ready", 200),
    (None, "GET", "/v2/health/live", 200),
    (None, "GET", f"/v2/models/{M}", 401),
    ("app", "GET", f"/v2/models/{M}", 200),
    (None, "POST", f"/v2/models/{M}/infer", 401),
    ("bogus", "POST", f"/v2/models/{M}/infer", 401),
    ("mon", "POST", f"/v2/models/{M}/infer", 403),
    ("app", "POST", f"/v2/models/{M}/infer", 200),
]


@pytest.mark.parametrize(("key", "method", "path", "status"), REST_CASES)
def test_http_matrix(server: Server, keys: Keys, key: str | None, method: str, path: str, status: int) -> None:
    headers = {} if key is None else {"Authorization": "Bearer mcs_bogus"} if key == "bogus" else keys.header(key)
    body = None
    if method == "POST":
        body = _v2_infer() if path.startswith("/v2") else {"images": [IMAGE]}
    with server.client() as c:
        r = c.request(method, path, json=body, headers=headers)
    assert r.status_code == status, r.text
    if status in (401, 403):
        if path.startswith("/v2"):
            assert isinstance(r.json()["error"], str)  # v2's error shape
        else:
            assert r.json()["error"]["code"] == ("unauthorized" if status == 401 else "forbidden")
    if status == 401:
        assert r.headers["www-authenticate"].startswith("Bearer")


def test_request_rate_limit_is_per_key(server: Server, keys: Keys) -> None:
    with server.client() as c:
        codes = [
            c.post("/predict", json={"images": [IMAGE]}, headers=keys.header("slow")).status_code for _ in range(4)
        ]
        assert codes[:3] == [200, 200, 200] and codes[3] == 429
        r = c.post(f"/v2/models/{M}/infer", json=_v2_infer(), headers=keys.header("slow"))
        assert (
            r.status_code == 429 and int(r.headers["retry-after"]) >= 1 and "requests_per_minute" in r.json()["error"]
        )
        r = c.post("/predict", json={"images": [IMAGE]}, headers=keys.header("slow"))
        assert (
            r.status_code == 429 and r.json()["error"]["code"] == "rate_limited" and int(r.headers["retry-after"]) >= 1
        )
        assert c.post("/predict", json={"images": [IMAGE]}, headers=keys.header("app")).status_code == 200


def test_mc_work_limit_counts_passes(server: Server, keys: Keys) -> None:
    with server.client() as c:
        h = keys.header("mc")
        assert c.post("/predict/uncertainty", json={"images": [IMAGE], "n_samples": 100}, headers=h).status_code == 200
        r = c.post("/predict/uncertainty", json={"images": [IMAGE, IMAGE], "n_samples": 100}, headers=h)
        assert r.status_code == 429 and "mc_passes_per_minute" in r.json()["error"]["message"], r.text
        assert int(r.headers["retry-after"]) >= 1
        r = c.post(f"/v2/models/{M}-mc/infer", json=_v2_infer(M + "-mc", {"mc_samples": 200}), headers=h)
        assert r.status_code == 429 and "mc_passes_per_minute" in r.json()["error"]
        # /predict costs no MC work, and other keys have their own budgets
        assert c.post("/predict", json={"images": [IMAGE]}, headers=h).status_code == 200
        r = c.post("/predict/uncertainty", json={"images": [IMAGE], "n_samples": 200}, headers=keys.header("app"))
        assert r.status_code == 200


def _grpc_client(server: Server) -> grpcclient.InferenceServerClient:
    if server.cert is None:
        return grpcclient.InferenceServerClient(url=server.grpc)
    return grpcclient.InferenceServerClient(url=server.grpc, ssl=True, root_certificates=str(server.cert))


def _grpc_infer(server: Server, headers: dict[str, str] | None, model: str = M, **params: Any) -> Any:
    inp = grpcclient.InferInput("images", [1, 784], "FP32")
    inp.set_data_from_numpy(np.zeros((1, 784), dtype=np.float32))
    return _grpc_client(server).infer(model, [inp], headers=headers, parameters=params or None)


@pytest.mark.parametrize(
    ("key", "code"),
    [(None, "UNAUTHENTICATED"), ("bogus", "UNAUTHENTICATED"), ("mon", "PERMISSION_DENIED"), ("app", None)],
)
def test_grpc_matrix(server: Server, keys: Keys, key: str | None, code: str | None) -> None:
    headers = None if key is None else {"authorization": "Bearer mcs_bogus"} if key == "bogus" else {
        "authorization": keys.header(key)["Authorization"]
    }  # fmt: skip
    if code is None:
        assert _grpc_infer(server, headers).as_numpy("probabilities").shape == (1, 10)
        assert _grpc_client(server).is_server_ready(headers=headers)
        return
    with pytest.raises(InferenceServerException) as info:
        _grpc_infer(server, headers)
    assert code in str(info.value.status()), info.value
    with pytest.raises(InferenceServerException):
        _grpc_client(server).get_model_metadata(M, headers=headers)


def test_grpc_limits_and_open_health(server: Server, keys: Keys) -> None:
    h = {"authorization": keys.header("mc")["Authorization"]}
    with pytest.raises(InferenceServerException) as info:  # 250 passes a minute: at most one of these fits
        for _ in range(3):
            _grpc_infer(server, h, M + "-mc", mc_samples=200)
    assert "RESOURCE_EXHAUSTED" in str(info.value.status()) and "mc_passes_per_minute" in str(info.value)
    if server.cert is None:
        channel = grpc.insecure_channel(server.grpc)
    else:
        channel = grpc.secure_channel(server.grpc, grpc.ssl_channel_credentials(server.cert.read_bytes()))
    with channel:
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING  # no key needed


def test_plaintext_reaches_only_the_plain_server(server: Server) -> None:
    plain = server.url.replace("https://", "http://") + "/livez"
    if server.cert is None:
        assert httpx.get(plain, timeout=5).status_code == 200
        return
    with pytest.raises(httpx.TransportError):
        httpx.get(plain, timeout=5)


def test_keys_rotate_on_sighup_under_load(server: Server, keys: Keys) -> None:
    """Under steady load with the ``app`` key (it stays), the file loses ``adm`` and gains ``new``; SIGHUP."""
    own = server.log.parent / "keys.toml"
    failures: list[int] = []
    done = 0
    stop_at = threading.Event()

    def load() -> None:
        nonlocal done
        with server.client() as c:
            while not stop_at.is_set():
                r = c.post("/predict", json={"images": [IMAGE]}, headers=keys.header("app"))
                done += 1
                if r.status_code != 200:
                    failures.append(r.status_code)

    threads = [threading.Thread(target=load) for _ in range(4)]
    for t in threads:
        t.start()
    time.sleep(0.5)
    with server.client() as c:
        assert c.get("/info", headers=keys.header("adm")).status_code == 200
        assert c.get("/info", headers=keys.header("new")).status_code == 401
        own.write_text("[[keys]\nbroken")  # a bad file first: logged, the old keys stay
        server.proc.send_signal(signal.SIGHUP)
        time.sleep(0.5)
        assert c.get("/info", headers=keys.header("adm")).status_code == 200
        write_keys(own, keys.tokens, ["app", "mon", "slow", "mc", "new"])
        server.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 10
        while c.get("/info", headers=keys.header("new")).status_code != 200:
            assert time.monotonic() < deadline, "the new key never took effect"
            time.sleep(0.1)
        assert c.get("/info", headers=keys.header("adm")).status_code == 401
    time.sleep(0.5)
    stop_at.set()
    for t in threads:
        t.join()
    assert done > 50 and failures == [], (done, failures[:5])
    log = server.log.read_text()
    assert "keys file not reloaded" in log and "keys file reloaded: 5 keys" in log


def test_denials_are_logged_and_counted_without_tokens(server: Server, keys: Keys) -> None:
    with server.client() as c:
        c.post("/predict", json={"images": [IMAGE]}, headers={"Authorization": "Bearer mcs_leaked_token_value"})
        text = c.get("/metrics", headers=keys.header("mon")).text
    denied = [line for line in text.splitlines() if line.startswith("mcserve_auth_denied_total{")]
    assert any('reason="invalid"' in line and not line.endswith(" 0.0") for line in denied)
    assert 'mcserve_key_requests_total{key="app",protocol="rest"}' in text
    assert "mcs_" not in text and "Bearer" not in text
    time.sleep(0.2)
    log = server.log.read_text()
    assert "denied POST /predict (rest): invalid, key anonymous" in log
    assert "mcs_leaked_token_value" not in log
