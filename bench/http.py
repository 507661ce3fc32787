"""``python -m bench http``: mcserve against a bare uvicorn endpoint, LitServe, TorchServe and Triton (PyTriton).

Every server runs on 127.0.0.1 (ports 18100-18199) serving the same artifact; wrk drives each
endpoint from its own process at concurrency 1, 16 and 64. A peer that cannot run gets ``null``
numbers and a ``<label>_error`` string instead of disappearing from the results.
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

from bench import artifact, procs
from bench.loadgen import run_wrk

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = (1, 16, 64)
LOG_DIR = ROOT / "bench" / "results" / "logs"  # git-ignored; server logs stay for post-mortems
BENCH_VENV = Path(os.environ.get("BENCH_VENV", ROOT / ".venv-bench"))


@dataclass
class Endpoint:
    label: str
    url: str
    body: str


@dataclass
class ServerSpec:
    name: str
    cmd: list[str]
    ready_url: str
    endpoints: list[Endpoint]
    env: dict[str, str] = field(default_factory=dict)
    prepare: Callable[[Path], None] | None = None  # e.g. build the TorchServe archive
    cwd: Path | None = None


def bench_python() -> Path:
    """The separate venv's python (LitServe, TorchServe, PyTriton); created on first use."""
    python = BENCH_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "bench_setup.sh")], check=True, cwd=ROOT)
    return python


def _post_ok(url: str, body: str, timeout_s: float = 90.0) -> None:
    """Send the benchmark body until one 200 comes back (models load lazily in some peers)."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        req = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                json.loads(resp.read())
                return
        except Exception as exc:  # any failure: retry until the deadline, then report the last one
            last = repr(exc)
            time.sleep(0.5)
    raise RuntimeError(f"{url} never answered 200 to the benchmark body: {last}")


def _specs(model_dir: Path, image: list[int], workers: int, work: Path) -> list[ServerSpec]:
    main_py, peer_py = sys.executable, str(bench_python())
    predict_body = json.dumps({"images": [image]})
    mc_body = json.dumps({"images": [image], "n_samples": 100})
    v2_body = json.dumps({"inputs": [{"name": "images", "shape": [1, 784], "datatype": "FP32", "data": image}]})
    uvicorn = [main_py, "-m", "uvicorn", "--host", "127.0.0.1", "--workers", str(workers), "--log-level", "warning"]
    uvicorn += ["--no-access-log"]
    base = "http://127.0.0.1"

    def mcserve(name: str, port: int, endpoints: list[tuple[str, str, str]], **settings: str) -> ServerSpec:
        """``python -m service`` on ``port``; endpoints are (label, path, body)."""
        env = {"MCSERVE_HOST": "127.0.0.1", "MCSERVE_LOG_LEVEL": "warning", "MCSERVE_PORT": str(port)}
        env["MCSERVE_GRPC_PORT"] = "0"  # REST only here; bench v2 measures gRPC
        env |= {"MCSERVE_WORKERS": str(workers), **settings}
        eps = [Endpoint(label, f"{base}:{port}{path}", body) for label, path, body in endpoints]
        return ServerSpec(name, [main_py, "-m", "service"], f"{base}:{port}/readyz", eps, env=env)

    def torchserve_prepare(tmp: Path) -> None:
        _torchserve_archive(peer_py, model_dir, tmp, workers)

    return [
        mcserve(
            "mcserve",
            18110,
            [("predict", "/predict", predict_body), ("uncertainty_t100", "/predict/uncertainty", mc_body)],
        ),
        # The same service with dynamic batching off, and with the fast path off (every request through
        # FastAPI): the A/B the issue asks for, measured in the same run.
        mcserve(
            "mcserve_nobatch", 18111, [("predict_nobatch", "/predict", predict_body)], MCSERVE_BATCH_MAX_IMAGES="1"
        ),
        mcserve(
            "mcserve_route",
            18112,
            [("predict_route", "/predict", predict_body), ("uncertainty_t100_route", "/predict/uncertainty", mc_body)],
            MCSERVE_FAST_PATH="false",
        ),
        ServerSpec(
            "bare_uvicorn",
            [*uvicorn, "--port", "18120", "bench.peers.bare:app"],
            f"{base}:18120/readyz",
            [Endpoint("bare_uvicorn", f"{base}:18120/predict", predict_body)],
        ),
        ServerSpec(
            "bare_fastapi",
            [*uvicorn, "--port", "18125", "bench.peers.bare:fastapi_app"],
            f"{base}:18125/readyz",
            [Endpoint("bare_fastapi", f"{base}:18125/predict", predict_body)],
        ),
        ServerSpec(
            "litserve",
            [peer_py, str(ROOT / "bench" / "peers" / "litserve_api.py"), "18130", str(workers)],
            f"{base}:18130/health",
            [Endpoint("litserve_predict", f"{base}:18130/predict", predict_body)],
        ),
        ServerSpec(
            "torchserve",
            [
                *[str(BENCH_VENV / "bin" / "torchserve"), "--start", "--foreground", "--ncs", "--disable-token-auth"],
                *["--model-store", "store", "--models", "mc=mc.mar", "--ts-config", "config.properties"],
            ],
            f"{base}:18141/models/mc",
            [Endpoint("torchserve_predict", f"{base}:18140/predictions/mc", predict_body)],
            prepare=torchserve_prepare,
        ),
        ServerSpec(
            "triton",
            [peer_py, str(ROOT / "bench" / "peers" / "triton_server.py"), "18150"],
            f"{base}:18150/v2/health/ready",
            [Endpoint("triton_predict", f"{base}:18150/v2/models/mc/infer", v2_body)],
        ),
    ]


def _run_checked(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-1500:]}")


def _torchserve_archive(peer_py: str, model_dir: Path, tmp: Path, workers: int) -> None:
    store = tmp / "store"
    store.mkdir(parents=True, exist_ok=True)
    archiver = str(Path(peer_py).parent / "torch-model-archiver")
    extra = ",".join(str(p) for p in sorted(model_dir.iterdir()) if p.is_file())
    handler = ROOT / "bench" / "peers" / "torchserve_handler.py"
    _run_checked(
        [
            *[archiver, "--model-name", "mc", "--version", "1", "--handler", str(handler)],
            *["--extra-files", extra, "--export-path", str(store), "--force"],
        ]
    )
    (tmp / "config.properties").write_text(
        "inference_address=http://127.0.0.1:18140\n"
        "management_address=http://127.0.0.1:18141\n"
        "metrics_address=http://127.0.0.1:18142\n"
        f"default_workers_per_model={workers}\n"
        "install_py_dep_per_model=false\n"
        "disable_system_metrics=true\n"
        "job_queue_size=1000\n"
        "model_store=store\n"
    )


def _bench_server(spec: ServerSpec, env: dict[str, str], duration_s: float, work: Path, out: dict[str, Any]) -> None:
    cwd = work / spec.name
    cwd.mkdir(parents=True, exist_ok=True)
    try:
        if spec.prepare is not None:
            spec.prepare(cwd)
        with procs.serve(spec.name, spec.cmd, spec.ready_url, {**env, **spec.env}, LOG_DIR, cwd=cwd) as server:
            out[f"{spec.name}_ready_s"] = round(server.ready_s, 2)
            for ep in spec.endpoints:
                _post_ok(ep.url, ep.body)
                for c in CONCURRENCY:
                    cpu_before = procs.group_cpu_seconds(server.proc.pid)
                    res = run_wrk(ep.url, ep.body, c, duration_s)
                    cpu = procs.group_cpu_seconds(server.proc.pid) - cpu_before
                    out[f"{ep.label}_server_cpu_ms_per_req_c{c}"] = cpu * 1e3 / res.requests if res.requests else None
                    out[f"{ep.label}_rps_c{c}"] = res.rps
                    out[f"{ep.label}_p50_ms_c{c}"] = res.p50_ms
                    out[f"{ep.label}_p99_ms_c{c}"] = res.p99_ms
                    out[f"{ep.label}_errors_c{c}"] = res.errors
                    print(f"bench http: {ep.label} c={c}: {res.rps:.0f} req/s p99 {res.p99_ms:.1f} ms", flush=True)
                out[f"{ep.label}_error"] = None
    except Exception as exc:  # a peer that cannot run is recorded, not dropped
        reason = f"{type(exc).__name__}: {exc}"[:2000]
        print(f"bench http: {spec.name} failed: {reason[:300]}", flush=True)
        for ep in spec.endpoints:
            for c in CONCURRENCY:
                out.setdefault(f"{ep.label}_rps_c{c}", None)
            out[f"{ep.label}_error"] = reason


def run(
    quick: bool, model_dir: Path | None, workers: int, server_threads: int, duration: float | None
) -> dict[str, Any]:
    duration_s = duration or (2.0 if quick else 10.0)
    only = [s for s in os.environ.get("BENCH_SERVERS", "").split(",") if s]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        work = Path(tmp)
        model_dir, model_note = artifact.resolve(model_dir, work / "model")
        image = artifact.sample_image()
        env = procs.server_env(model_dir, server_threads, ROOT)
        env["PATH"] = f"{BENCH_VENV / 'bin'}:{os.environ.get('PATH', '')}"
        for spec in _specs(model_dir, image, workers, work):
            if only and spec.name not in only:
                continue
            _bench_server(spec, env, duration_s, work, out)
    out["conditions"] = {
        "load_generator": "wrk -t1 (one thread), Lua script posting one fixed JSON body, --timeout 10s",
        "duration_s_per_run": duration_s,
        "concurrency": list(CONCURRENCY),
        "server_workers": workers,
        "server_torch_threads": server_threads,
        "model": model_note,
        "body": "one real test image (784 integer pixels) per request; uncertainty adds n_samples=100; "
        "Triton gets the same pixels as KServe v2 JSON",
        "note": "client and server share the same cores, so wrk takes CPU the server could have used",
        "server_cpu_ms_per_req": "user+system CPU of the server's whole process group during the run / requests "
        "served; robust to other load on the machine, unlike req/s",
    }
    return out
