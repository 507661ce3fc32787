"""``python -m bench overload``: is the service still responsive while a flood of max-work MC requests hits it?

One real ``python -m service`` (default limits, ``MCSERVE_TORCH_THREADS=1``, gRPC off, 127.0.0.1, ports
18600-18699) serving the trained artifact: ``--model-dir``, else models/current (random weights only when there is
none: the MC kernel's cost depends on the weights through the units the ReLU switches off). 48 flood clients, each
on its own keep-alive connection, post a max-work ``/predict/uncertainty`` request (images x n_samples =
``MCSERVE_MAX_WORK``, real Fashion-MNIST test images) back to back for the whole run, without backing off on a 503:
a hostile flood. Meanwhile three probes fire at a steady rate (every 100 ms each, open loop, on their own
connections):

* ``small``: a 1-image T=100 ``/predict/uncertainty`` (should answer fast, or be refused fast with Retry-After);
* ``invalid``: a wrong-shape ``/predict`` (must be a 422, fast: validation never waits for MC work);
* ``predict``: a valid 1-image ``/predict`` (fast: it never queues behind MC work).

The server's resident memory (VmRSS, its MC kernel process included) is sampled every 0.5 s. The flood clients
run in their own process (so their threads do not hold the probes' GIL) at a lower priority; client and server
still share the machine's cores.

What it records and the section's keys are ``bench.overloadstats`` (tested in tests/bench/test_overloadstats.py);
tests/service/test_overload.py drives a real server with :func:`drive`.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import multiprocessing
import os
import queue
import resource
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

from bench import procs
from bench.overloadstats import Answer, Observed, error_code, summarise

ROOT = Path(__file__).resolve().parent.parent
LOG_DIR = ROOT / "bench" / "results" / "logs"
PORTS = range(18600, 18700)
CLIENTS = 48
PROBE_INTERVAL_S = 0.1
PROBE_MAX_OUTSTANDING = 64  # per probe kind; a probe due while this many wait is skipped (and counted)
RSS_INTERVAL_S = 0.5
FLOOD_NICE = 5  # the flood process yields CPU to the server under test (and to the probes)
CLIENT_TIMEOUT_S = 60.0  # socket timeout of every client; an answer that never comes counts as status 0
MC_PATH = "/predict/uncertainty"
PREDICT_PATH = "/predict"
HEADERS = {"Content-Type": "application/json"}
PROBES = ("small", "invalid", "predict")


def flood_shape(max_batch: int, max_samples: int, max_work: int) -> tuple[int, int]:
    """(images, n_samples) of the heaviest request the limits admit: as many images as allowed, then passes."""
    images = min(max_batch, max_work)
    return images, max(1, min(max_samples, max_work // images))


def bodies(images: Sequence[Sequence[int]], flood_images: int, n_samples: int) -> dict[str, bytes]:
    """The request bodies, encoded once: the flood's, and one per probe (images: flat lists of 784 ints)."""

    def enc(obj: object) -> bytes:
        return json.dumps(obj, separators=(",", ":")).encode()

    if len(images) < flood_images:
        raise ValueError(f"need {flood_images} images, got {len(images)}")
    one = [list(images[0])]
    return {
        "flood": enc({"images": [list(im) for im in images[:flood_images]], "n_samples": n_samples}),
        "small": enc({"images": one, "n_samples": 100}),
        "invalid": enc({"images": [[0] * 5]}),  # wrong shape: 422 before any inference
        "predict": enc({"images": one}),
    }


# ---------------------------------------- clients


def post(conn: http.client.HTTPConnection, path: str, body: bytes) -> Answer:
    """POST ``body``, read the whole answer; a transport failure (closed, timed out) is status 0."""
    start = time.perf_counter()
    try:
        conn.request("POST", path, body, HEADERS)
        resp = conn.getresponse()
        data = resp.read()
    except (OSError, http.client.HTTPException) as exc:
        conn.close()  # the next request reconnects
        return Answer(0, time.perf_counter() - start, None, type(exc).__name__)
    seconds = time.perf_counter() - start
    code = None if resp.status == 200 else error_code(data)
    return Answer(resp.status, seconds, resp.getheader("Retry-After"), code)


def _sleep_until(wall: float) -> None:
    delay = wall - time.time()
    if delay > 0:
        time.sleep(delay)


def flood(
    host: str, port: int, body: bytes, clients: int, start_at: float, stop_at: float
) -> tuple[list[Answer], float]:
    """``clients`` threads, one keep-alive connection each, posting ``body`` from ``start_at`` until ``stop_at``
    (wall-clock, ``time.time()``); each finishes the request it has in flight. Runs in its own process; returns
    the answers and this process's CPU seconds."""
    with contextlib.suppress(OSError):
        os.nice(FLOOD_NICE)
    answers: list[Answer] = []  # list.append is atomic under the GIL

    def client() -> None:
        conn = http.client.HTTPConnection(host, port, timeout=CLIENT_TIMEOUT_S)
        _sleep_until(start_at)
        try:
            while time.time() < stop_at:
                answer = post(conn, MC_PATH, body)
                answers.append(answer)
                if answer.status == 0:
                    time.sleep(0.05)  # the server dropped us: do not spin on reconnects
        finally:
            conn.close()

    threads = [threading.Thread(target=client, daemon=True) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return answers, usage.ru_utime + usage.ru_stime


def probe(host: str, port: int, path: str, body: bytes, start_at: float, stop_at: float, out: list[Answer]) -> int:
    """Post ``body`` every ``PROBE_INTERVAL_S`` from ``start_at`` to ``stop_at``, open loop: each probe is sent on
    time in its own thread, on a connection of this probe's own keep-alive pool, whether or not the earlier ones
    have been answered (a slow answer does not thin out the probes). Returns the probes skipped because
    ``PROBE_MAX_OUTSTANDING`` were already waiting."""
    pool: queue.SimpleQueue[http.client.HTTPConnection] = queue.SimpleQueue()
    outstanding = threading.BoundedSemaphore(PROBE_MAX_OUTSTANDING)
    threads: list[threading.Thread] = []

    def one() -> None:
        try:
            conn = pool.get_nowait()
        except queue.Empty:
            conn = http.client.HTTPConnection(host, port, timeout=CLIENT_TIMEOUT_S)
        try:
            out.append(post(conn, path, body))
        finally:
            pool.put(conn)
            outstanding.release()

    skipped, slot = 0, 0
    while (due := start_at + slot * PROBE_INTERVAL_S) < stop_at:
        _sleep_until(due)
        if outstanding.acquire(blocking=False):
            threads.append(threading.Thread(target=one, daemon=True))
            threads[-1].start()
        else:
            skipped += 1
        slot += 1
    for t in threads:
        t.join()
    while not pool.empty():
        pool.get_nowait().close()
    return skipped


def rss_mb(pid: int) -> float:
    """Resident memory of ``pid`` and its descendants (the MC kernel process) in MiB (Linux /proc)."""
    total = 0.0
    for p in [pid, *_descendants(pid)]:
        try:
            lines = Path(f"/proc/{p}/status").read_text().splitlines()
        except OSError:  # gone meanwhile
            if p == pid:
                raise
            continue
        total += next((int(line.split()[1]) / 1024 for line in lines if line.startswith("VmRSS:")), 0.0)
    return total


def _descendants(pid: int) -> list[int]:
    """Every process below ``pid`` (Linux /proc/<pid>/task/*/children)."""
    out: list[int] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        for task in Path(f"/proc/{p}/task").glob("*/children"):
            try:
                kids = [int(k) for k in task.read_text().split()]
            except OSError:
                continue
            out.extend(kids)
            todo.extend(kids)
    return out


def drive(
    host: str,
    port: int,
    pid: int,
    payloads: dict[str, bytes],
    clients: int = CLIENTS,
    duration_s: float = 20.0,
    flood_work: dict[str, int] | None = None,
) -> Observed:
    """Flood a ready server at ``host:port`` (process ``pid``) for ``duration_s`` while probing it."""
    # Warm-up: every path once, so that first-call costs are not measured, and a wrong set-up fails here.
    conn = http.client.HTTPConnection(host, port, timeout=CLIENT_TIMEOUT_S)
    try:
        warm = post(conn, MC_PATH, payloads["flood"])
        if warm.status != 200:
            raise RuntimeError(f"the flood request is refused when the server is idle: {warm}")
        for name, expected in (("small", 200), ("invalid", 422), ("predict", 200)):
            answer = post(conn, MC_PATH if name == "small" else PREDICT_PATH, payloads[name])
            if answer.status != expected:
                raise RuntimeError(f"probe {name} answered {answer} on an idle server, expected {expected}")
    finally:
        conn.close()

    samples: list[float] = [rss_mb(pid)]
    done = threading.Event()

    def sample() -> None:
        while not done.wait(RSS_INTERVAL_S):
            with contextlib.suppress(OSError, RuntimeError):
                samples.append(rss_mb(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    start_at = time.time() + 1.5  # the flood process starts (spawn: a fresh interpreter) before this
    stop_at = start_at + duration_s
    probes: dict[str, list[Answer]] = {name: [] for name in PROBES}
    skipped: dict[str, int] = {}
    paths = {"small": MC_PATH, "invalid": PREDICT_PATH, "predict": PREDICT_PATH}

    def run_probe(name: str, offset: float) -> None:
        # probes start once the flood has filled the queue, and stop with it; the kinds are staggered
        begin = start_at + 0.5 + offset
        skipped[name] = probe(host, port, paths[name], payloads[name], begin, stop_at, probes[name])

    probe_threads = [
        threading.Thread(target=run_probe, args=(name, i * PROBE_INTERVAL_S / len(PROBES)), daemon=True)
        for i, name in enumerate(PROBES)
    ]
    cpu_before = _cpu_seconds(pid)
    try:
        with ProcessPoolExecutor(max_workers=1, mp_context=multiprocessing.get_context("spawn")) as pool:
            future = pool.submit(flood, host, port, payloads["flood"], clients, start_at, stop_at)
            for t in probe_threads:
                t.start()
            for t in probe_threads:
                t.join()
            flood_answers, client_cpu = future.result(timeout=duration_s + CLIENT_TIMEOUT_S + 60)
    finally:
        done.set()
        sampler.join()
    cpu_after = _cpu_seconds(pid)
    return Observed(
        clients=clients,
        duration_s=duration_s,
        flood=flood_answers,
        probes=probes,
        rss_mb=samples,
        rss_end_mb=rss_mb(pid),
        flood_work=dict(flood_work or {}),
        probes_skipped=skipped,
        server_cpu_s=None if cpu_before is None or cpu_after is None else cpu_after - cpu_before,
        flood_client_cpu_s=client_cpu,
    )


def _cpu_seconds(pid: int) -> float | None:
    """User+system CPU seconds of process ``pid`` so far (Linux /proc), or None."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except (OSError, IndexError):
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# ---------------------------------------- the section


def free_port(ports: range = PORTS) -> int:
    return procs.free_ports(ports)[0]


def _model(model_dir: Path | None, scratch: Path) -> tuple[Path, str]:
    """The trained artifact (``--model-dir``, else models/current), random weights only when there is none."""
    from bench import artifact

    if model_dir is None and (ROOT / "models" / "current" / "manifest.json").is_file():
        model_dir = ROOT / "models" / "current"
    return artifact.resolve(model_dir, scratch)


def _print(out: dict[str, Any], say: Callable[[str], None] = print) -> None:
    def f(value: object, unit: str = "") -> str:
        return "n/a" if value is None else f"{value}{unit}"

    say(
        f"bench overload: {out['overload_clients']} clients x {out['overload_duration_s']} s: "
        f"{out['overload_flood_requests']} flood answers ({out['overload_flood_ok']} ok, "
        f"{out['overload_flood_503']} 503, {out['overload_flood_bad_statuses']} other), "
        f"p50 {f(out['overload_flood_p50_s'], ' s')}, max {f(out['overload_flood_max_s'], ' s')}"
    )
    say(
        f"bench overload: small T=100: {out['overload_small_requests']} probes, {out['overload_small_ok']} ok, "
        f"p50 {f(out['overload_small_p50_s'])} "
        f"p95 {f(out['overload_small_p95_s'], ' s')} (200s); 503 fraction {out['overload_small_503_fraction']}, "
        f"503 p95 {f(out['overload_small_503_p95_s'], ' s')}, Retry-After on all: "
        f"{out['overload_small_503_retry_after']}"
    )
    say(
        f"bench overload: 422 p95 {f(out['overload_invalid_p95_ms'], ' ms')} "
        f"({out['overload_invalid_not_422']} not 422); /predict p95 {f(out['overload_predict_p95_ms'], ' ms')} "
        f"({out['overload_predict_not_200']} not 200); RSS {out['overload_rss_start_mb']} -> peak "
        f"{out['overload_rss_peak_mb']} -> end {out['overload_rss_end_mb']} MiB"
    )
    say(
        f"bench overload: CPU: server {f(out['overload_server_cpu_s'], ' s')}, flood clients "
        f"{f(out['overload_flood_client_cpu_s'], ' s')}; probes skipped {out['overload_probes_skipped']}"
    )


def run(quick: bool, model_dir: Path | None, server_threads: int = 1) -> dict[str, Any]:
    from bench import artifact, procs
    from service.settings import Settings

    duration_s = 8.0 if quick else 20.0
    defaults = {name: f.default for name, f in Settings.model_fields.items()}
    with tempfile.TemporaryDirectory(prefix="bench-overload-") as tmp:
        model_dir, model_note = _model(model_dir, Path(tmp) / "model")
        port = free_port()
        # default limits: no MCSERVE_* setting of the caller's environment leaks into the server under test
        env = {
            k: v
            for k, v in procs.server_env(model_dir, server_threads, ROOT).items()
            if not k.startswith("MCSERVE_") or k == "MCSERVE_MODEL_DIR"
        }
        env |= {
            "MCSERVE_TORCH_THREADS": str(server_threads),
            "MCSERVE_HOST": "127.0.0.1",
            "MCSERVE_PORT": str(port),
            "MCSERVE_GRPC_PORT": "0",
            "MCSERVE_LOG_LEVEL": "warning",
        }
        base = f"http://127.0.0.1:{port}"
        with procs.serve("mcserve_overload", [sys.executable, "-m", "service"], f"{base}/readyz", env, LOG_DIR) as srv:
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
            conn.request("GET", "/info")
            limits = json.loads(conn.getresponse().read())["limits"]
            conn.close()
            images, n_samples = flood_shape(limits["max_batch"], limits["max_samples"], limits["max_work"])
            tensor, images_note = artifact.test_images(images)
            pixels = [[int(v) for v in row] for row in tensor.tolist()]
            payloads = bodies(pixels, images, n_samples)
            work = {"images": images, "n_samples": n_samples, "body_bytes": len(payloads["flood"])}
            print(
                f"bench overload: {CLIENTS} clients flood {images} images x {n_samples} passes "
                f"({len(payloads['flood'])} B) for {duration_s:g} s ...",
                flush=True,
            )
            obs = drive("127.0.0.1", port, srv.proc.pid, payloads, CLIENTS, duration_s, work)
    out = summarise(obs)
    _print(out)
    out["conditions"] = {
        "server": "python -m service (uvicorn, 1 worker process), default limits, gRPC off",
        "server_torch_threads": server_threads,
        "model": model_note,
        "images": images_note,
        "limits": limits,
        "admission": {k: defaults[k] for k in ("max_concurrency", "max_queued_work", "queue_timeout_s")},
        "flood": f"{CLIENTS} threads in one separate client process (nice +{FLOOD_NICE}), one keep-alive "
        "http.client connection each, posting one max-work /predict/uncertainty body back to back "
        "(no back-off on 503); each finishes its last request after the run ends",
        "flood_request": work,
        "probes": f"every {PROBE_INTERVAL_S * 1e3:g} ms each kind, open loop (sent on time whether or not earlier "
        f"ones were answered, at most {PROBE_MAX_OUTSTANDING} waiting per kind), each kind on its own keep-alive "
        "connections, from threads of the parent process, from 0.5 s into the flood: small = 1 image, "
        "n_samples=100, /predict/uncertainty; invalid = a 5-value image to /predict (422); predict = 1 image "
        "/predict",
        "probe_body_bytes": {name: len(payloads[name]) for name in PROBES},
        "duration_s": duration_s,
        "latency": "client-side, from sending the request to reading the last byte of the answer",
        "percentiles": "linear interpolation between ranks; overload_small_p50_s/p95_s over the 200 answers, "
        "overload_small_503_* over the 503s",
        "rss": f"server VmRSS (its MC kernel process included) every {RSS_INTERVAL_S:g} s from after the warm-up "
        "(start) to after the last flood answer (end)",
        "note": "the clients share the machine's cores with the server (2 cores here): the flood's sending and "
        "the probes take CPU the server could have used",
    }
    return out
