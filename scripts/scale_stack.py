"""The scale smoke test's stack: the processes it runs (replicas, HAProxy, Prometheus, Alertmanager, the webhook)
and the small clients that read them (HTTP, HAProxy's runtime API, Prometheus queries, the webhook's record, wrk).

Standard library only; used by scripts/scale_run.py, which holds the checks.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "scripts"))
import check_prometheus as cp  # noqa: E402

HOST = "127.0.0.1"
REPLICAS = {"r1": 18901, "r2": 18902, "r3": 18903}  # as in deploy/prometheus/scale/prometheus.yml
FRONT, PROM, ALERTMANAGER, WEBHOOK = 18910, 18920, 18930, 18940
ALERT = "McserveApiDown"
T = TypeVar("T")


class SmokeError(AssertionError):
    pass


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S', time.gmtime())}] {message}", flush=True)


def wait_for(what: str, check: Callable[[], T | None], timeout: float, every: float = 0.1) -> T:
    deadline = time.monotonic() + timeout
    last = ""
    while True:
        try:  # a socket or an API not answering yet is "not yet"; a SmokeError from check ends the wait
            value = check()
        except (OSError, ValueError, KeyError) as exc:
            value, last = None, f" (last: {type(exc).__name__}: {exc})"
        if value is not None and value is not False:
            return value
        if time.monotonic() > deadline:
            raise SmokeError(f"timed out after {timeout:.0f} s waiting for {what}{last}")
        time.sleep(every)


def http(
    url: str, body: bytes | None = None, headers: dict[str, str] | None = None, timeout: float = 10.0
) -> tuple[int, dict[str, str], bytes] | None:
    """(status, lower-cased headers, body), or None if nothing answered."""
    req = urllib.request.Request(url, data=body, headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, {k.lower(): v for k, v in resp.headers.items()}, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, {k.lower(): v for k, v in exc.headers.items()}, exc.read()
    except (OSError, urllib.error.URLError):
        return None


class Stack:
    """The processes of the test, by name; stopped by PID (SIGTERM, then SIGKILL) in ``close``."""

    def __init__(self, work: Path, python: str, models: dict[str, Path]) -> None:
        self.work = work
        self.python = python
        self.models = models
        self.procs: dict[str, subprocess.Popen[bytes]] = {}
        self.logs: dict[str, Path] = {}
        self.generation: dict[str, int] = {}

    def start(self, name: str, argv: list[str], env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
        n = self.generation[name] = self.generation.get(name, 0) + 1
        path = self.logs[name] = self.work / f"{name}.{n}.log"
        with path.open("wb") as out:
            proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        self.procs[name] = proc
        return proc

    def replica(self, name: str, model: str) -> None:
        env = {k: v for k, v in os.environ.items() if not k.startswith("MCSERVE_")}
        env.update(
            MCSERVE_MODEL_DIR=str(self.models[model]),
            MCSERVE_HOST=HOST,
            MCSERVE_PORT=str(REPLICAS[name]),
            MCSERVE_GRPC_PORT="0",
            MCSERVE_TORCH_THREADS="1",
            MCSERVE_LOG_LEVEL="info",
            MCSERVE_LOG_FORMAT="json",
            MCSERVE_ACCESS_LOG="true",
            MCSERVE_GRACEFUL_SHUTDOWN_S="5",
            MCSERVE_DEVICE="cpu",
        )
        self.start(name, [self.python, "-m", "service"], env)

    def alive(self, name: str) -> bool:
        return name in self.procs and self.procs[name].poll() is None

    def close(self) -> None:
        for name, proc in reversed(list(self.procs.items())):
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT if name == "wrk" else signal.SIGTERM)
        for proc in self.procs.values():
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)

    def tail(self, name: str, lines: int = 15) -> str:
        path = self.logs.get(name)
        if path is None or not path.exists():
            return ""
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])


# ---- HAProxy's runtime API --------------------------------------------------------------------------------------
class HAProxy:
    def __init__(self, sock: Path) -> None:
        self.sock = sock

    def command(self, cmd: str) -> str:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.settimeout(5)
            s.connect(str(self.sock))
            s.sendall(cmd.encode() + b"\n")
            chunks = []
            while chunk := s.recv(65536):
                chunks.append(chunk)
        return b"".join(chunks).decode()

    def stats(self) -> dict[str, dict[str, str]]:
        """``show stat`` by ``proxy/server`` (``api/FRONTEND``, ``mcserve/BACKEND``, ``mcserve/r1``, ...)."""
        text = self.command("show stat").lstrip("# ")
        return {f"{row['pxname']}/{row['svname']}": row for row in csv.DictReader(io.StringIO(text))}

    def status(self, server: str) -> str:
        return self.stats()[f"mcserve/{server}"]["status"]

    def set_state(self, server: str, state: str) -> None:
        out = self.command(f"set server mcserve/{server} state {state}").strip()
        if out:
            raise SmokeError(f"haproxy: set server mcserve/{server} state {state}: {out}")


COUNTERS = ("req_tot", "hrsp_2xx", "hrsp_4xx", "hrsp_5xx")
BACKEND_COUNTERS = ("wretr", "wredis", "econ", "eresp")


def snapshot(hap: HAProxy) -> dict[str, int]:
    stats = hap.stats()
    out = {k: int(stats["api/FRONTEND"][k] or 0) for k in COUNTERS}
    out.update({k: int(stats["mcserve/BACKEND"][k] or 0) for k in BACKEND_COUNTERS})
    return out


def delta(after: dict[str, int], before: dict[str, int]) -> dict[str, int]:
    return {k: after[k] - before[k] for k in after}


# ---- Prometheus and the webhook -----------------------------------------------------------------------------------
def prom(query: str, at: float | None = None) -> list[dict[str, Any]]:
    params = {"query": query} if at is None else {"query": query, "time": f"{at:.3f}"}
    data = cp.api(f"http://{HOST}:{PROM}", "/api/v1/query", **params)
    result: list[dict[str, Any]] = data["result"]
    return result


def notifications(path: Path) -> list[tuple[float, dict[str, Any]]]:
    """(received, alert) for every alert of every webhook notification so far."""
    out = []
    for line in path.read_text().splitlines():
        entry = json.loads(line)
        out.extend((entry["received"], alert) for alert in entry["payload"].get("alerts", []))
    return out


def alert_received(path: Path, instance: str, status: str, after: float) -> float | None:
    for received, alert in notifications(path):
        labels = alert.get("labels", {})
        if (
            received >= after
            and labels.get("alertname") == ALERT
            and labels.get("instance") == instance
            and alert.get("status") == status
        ):
            return received
    return None


# ---- the replicas' own counters -----------------------------------------------------------------------------------
def predict_count(port: int) -> float:
    got = http(f"http://{HOST}:{port}/metrics")
    if got is None or got[0] != 200:
        raise SmokeError(f"GET :{port}/metrics: {got and got[0]}")
    total = 0.0
    for line in got[2].decode().splitlines():
        if line.startswith("mcserve_http_requests_total{") and 'route="/predict"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


def ready(port: int) -> bool:
    got = http(f"http://{HOST}:{port}/readyz", timeout=2)
    return got is not None and got[0] == 200


def model_versions() -> dict[str, int]:
    return {
        r["metric"].get("version", "?"): int(float(r["value"][1]))
        for r in prom("count by (version) (mcserve_model_info)")
    }


# ---- wrk ------------------------------------------------------------------------------------------------------------
WRK_LUA = """-- steady POST /predict load for the scale smoke test: one real test image per request
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
local f = assert(io.open("{body}", "r"))
wrk.body = f:read("*a")
f:close()
function delay()
  return {delay_ms}
end
"""


def parse_wrk(text: str) -> dict[str, int]:
    total = re.search(r"(\d+) requests in", text)
    if total is None:
        raise SmokeError(f"wrk printed no summary:\n{text[-2000:]}")
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    sock = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text)
    errors = sum(int(x) for x in sock.groups()) if sock else 0
    return {"requests": int(total.group(1)), "non2xx": int(non2xx.group(1)) if non2xx else 0, "socket_errors": errors}
