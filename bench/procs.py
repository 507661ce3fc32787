"""Start a server under test in its own process group, wait until it answers, stop it by PID."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path


@dataclass
class Server:
    name: str
    proc: subprocess.Popen[bytes]
    ready_s: float
    log_path: Path


def server_env(model_dir: Path, threads: int, root: Path) -> dict[str, str]:
    """The environment of every server under test: the same artifact and thread count for mcserve and the peers."""
    return {
        **os.environ,
        "PYTHONPATH": str(root),
        "MCSERVE_MODEL_DIR": str(model_dir),
        "MCSERVE_TORCH_THREADS": str(threads),
        "BENCH_MODEL_DIR": str(model_dir),
        "BENCH_TORCH_THREADS": str(threads),
        "OMP_NUM_THREADS": str(threads),
    }


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """HTTP status of a GET, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (OSError, ValueError):
        return None


def ready_status(url: str, timeout: float = 2.0, full_speed: bool = True) -> int | None:
    """``http_status`` of ``url``; for ``tcp://HOST:PORT`` (a gRPC-only server) 200 once the port accepts. With
    ``full_speed``, a ``/readyz`` that says ``"mc_kernel": "starting"`` counts as 503: mcserve answers meanwhile,
    but measurements wait for its MC kernel process."""
    if full_speed and url.endswith("/readyz"):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:
                body = json.loads(resp.read() or b"{}")
                return 503 if isinstance(body, dict) and body.get("mc_kernel") == "starting" else int(resp.status)
        except urllib.error.HTTPError as exc:
            return int(exc.code)
        except (OSError, ValueError):
            return None
    if not url.startswith("tcp://"):
        return http_status(url, timeout)
    host, _, port = url.removeprefix("tcp://").rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout):
            return 200
    except (OSError, ValueError):
        return None


def group_cpu_seconds(pgid: int) -> float:
    """User+system CPU seconds of every live process in process group ``pgid`` (Linux /proc).

    CPU time per request is far less sensitive to other load on the machine than wall-clock req/s.
    """
    tick = os.sysconf("SC_CLK_TCK")
    total = 0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        # after the command name: state ppid pgrp session ... utime(12th) stime(13th)
        if int(fields[2]) == pgid:
            total += int(fields[11]) + int(fields[12])
    return total / tick


@contextlib.contextmanager
def paused(pgids: Collection[int]) -> Iterator[None]:
    """Stop every process of each process group in ``pgids`` (SIGSTOP) for the ``with`` block, then let them go on
    (SIGCONT, also when the block raises): servers left idle while another is measured use no CPU meanwhile (an
    idle LitServe polls its queues at about 0.1 of a core, TorchServe and Triton keep threads ticking)."""
    stopped: list[int] = []
    try:
        for pgid in pgids:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGSTOP)
                stopped.append(pgid)
        yield
    finally:
        for pgid in stopped:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGCONT)


def log_tail(path: Path, chars: int = 1500) -> str:
    try:
        return path.read_text(errors="replace")[-chars:]
    except OSError:
        return ""


def stop(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    """SIGTERM then SIGKILL the process group this module created for ``proc`` (by its PID)."""
    if proc.poll() is None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(timeout=grace_s)
    # children (workers) may outlive the leader; the group id is the leader's PID
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=5)


def free_ports(ports: range, n: int = 1, exclude: Collection[int] = ()) -> list[int]:
    """``n`` ports of ``ports``, none in ``exclude``, that nothing listens on now (each benchmark and test module keeps
    its own range)."""
    found: list[int] = []
    for port in ports:
        if port in exclude:
            continue
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            try:
                sock.bind(("127.0.0.1", port))
            except OSError:
                continue
        found.append(port)
        if len(found) == n:
            return found
    raise RuntimeError(f"no {n} free port(s) in {ports.start}-{ports.stop - 1}")


def wait_ready(
    proc: subprocess.Popen[bytes], ready: Callable[[], bool], output: Callable[[], str], timeout_s: float = 120.0
) -> None:
    """Poll ``ready()`` (connection errors count as not yet) until it is true; RuntimeError with ``output()``'s tail
    when the process exits first, or after ``timeout_s`` (the process is killed then)."""
    deadline = time.monotonic() + timeout_s
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {output()[-2000:]}")
        try:
            if ready():
                return
        except OSError:  # connection refused, reset, timeout (httpx's errors are not OSErrors: callers map them)
            pass
        if time.monotonic() > deadline:
            proc.kill()
            raise RuntimeError(f"server never became ready in {timeout_s:.0f} s: {output()[-2000:]}")
        time.sleep(0.2)


@contextlib.contextmanager
def serve(
    name: str,
    cmd: Sequence[str],
    ready_url: str,
    env: Mapping[str, str],
    log_dir: Path,
    timeout_s: float = 120.0,
    cwd: Path | None = None,
    full_speed: bool = True,
) -> Iterator[Server]:
    """Run ``cmd`` until ``ready_url`` answers 200 (``tcp://HOST:PORT``: accepts a connection; ``full_speed``: see
    :func:`ready_status`), yield it, then stop it.

    Raises RuntimeError with the log's tail when the process dies or never gets ready.
    """
    log_dir.mkdir(parents=True, exist_ok=True)
    log_path = log_dir / f"{name}.log"
    with open(log_path, "wb") as log:
        start = time.perf_counter()
        proc = subprocess.Popen(
            list(cmd), stdout=log, stderr=subprocess.STDOUT, env=dict(env), cwd=cwd, start_new_session=True
        )
        try:
            while ready_status(ready_url, full_speed=full_speed) != 200:
                if proc.poll() is not None:
                    raise RuntimeError(f"{name} exited with {proc.returncode} before ready: {log_tail(log_path)}")
                if time.perf_counter() - start > timeout_s:
                    raise RuntimeError(f"{name} not ready after {timeout_s:.0f} s: {log_tail(log_path)}")
                time.sleep(0.05)
            yield Server(name, proc, time.perf_counter() - start, log_path)
        finally:
            stop(proc)
