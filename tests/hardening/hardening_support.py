"""A real ``python -m service`` (uvicorn) subprocess on 127.0.0.1, for the hardening tests.

Ports come from the range 18300-18399 reserved for these tests; every server is
stopped by PID in the fixture that started it.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx

from bench.procs import free_ports

REPO = Path(__file__).resolve().parents[2]
PORTS = range(18300, 18400)
# Small limits so that every boundary is cheap to reach; the defaults are documented in docs/hardening.md.
LIMITS = {
    "max_batch": 8,
    "default_samples": 10,
    "max_samples": 200,
    "max_work": 800,
    "max_body_bytes": 262_144,
    "max_png_bytes": 4096,
}
_used: set[int] = set()


def free_port() -> int:
    """A port in 18300-18399 that nothing listens on and no other test of this run took."""
    port = free_ports(PORTS, exclude=_used)[0]
    _used.add(port)
    return port


def service_env(model_dir: Path | str, port: int, **settings: object) -> dict[str, str]:
    """The environment of a CPU service on ``port``; ``settings`` are ``MCSERVE_<NAME>`` overrides."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCSERVE_")}
    env.update(
        {
            "MCSERVE_MODEL_DIR": str(model_dir),
            "MCSERVE_DEVICE": "cpu",
            "MCSERVE_HOST": "127.0.0.1",
            "MCSERVE_PORT": str(port),
            "MCSERVE_LOG_LEVEL": "warning",
            "MCSERVE_TORCH_THREADS": "1",
            "MCSERVE_GRPC_PORT": "0",  # these servers are about HTTP; tests/service/v2 covers gRPC
        }
    )
    env.update({f"MCSERVE_{k.upper()}": str(v) for k, v in settings.items()})
    return env


@dataclass
class Server:
    """A running service process and where it listens."""

    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")

    def ready(self) -> bool:
        try:
            return httpx.get(f"{self.url}/readyz", timeout=2).status_code == 200
        except httpx.HTTPError:
            return False

    def wait_ready(self, timeout: float = 90.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.output()}")
            if self.ready():
                return
            time.sleep(0.1)
        raise RuntimeError(f"service not ready within {timeout} s:\n{self.output()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30.0) -> int:
        """Send ``sig`` to this PID, wait for the exit code; SIGKILL (and fail later) only if it hangs."""
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
                raise
        return self.proc.returncode

    def metric(self, name: str, **labels: str) -> float:
        """Sum of the samples of ``name`` whose labels include ``labels`` (0 when absent)."""
        return metric_value(httpx.get(f"{self.url}/metrics", timeout=10).text, name, **labels)


def metric_value(text: str, name: str, **labels: str) -> float:
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{") and not line.startswith(name + " "):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


def start_server(
    model_dir: Path | str, log: Path, settings: dict[str, object] | None = None, port: int | None = None
) -> Server:
    """Start ``python -m service`` (not yet ready: call ``wait_ready``); ``settings`` as in ``service_env``."""
    port = port or free_port()
    fh = log.open("wb")
    proc = subprocess.Popen(
        [sys.executable, "-m", "service"],
        cwd=REPO,
        env=service_env(model_dir, port, **(settings or {})),
        stdout=fh,
        stderr=subprocess.STDOUT,
    )
    fh.close()
    return Server(proc=proc, port=port, log=log)


def running_server(model_dir: Path | str, log: Path, **settings: object) -> Iterator[Server]:
    """Generator for fixtures: a ready server, stopped (by PID) afterwards whatever happened."""
    server = start_server(model_dir, log, settings)
    try:
        server.wait_ready()
        yield server
    finally:
        if server.proc.poll() is None:
            server.stop()
