"""Soak test and exact-count load client: ``python -m bench.soak --minutes 10`` (not run in CI).

``drive()`` is a small asyncio HTTP/1.1 client with keep-alive connections that sends an
exact number of requests, alternating ``/predict`` and ``/predict/uncertainty`` on real
Fashion-MNIST test images, and counts every answer by endpoint and status, so the counts
can be compared with the service's ``/metrics`` exactly (tests/hardening/test_load.py).

The soak starts ``python -m service`` on 127.0.0.1, drives it continuously, samples the
server's resident memory (VmRSS) every few seconds and fails (exit 1) when RSS after the
warm-up grows by 5 % or more by the end.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import gzip
import itertools
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

PREDICT = "/predict"
MC = "/predict/uncertainty"
DATA_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))


def real_images(count: int = 64, data_dir: Path = DATA_DIR) -> list[list[int]]:
    """The first ``count`` Fashion-MNIST test images as flat lists of 784 ints."""
    with gzip.open(data_dir / "t10k-images-idx3-ubyte.gz") as fh:
        raw = fh.read(16 + 784 * count)[16:]
    return [list(raw[i * 784 : (i + 1) * 784]) for i in range(count)]


def mixed_requests(host: str, port: int, images: list[list[int]], n_samples: int = 10) -> list[tuple[str, bytes]]:
    """Raw HTTP/1.1 requests, both endpoints alternating, one real image each."""
    out = []
    for i, image in enumerate(images):
        for path, body in (
            (PREDICT, {"images": [image]}),
            (MC, {"images": [image], "n_samples": n_samples, "seed": i}),
        ):
            data = json.dumps(body, separators=(",", ":")).encode()
            head = (
                f"POST {path} HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(data)}\r\n\r\n"
            )
            out.append((path, head.encode() + data))
    return out


@dataclass
class Counts:
    """What the client saw: responses by (path, status), transport errors, wall time."""

    responses: collections.Counter[tuple[str, int]] = field(default_factory=collections.Counter)
    errors: list[str] = field(default_factory=list)
    seconds: float = 0.0

    def total(self, path: str | None = None, status: int | None = None) -> int:
        return sum(
            n for (p, s), n in self.responses.items() if (path is None or p == path) and (status is None or s == status)
        )


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool]:
    """Read one response; return (status, server wants the connection closed)."""
    status_line = await reader.readline()
    if not status_line:
        raise ConnectionError("connection closed before a response")
    status = int(status_line.split(b" ", 2)[1])
    length, close = 0, False
    while True:
        line = await reader.readline()
        if line in (b"\r\n", b"\n", b""):
            break
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"connection" and value.strip().lower() == b"close":
            close = True
    await reader.readexactly(length)
    return status, close


async def _worker(host: str, port: int, jobs: Iterator[tuple[str, bytes]], counts: Counts) -> None:
    conn: tuple[asyncio.StreamReader, asyncio.StreamWriter] | None = None
    for path, request in jobs:
        try:
            if conn is None:
                conn = await asyncio.open_connection(host, port)
            reader, writer = conn
            writer.write(request)
            await writer.drain()
            status, close = await _read_response(reader)
            counts.responses[(path, status)] += 1
        except (OSError, ConnectionError, asyncio.IncompleteReadError, ValueError) as exc:
            counts.errors.append(f"{path}: {exc!r}")
            close = True
        if close and conn is not None:
            conn[1].close()
            conn = None
    if conn is not None:
        conn[1].close()


async def drive(host: str, port: int, total: int, concurrency: int, requests: list[tuple[str, bytes]]) -> Counts:
    """Send exactly ``total`` requests (cycling through ``requests``) over ``concurrency`` connections."""
    counts = Counts()
    jobs = itertools.islice(itertools.cycle(requests), total)  # shared: each worker takes the next request
    start = time.perf_counter()
    await asyncio.gather(*(_worker(host, port, jobs, counts) for _ in range(concurrency)))
    counts.seconds = time.perf_counter() - start
    return counts


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def _wait_ready(url: str, proc: subprocess.Popen[bytes], timeout: float = 120.0) -> None:
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"service exited with {proc.returncode} before it was ready")
        try:
            with urllib.request.urlopen(f"{url}/readyz", timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise SystemExit("service not ready in time")


def soak(model_dir: Path, minutes: float, warmup_s: float, port: int, concurrency: int, sample_s: float) -> int:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MCSERVE_")}
    env |= {"MCSERVE_MODEL_DIR": str(model_dir), "MCSERVE_DEVICE": "cpu", "MCSERVE_HOST": "127.0.0.1"}
    env |= {"MCSERVE_PORT": str(port), "MCSERVE_GRPC_PORT": "0", "MCSERVE_LOG_LEVEL": "warning"}
    proc = subprocess.Popen([sys.executable, "-m", "service"], env=env)
    try:
        _wait_ready(f"http://127.0.0.1:{port}", proc)
        requests = mixed_requests("127.0.0.1", port, real_images())
        start = time.monotonic()
        end = start + minutes * 60
        samples: list[tuple[float, int]] = []
        sent = failed = 0
        while time.monotonic() < end:
            counts = asyncio.run(drive("127.0.0.1", port, 200, concurrency, requests))
            sent += counts.total()
            failed += len(counts.errors) + counts.total() - counts.total(status=200)
            now = time.monotonic() - start
            if not samples or now - samples[-1][0] >= sample_s:
                samples.append((now, rss_kib(proc.pid)))
                print(f"t={now:6.0f}s  rss={samples[-1][1] / 1024:7.1f} MiB  requests={sent}", flush=True)
        after_warmup = next(rss for t, rss in samples if t >= warmup_s)
        final = samples[-1][1]
        growth = (final - after_warmup) / after_warmup * 100
        report = {
            "minutes": minutes,
            "requests": sent,
            "non_200_or_errors": failed,
            "rss_after_warmup_mib": round(after_warmup / 1024, 1),
            "rss_final_mib": round(final / 1024, 1),
            "rss_max_mib": round(max(r for _, r in samples) / 1024, 1),
            "growth_percent": round(growth, 2),
            "pass": growth < 5.0 and failed == 0,
        }
        print(json.dumps(report))
        return 0 if report["pass"] else 1
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__.split("\n\n")[0])
    p.add_argument("--model-dir", type=Path, default=Path(os.environ.get("MCSERVE_MODEL_DIR", "models/current")))
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--warmup-s", type=float, default=60.0, help="RSS growth is measured from this point")
    p.add_argument("--port", type=int, default=18390)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--sample-s", type=float, default=10.0)
    a = p.parse_args(argv)
    if not (a.model_dir / "manifest.json").is_file():
        p.error(f"no model artifact in {a.model_dir}: run `make train` or pass --model-dir")
    return soak(a.model_dir, a.minutes, a.warmup_s, a.port, a.concurrency, a.sample_s)


if __name__ == "__main__":
    sys.exit(main())
