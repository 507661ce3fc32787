"""A real ``python -m service`` subprocess (uvicorn + the gRPC server) for the v2 protocol tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from bench import procs

REPO = Path(__file__).resolve().parents[3]
PORTS = range(18400, 18500)  # reserved for these tests


@dataclass(frozen=True)
class V2Server:
    http: str  # host:port
    grpc: str  # host:port
    proc: subprocess.Popen[bytes]
    settings: dict[str, str]

    @property
    def url(self) -> str:
        return f"http://{self.http}"


def free_ports(n: int) -> list[int]:
    return procs.free_ports(PORTS, n)


def start_server(model_dir: Path, **settings: str) -> V2Server:
    http_port, grpc_port = free_ports(2)
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCSERVE_")}
    values = {
        "MODEL_DIR": str(model_dir), "DEVICE": "cpu", "HOST": "127.0.0.1", "PORT": str(http_port),
        "GRPC_PORT": str(grpc_port), "LOG_LEVEL": "warning", "TORCH_THREADS": "1",
    }  # fmt: skip
    values |= {k.upper(): v for k, v in settings.items()}
    env |= {f"MCSERVE_{k}": v for k, v in values.items()}
    env["PYTHONPATH"] = str(REPO)
    proc = subprocess.Popen(
        [sys.executable, "-m", "service"], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    )
    server = V2Server(f"127.0.0.1:{http_port}", f"127.0.0.1:{grpc_port}", proc, values)
    procs.wait_ready(proc, lambda: _ready(f"{server.url}/v2/health/ready"), lambda: _stderr(proc))
    return server


def _ready(url: str) -> bool:
    try:
        return httpx.get(url, timeout=2).status_code == 200
    except httpx.TransportError:
        return False


def _stderr(proc: subprocess.Popen[bytes]) -> str:
    return proc.communicate()[1].decode() if proc.poll() is not None else ""


def stop_server(server: V2Server) -> str:
    """SIGTERM, as Docker sends it: both servers drain and the process exits 0; returns its stderr."""
    server.proc.send_signal(signal.SIGTERM)
    try:
        _, stderr = server.proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        server.proc.kill()
        raise
    assert server.proc.returncode == 0, stderr.decode()
    return stderr.decode()


@pytest.fixture(scope="package")
def v2_server(trained_artifact: Path) -> Iterator[V2Server]:
    """One real server (HTTP and gRPC) for the package's tests, with small limits that are cheap to reach."""
    server = start_server(trained_artifact, max_batch="8", max_samples="200", max_work="800", default_samples="20")
    try:
        yield server
    finally:
        stop_server(server)
