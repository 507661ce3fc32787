"""``python -m bench v2``: mcserve's Open Inference Protocol (v2) endpoints against Triton, under perf_analyzer.

Three servers on 127.0.0.1 (ports 18200-18299), one after the other, each serving the same artifact:

- mcserve (``python -m service``): v2 HTTP on MCSERVE_PORT, v2 gRPC on MCSERVE_GRPC_PORT, both models
  (``M`` eval and ``M-mc``, MC dropout with mc_samples = 100);
- Triton through PyTriton (``bench/peers/triton_v2.py``): the same two models by the same names, HTTP and gRPC;
- the gRPC floor (``bench/peers/grpc_floor.py``): a bare grpc.aio servicer answering ModelInfer with a constant.

perf_analyzer (``bench/perf.py``) drives every endpoint with the same flags at concurrency 1, 16 and 64, one real
Fashion-MNIST test image per request as binary FP32 [1, 784]. A server that cannot run gets ``null`` numbers and
a ``<label>_error`` string instead of disappearing from the results.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import artifact, perf, procs
from bench.timing import ratio

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = (1, 16, 64)
MC_SAMPLES = 100
LOG_DIR = ROOT / "bench" / "results" / "logs"  # git-ignored; server logs stay for post-mortems
HOST = "127.0.0.1"
MCSERVE_PORTS = (18210, 18211)  # HTTP, gRPC
TRITON_PORT = 18220  # HTTP; +1 gRPC, +2 metrics
FLOOR_PORT = 18290
GRPC_ONLY_VERSION = "1"  # the floor's (it has no HTTP metadata to ask)
SUFFIXES = ("infer_per_s", "p50_ms", "p99_ms", "errors", "stable", "wall_s", "server_cpu_ms_per_infer")


@dataclass
class Target:
    """One perf_analyzer target: a model on one protocol of a server, reported under ``label``."""

    label: str
    model: str
    protocol: str
    url: str  # HOST:PORT, as perf_analyzer's -u takes it


@dataclass
class ServerSpec:
    name: str
    cmd: list[str]
    ready_url: str
    targets: list[Target]
    env: dict[str, str] = field(default_factory=dict)
    ports: tuple[int, ...] = ()  # must be free before it starts, or the readiness probe may reach another server
    model_url: Callable[[str], str] | None = None  # model name -> its v2 HTTP metadata URL (None: gRPC only)


def model_names(model_dir: Path) -> tuple[str, str]:
    """mcserve's v2 model names: the manifest's ``name`` and ``name-mc``."""
    name = str(json.loads((model_dir / "manifest.json").read_text())["name"])
    return name, f"{name}-mc"


def _targets(prefix: str, http: str, grpc: str, names: tuple[str, str]) -> list[Target]:
    eval_name, mc_name = names
    return [
        Target(f"{prefix}_http", eval_name, "http", http),
        Target(f"{prefix}_grpc", eval_name, "grpc", grpc),
        Target(f"{prefix}_http_mc_t100", mc_name, "http", http),
        Target(f"{prefix}_grpc_mc_t100", mc_name, "grpc", grpc),
    ]


def specs(names: tuple[str, str], bench_python: str, model_dir: str) -> list[ServerSpec]:
    http_port, grpc_port = MCSERVE_PORTS
    mcserve_env = {
        "MCSERVE_HOST": HOST,
        "MCSERVE_LOG_LEVEL": "warning",
        "MCSERVE_PORT": str(http_port),
        "MCSERVE_GRPC_PORT": str(grpc_port),
        # perf_analyzer 2.51 sends request parameters over gRPC only, so the MC runs rely on the default T
        "MCSERVE_DEFAULT_SAMPLES": str(MC_SAMPLES),
    }
    base = f"http://{HOST}"
    return [
        ServerSpec(
            "mcserve",
            [sys.executable, "-m", "service"],
            f"{base}:{http_port}/v2/health/ready",
            _targets("v2", f"{HOST}:{http_port}", f"{HOST}:{grpc_port}", names),
            env=mcserve_env,
            ports=MCSERVE_PORTS,
            model_url=lambda m: f"{base}:{http_port}/v2/models/{m}",
        ),
        ServerSpec(
            "triton_v2",
            [bench_python, str(ROOT / "bench" / "peers" / "triton_v2.py"), str(TRITON_PORT)],
            f"{base}:{TRITON_PORT}/v2/health/ready",
            _targets("triton_v2", f"{HOST}:{TRITON_PORT}", f"{HOST}:{TRITON_PORT + 1}", names),
            ports=(TRITON_PORT, TRITON_PORT + 1, TRITON_PORT + 2),
            model_url=lambda m: f"{base}:{TRITON_PORT}/v2/models/{m}",
        ),
        ServerSpec(
            "grpc_floor",
            [sys.executable, str(ROOT / "bench" / "peers" / "grpc_floor.py"), str(FLOOR_PORT)],
            f"tcp://{HOST}:{FLOOR_PORT}",
            [Target("grpc_floor", names[0], "grpc", f"{HOST}:{FLOOR_PORT}")],
            ports=(FLOOR_PORT,),
        ),
        ServerSpec(
            "grpc_kernel_floor",
            [sys.executable, str(ROOT / "bench" / "peers" / "grpc_floor.py"), str(FLOOR_PORT + 1), model_dir],
            f"tcp://{HOST}:{FLOOR_PORT + 1}",
            [Target("grpc_kernel_floor", names[0], "grpc", f"{HOST}:{FLOOR_PORT + 1}")],
            ports=(FLOOR_PORT + 1,),
        ),
    ]


def model_versions(spec: ServerSpec, timeout_s: float = 120.0) -> dict[str, str]:
    """Wait until each model of ``spec`` is ready (Triton reports the server ready before it loads its models) and
    return the version its metadata names.

    perf_analyzer gets that version as ``-x``: without it, it picks the highest version by parsing version strings
    as integers, which fails for one that is not a number ("failed to find the requested model version").
    """
    models = sorted({t.model for t in spec.targets})
    if spec.model_url is None:
        return {m: GRPC_ONLY_VERSION for m in models}
    deadline = time.monotonic() + timeout_s
    versions = {}
    for model in models:
        url = spec.model_url(model)
        while procs.http_status(f"{url}/ready") != 200:
            if time.monotonic() > deadline:
                raise RuntimeError(f"{url}/ready not 200 after {timeout_s:.0f} s")
            time.sleep(0.2)
        with urllib.request.urlopen(url, timeout=10) as resp:
            versions[model] = metadata_version(json.loads(resp.read()))
    return versions


def metadata_version(metadata: dict[str, Any]) -> str:
    """The version a v2 model metadata response serves (the highest number when they are all numbers)."""
    versions = [str(v) for v in metadata.get("versions") or []]
    if not versions:
        raise ValueError(f"model metadata lists no versions: {metadata}")
    if all(v.isdigit() for v in versions):
        return max(versions, key=int)
    return versions[0]


def record(out: dict[str, Any], label: str, c: int, res: perf.PerfResult, server_cpu_s: float | None) -> None:
    out[f"{label}_infer_per_s_c{c}"] = res.infer_per_s
    out[f"{label}_p50_ms_c{c}"] = res.p50_ms
    out[f"{label}_p99_ms_c{c}"] = res.p99_ms
    out[f"{label}_errors_c{c}"] = res.errors
    out[f"{label}_stable_c{c}"] = res.stable
    out[f"{label}_wall_s_c{c}"] = res.wall_s
    # the CPU covers the whole perf_analyzer run (start-up and every window), so divide by throughput x wall time
    total = res.infer_per_s * res.wall_s
    out[f"{label}_server_cpu_ms_per_infer_c{c}"] = server_cpu_s * 1e3 / total if server_cpu_s and total > 0 else None


def record_failure(out: dict[str, Any], labels: list[str], reason: str) -> None:
    for label in labels:
        for c in CONCURRENCY:
            for suffix in SUFFIXES:
                out.setdefault(f"{label}_{suffix}_c{c}", None)
        out[f"{label}_error"] = out.get(f"{label}_error") or reason


def bench_server(
    spec: ServerSpec, env: dict[str, str], input_data: Path, settings: perf.Settings, out: dict[str, Any]
) -> None:
    try:
        busy = [p for p in spec.ports if procs.ready_status(f"tcp://{HOST}:{p}", timeout=0.5) == 200]
        if busy:
            raise RuntimeError(f"port(s) {busy} already in use on {HOST}: another server is running there")
        with procs.serve(spec.name, spec.cmd, spec.ready_url, {**env, **spec.env}, LOG_DIR) as server:
            versions = model_versions(spec)
            out[f"{spec.name}_ready_s"] = round(server.ready_s, 2)
            for target in spec.targets:
                for c in CONCURRENCY:
                    if server.proc.poll() is not None:
                        raise RuntimeError(
                            f"{spec.name} exited with {server.proc.returncode}: {procs.log_tail(server.log_path)}"
                        )
                    cpu_before = procs.group_cpu_seconds(server.proc.pid)
                    try:
                        res = perf.run(
                            target.model, versions[target.model], target.url, target.protocol, c, input_data, settings
                        )
                    except perf.PerfError as exc:
                        print(f"bench v2: {target.label} c={c} failed: {str(exc)[:300]}", flush=True)
                        record_failure(out, [target.label], str(exc)[:2000])
                        continue
                    cpu = procs.group_cpu_seconds(server.proc.pid) - cpu_before
                    record(out, target.label, c, res, cpu)
                    print(
                        f"bench v2: {target.label} c={c}: {res.infer_per_s:.0f} infer/s p99 {res.p99_ms:.1f} ms"
                        + ("" if res.stable else " (unstable)"),
                        flush=True,
                    )
                out.setdefault(f"{target.label}_error", None)
    except Exception as exc:  # a server that cannot run is recorded, not dropped
        reason = f"{type(exc).__name__}: {exc}"[:2000]
        print(f"bench v2: {spec.name} failed: {reason[:300]}", flush=True)
        record_failure(out, [t.label for t in spec.targets], reason)


def ratios(out: dict[str, Any]) -> dict[str, float | None]:
    """The headline ratios at c = 64 (None where either side is missing)."""
    c = 64

    def rps(label: str) -> float | None:
        value = out.get(f"{label}_infer_per_s_c{c}")
        return float(value) if isinstance(value, int | float) else None

    return {
        f"v2_http_vs_triton_c{c}": ratio(rps("v2_http"), rps("triton_v2_http")),
        f"v2_grpc_vs_triton_c{c}": ratio(rps("v2_grpc"), rps("triton_v2_grpc")),
        f"v2_grpc_vs_floor_c{c}": ratio(rps("v2_grpc"), rps("grpc_floor")),
        f"v2_grpc_vs_kernel_floor_c{c}": ratio(rps("v2_grpc"), rps("grpc_kernel_floor")),
        f"grpc_kernel_floor_vs_floor_c{c}": ratio(rps("grpc_kernel_floor"), rps("grpc_floor")),
        f"v2_http_mc_t100_vs_triton_c{c}": ratio(rps("v2_http_mc_t100"), rps("triton_v2_http_mc_t100")),
        f"v2_grpc_mc_t100_vs_triton_c{c}": ratio(rps("v2_grpc_mc_t100"), rps("triton_v2_grpc_mc_t100")),
        f"triton_v2_grpc_vs_floor_c{c}": ratio(rps("triton_v2_grpc"), rps("grpc_floor")),
    }


def _bench_python() -> str:
    from bench.http import bench_python

    return str(bench_python())


def _perf_version() -> str:
    proc = subprocess.run(
        [str(perf.perf_analyzer()), "--version"], capture_output=True, text=True, env=perf.perf_env(), check=False
    )
    return (proc.stdout + proc.stderr).strip() or f"exit {proc.returncode}"


def run(quick: bool, model_dir: Path | None, server_threads: int = 1) -> dict[str, Any]:
    settings = perf.QUICK if quick else perf.FULL
    only = [s for s in os.environ.get("BENCH_SERVERS", "").split(",") if s]
    out: dict[str, Any] = {}
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench-v2-") as tmp:
        work = Path(tmp)
        model_dir, model_note = artifact.resolve(model_dir, work / "model")
        model_dir, served_note = artifact.without_sets(model_dir, work / "model-v2")
        names = model_names(model_dir)
        input_data = perf.write_input_data(work / "input.json", artifact.sample_image())
        env = procs.server_env(model_dir, server_threads, ROOT)
        version = _perf_version()
        all_specs = specs(names, _bench_python(), str(model_dir))
        for spec in all_specs:
            if only and spec.name not in only:
                continue
            spec_start = time.perf_counter()
            bench_server(spec, env, input_data, settings, out)
            out[f"{spec.name}_elapsed_s"] = round(time.perf_counter() - spec_start, 1)
        example = perf.command(
            "perf_analyzer",
            "MODEL",
            "VERSION",
            "HOST:PORT",
            "http",
            1,
            Path("input.json"),
            settings,
            Path("result.csv"),
        )
    out.update(ratios(out))
    out["conditions"] = {
        "load_generator": f"{version}, from the tritonclient 2.51.0 wheel (scripts/perf_setup.sh), synchronous "
        "API: one client thread per concurrent request",
        "perf_analyzer_flags": " ".join(example)
        .replace("-i http", "-i http|grpc")
        .replace("--concurrency-range 1:1", "--concurrency-range C:C"),
        "mc_samples": f"T = {MC_SAMPLES} on both sides with the same flags: mcserve's default (MCSERVE_DEFAULT_SAMPLES="
        f"{MC_SAMPLES}; perf_analyzer 2.51 sends request parameters over gRPC only), fixed in Triton's MC model",
        "measurement": f"time windows of {settings.interval_ms} ms until 3 in a row agree within "
        f"{settings.stability_pct}% (average latency and throughput), at most {settings.max_trials} windows; a level "
        f"that never stabilises is measured again over 3 windows with {perf.RELAXED_STABILITY_PCT}% (the check "
        "effectively off) and marked stable=false",
        "errors": "perf_analyzer stops at the first failed request, so a finished run had 0 errors and a failed one "
        "is recorded as <label>_error",
        "model_version": "-x is the version each server's v2 model metadata names (the floor, gRPC only: 1); "
        "without it perf_analyzer parses version strings as integers",
        "concurrency": list(CONCURRENCY),
        "input": "one real Fashion-MNIST test image per request, images FP32 [1, 784] (pixel values 0..255), "
        "binary tensor data over HTTP, raw_input_contents over gRPC",
        "model": model_note,
        "served_artifact": served_note,
        "models": list(names),
        "server_torch_threads": server_threads,
        "servers": "mcserve `python -m service` (v2 HTTP + gRPC in one process); Triton via PyTriton "
        "(bench/peers/triton_v2.py: Python backend, dynamic batcher, max_batch_size 256, MC as the input repeated "
        "T times in one batch with dropout in train mode); grpc_floor (bench/peers/grpc_floor.py: bare grpc.aio, "
        "constant ModelInfer response); grpc_kernel_floor (the same servicer answering with mcserve's eval kernel on "
        "the raw input, no validation, metrics or data plane)",
        "server_cpu_ms_per_infer": "user+system CPU of the server's process group during the perf_analyzer run / "
        "(infer/s x run wall time); includes warm-up windows",
        "machine_note": f"{os.cpu_count()} cores shared by the server and perf_analyzer (one thread per concurrent "
        "request), so every server has less than the whole machine; the handicap is the same for all",
        "total_elapsed_s": round(time.perf_counter() - started, 1),
    }
    return out
