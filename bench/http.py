"""``python -m bench http``: mcserve against LitServe, TorchServe and Triton (PyTriton), a bare uvicorn endpoint and
the MC floor.

Every server runs on 127.0.0.1 (ports 18100-18199) serving the same artifact; wrk drives each endpoint from its own
process at concurrency 1, 16 and 64. A peer that cannot run gets ``null`` numbers and a ``<label>_error`` string
instead of disappearing from the results. Each endpoint's first answer is checked before it is timed (MC answers:
one prediction per image, mean probabilities summing to 1, variance and mutual information present).

Monte Carlo dropout (T = 100), besides mcserve's ``/predict/uncertainty``:

* each peer serves it the way its users would, next to its ``/predict`` equivalent in the same server
  (``bench.peers.common.mc_dropout``: dropout on, the input repeated T times in one forward pass, the peer's own
  dynamic batching on): ``<peer>_mc_t100_*``;
* the MC floor (``bench.peers.mc_floor``): the service's batched kernel behind a bare uvicorn endpoint with a
  constant payload, the least work any design could do for this endpoint: ``mc_floor_*``;
* the kernel's own cost at B = 32, T = 100, timed in this process before any server starts
  (``mc_kernel_us_per_image_b32_t100``), which turns req/s into the share of one core the kernel alone would need
  (``mc_http_efficiency_c64``, ``mc_floor_efficiency_c64``; see ``bench.mcclaims.mc_derived``);
* an interleaved A/B of cross-request MC batching (``MCSERVE_MC_BATCH`` true vs false) at c = 1: p99 of
  ``/predict/uncertainty``, the median over short alternating rounds (``uncertainty_t100_p99_c1_on_vs_off``).
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import artifact, mcrounds, procs
from bench.checks import Check, check_json_object, check_mc_predictions, check_predictions, check_v2_mc
from bench.loadgen import run_wrk
from bench.mcclaims import MC_SAMPLES, ab_summary, mc_derived, mc_kernel_cost

ROOT = Path(__file__).resolve().parent.parent
CONCURRENCY = (1, 16, 64)
LOG_DIR = ROOT / "bench" / "results" / "logs"  # git-ignored; server logs stay for post-mortems
BENCH_VENV = Path(os.environ.get("BENCH_VENV", ROOT / ".venv-bench"))
METRICS = ("rps", "p50_ms", "p99_ms", "errors", "server_cpu_ms_per_req")
MC_FULL_DURATION_S = 6.0  # per level for the MC peers and the floor in a full run (their req/s are low and steady)
AB_ROUNDS, AB_ROUND_S = 4, 2.0  # the MC batching A/B: rounds x seconds per side per round, at c = 1
AB_WARMUP_S = 4.0


@dataclass
class Endpoint:
    label: str
    url: str
    body: str
    check: Check | None = None  # raises ValueError when the first answer is not what the endpoint must return
    mc: bool = False  # an MC peer or the floor: timed for ``mc_duration_s`` per level


@dataclass
class ServerSpec:
    name: str
    cmd: list[str]
    ready_url: str
    endpoints: list[Endpoint]
    env: dict[str, str] = field(default_factory=dict)
    prepare: Callable[[Path], None] | None = None  # e.g. build the TorchServe archives
    cwd: Path | None = None


def bench_python() -> Path:
    """The separate venv's python (LitServe, TorchServe, PyTriton); created on first use."""
    python = BENCH_VENV / "bin" / "python"
    if not python.exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "bench_setup.sh")], check=True, cwd=ROOT)
    return python


def _post_ok(url: str, body: str, timeout_s: float = 90.0) -> Any:
    """Send the benchmark body until one 200 comes back (models load lazily in some peers); its JSON."""
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        req = urllib.request.Request(url, data=body.encode(), headers={"Content-Type": "application/json"})
        try:
            with urllib.request.urlopen(req, timeout=10) as resp:
                return json.loads(resp.read())
        except Exception as exc:  # any failure: retry until the deadline, then report the last one
            last = repr(exc)
            time.sleep(0.5)
    raise RuntimeError(f"{url} never answered 200 to the benchmark body: {last}")


# -- servers ------------------------------------------------------------------------------------------------------


def bodies(image: list[int]) -> dict[str, str]:
    """The request bodies: /predict's, mcserve's /predict/uncertainty (the MC peers' and the floor's too), and the
    KServe v2 forms Triton gets (the MC one carries T as the request parameter ``n_samples``)."""
    v2_inputs = [{"name": "images", "shape": [1, 784], "datatype": "FP32", "data": image}]
    return {
        "predict": json.dumps({"images": [image]}),
        "mc": json.dumps({"images": [image], "n_samples": MC_SAMPLES}),
        "v2": json.dumps({"inputs": v2_inputs}),
        "v2_mc": json.dumps({"inputs": v2_inputs, "parameters": {"n_samples": MC_SAMPLES}}),
    }


def _mcserve_env(port: int, workers: int, **settings: str) -> dict[str, str]:
    env = {"MCSERVE_HOST": "127.0.0.1", "MCSERVE_LOG_LEVEL": "warning", "MCSERVE_PORT": str(port)}
    env["MCSERVE_GRPC_PORT"] = "0"  # REST only here; bench v2 measures gRPC
    return env | {"MCSERVE_WORKERS": str(workers), **settings}


def _specs(model_dir: Path, image: list[int], workers: int, work: Path) -> list[ServerSpec]:
    main_py, peer_py = sys.executable, str(bench_python())
    body = bodies(image)
    uvicorn = [main_py, "-m", "uvicorn", "--host", "127.0.0.1", "--workers", str(workers), "--log-level", "warning"]
    uvicorn += ["--no-access-log"]
    # the floors: uvicorn over the HTTP protocol mcserve runs by default (its head and body in one write)
    floor = [main_py, "-m", "bench.peers.onewrite", "--workers", str(workers)]
    base = "http://127.0.0.1"
    predict_ok, mc_ok = check_predictions(1), check_mc_predictions(1)

    def mcserve(name: str, port: int, endpoints: list[tuple[str, str, str, Check]], **settings: str) -> ServerSpec:
        """``python -m service`` on ``port``; endpoints are (label, path, body, check)."""
        eps = [Endpoint(label, f"{base}:{port}{path}", data, ok) for label, path, data, ok in endpoints]
        env = _mcserve_env(port, workers, **settings)
        return ServerSpec(name, [main_py, "-m", "service"], f"{base}:{port}/readyz", eps, env=env)

    def torchserve_prepare(tmp: Path) -> None:
        _torchserve_archives(peer_py, model_dir, tmp, workers)

    return [
        mcserve(
            "mcserve",
            18110,
            [
                ("predict", "/predict", body["predict"], predict_ok),
                ("uncertainty_t100", "/predict/uncertainty", body["mc"], mc_ok),
            ],
        ),
        # The same service with dynamic batching off, and with the fast path off (every request through
        # FastAPI): the A/B the issue asks for, measured in the same run.
        mcserve(
            "mcserve_nobatch",
            18111,
            [("predict_nobatch", "/predict", body["predict"], predict_ok)],
            MCSERVE_BATCH_MAX_IMAGES="1",
        ),
        mcserve(
            "mcserve_route",
            18112,
            [
                ("predict_route", "/predict", body["predict"], predict_ok),
                ("uncertainty_t100_route", "/predict/uncertainty", body["mc"], mc_ok),
            ],
            MCSERVE_FAST_PATH="false",
        ),
        ServerSpec(
            "mc_floor",
            [*floor, "--port", "18127", "bench.peers.mc_floor:app"],
            f"{base}:18127/readyz",
            [Endpoint("mc_floor", f"{base}:18127/predict/uncertainty", body["mc"], check_json_object, mc=True)],
        ),
        ServerSpec(
            "bare_uvicorn",
            [*floor, "--port", "18120", "bench.peers.bare:app"],
            f"{base}:18120/readyz",
            [Endpoint("bare_uvicorn", f"{base}:18120/predict", body["predict"], check_json_object)],
        ),
        ServerSpec(
            "bare_fastapi",
            [*uvicorn, "--port", "18125", "bench.peers.bare:fastapi_app"],
            f"{base}:18125/readyz",
            [Endpoint("bare_fastapi", f"{base}:18125/predict", body["predict"], check_json_object)],
        ),
        ServerSpec(
            "litserve",
            [peer_py, str(ROOT / "bench" / "peers" / "litserve_api.py"), "18130", str(workers)],
            f"{base}:18130/health",
            [
                Endpoint("litserve_predict", f"{base}:18130/predict", body["predict"], predict_ok),
                Endpoint("litserve_mc_t100", f"{base}:18130/predict/uncertainty", body["mc"], mc_ok, mc=True),
            ],
        ),
        ServerSpec(
            "torchserve",
            [
                *[str(BENCH_VENV / "bin" / "torchserve"), "--start", "--foreground", "--ncs", "--disable-token-auth"],
                *["--model-store", "store", "--models", "mc=mc.mar", "mc_dropout=mc_dropout.mar"],
                *["--ts-config", "config.properties"],
            ],
            f"{base}:18141/models/mc",
            [
                Endpoint("torchserve_predict", f"{base}:18140/predictions/mc", body["predict"], predict_ok),
                Endpoint("torchserve_mc_t100", f"{base}:18140/predictions/mc_dropout", body["mc"], mc_ok, mc=True),
            ],
            prepare=torchserve_prepare,
        ),
        ServerSpec(
            "triton",
            [peer_py, str(ROOT / "bench" / "peers" / "triton_server.py"), "18150", str(workers)],
            f"{base}:18150/v2/health/ready",
            [
                Endpoint("triton_predict", f"{base}:18150/v2/models/mc/infer", body["v2"], check_json_object),
                Endpoint(
                    "triton_mc_t100", f"{base}:18150/v2/models/mc_dropout/infer", body["v2_mc"], check_v2_mc(1), mc=True
                ),
            ],
        ),
    ]


def _run_checked(cmd: list[str]) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{Path(cmd[0]).name} failed ({proc.returncode}): {(proc.stdout + proc.stderr)[-1500:]}")


def _torchserve_archives(peer_py: str, model_dir: Path, tmp: Path, workers: int) -> None:
    """``mc.mar`` (eval, one request per call) and ``mc_dropout.mar`` (MC, TorchServe's batching on through the
    archive's model-config.yaml), both packing the artifact's files."""
    from bench.peers.common import MC_BATCH_DELAY_S, MC_MAX_BATCH

    store = tmp / "store"
    store.mkdir(parents=True, exist_ok=True)
    archiver = str(Path(peer_py).parent / "torch-model-archiver")
    extra = ",".join(str(p) for p in sorted(model_dir.iterdir()) if p.is_file())
    mc_config = tmp / "mc_dropout-config.yaml"
    mc_config.write_text(
        f"minWorkers: {workers}\nmaxWorkers: {workers}\nbatchSize: {MC_MAX_BATCH}\n"
        f"maxBatchDelay: {round(MC_BATCH_DELAY_S * 1000)}\nresponseTimeout: 120\n"
    )
    for name, handler, config in (
        ("mc", "torchserve_handler.py", None),
        ("mc_dropout", "torchserve_mc_handler.py", mc_config),
    ):
        cmd = [archiver, "--model-name", name, "--version", "1", "--handler", str(ROOT / "bench" / "peers" / handler)]
        cmd += ["--extra-files", extra, "--export-path", str(store), "--force"]
        _run_checked(cmd + (["--config-file", str(config)] if config else []))
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


def record_failure(out: dict[str, Any], label: str, reason: str) -> None:
    """A label that could not be (fully) measured: ``null`` for every level not measured, and why."""
    for c in CONCURRENCY:
        for metric in METRICS:
            out.setdefault(f"{label}_{metric}_c{c}", None)
    out[f"{label}_error"] = reason


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"[:2000]


def _bench_endpoint(server: procs.Server, ep: Endpoint, duration_s: float, out: dict[str, Any]) -> None:
    answer = _post_ok(ep.url, ep.body)
    if ep.check is not None:
        ep.check(answer)
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


def _bench_server(
    spec: ServerSpec, env: dict[str, str], durations: tuple[float, float], work: Path, out: dict[str, Any]
) -> None:
    """Start the server, then time each endpoint in turn; an endpoint that fails is recorded and the rest go on."""
    cwd = work / spec.name
    cwd.mkdir(parents=True, exist_ok=True)
    try:
        if spec.prepare is not None:
            spec.prepare(cwd)
        with procs.serve(spec.name, spec.cmd, spec.ready_url, {**env, **spec.env}, LOG_DIR, cwd=cwd) as server:
            out[f"{spec.name}_ready_s"] = round(server.ready_s, 2)
            for ep in spec.endpoints:
                try:
                    _bench_endpoint(server, ep, durations[1] if ep.mc else durations[0], out)
                except Exception as exc:  # this endpoint is recorded as failed; the server's others still run
                    print(f"bench http: {ep.label} failed: {_reason(exc)[:300]}", flush=True)
                    record_failure(out, ep.label, _reason(exc))
    except Exception as exc:  # a peer that cannot run is recorded, not dropped
        print(f"bench http: {spec.name} failed: {_reason(exc)[:300]}", flush=True)
        for ep in spec.endpoints:
            if f"{ep.label}_error" not in out:  # neither measured nor failed on its own
                record_failure(out, ep.label, _reason(exc))


# -- the MC kernel's own cost and the MC batching A/B -------------------------------------------------------------


def mc_batch_ab(env: dict[str, str], image: list[int], workers: int, out: dict[str, Any]) -> None:
    """Two mcserve servers side by side, ``MCSERVE_MC_BATCH`` true and false; wrk at c = 1 on ``/predict/uncertainty``
    (T = 100) alternates between them for ``AB_ROUNDS`` rounds (the side going first alternates too)."""
    body = bodies(image)["mc"]
    sides = {"on": ("true", 18113), "off": ("false", 18114)}
    rounds: dict[str, dict[str, list[float]]] = {side: {"p99_ms": [], "rps": [], "errors": []} for side in sides}
    try:
        with contextlib.ExitStack() as stack:
            urls = {}
            for side, (setting, port) in sides.items():
                spec_env = {**env, **_mcserve_env(port, workers, MCSERVE_MC_BATCH=setting)}
                ready = f"http://127.0.0.1:{port}/readyz"
                name = f"mcserve_mc_batch_{side}"
                stack.enter_context(procs.serve(name, [sys.executable, "-m", "service"], ready, spec_env, LOG_DIR))
                urls[side] = f"http://127.0.0.1:{port}/predict/uncertainty"
                check_mc_predictions(1)(_post_ok(urls[side], body))
                # warm-up: the first thousand or so MC requests after start include a one-off stall of ~100 ms (a
                # full gen-2 garbage collection of the freshly loaded process), which would land in round 1
                run_wrk(urls[side], body, 1, AB_WARMUP_S)
            for r in range(AB_ROUNDS):
                for side in ("on", "off") if r % 2 == 0 else ("off", "on"):
                    res = run_wrk(urls[side], body, 1, AB_ROUND_S)
                    rounds[side]["p99_ms"].append(res.p99_ms)
                    rounds[side]["rps"].append(res.rps)
                    rounds[side]["errors"].append(res.errors)
                    print(f"bench http: MC batching {side} c=1 round {r + 1}: p99 {res.p99_ms:.2f} ms", flush=True)
        out["uncertainty_t100_batch_ab_error"] = None
    except Exception as exc:
        print(f"bench http: MC batching A/B failed: {_reason(exc)[:300]}", flush=True)
        out["uncertainty_t100_batch_ab_error"] = _reason(exc)
    for side, values in rounds.items():
        out[f"uncertainty_t100_p99_ms_c1_batch_{side}_rounds"] = values["p99_ms"]
        out[f"uncertainty_t100_rps_c1_batch_{side}"] = statistics.median(values["rps"]) if values["rps"] else None
        out[f"uncertainty_t100_errors_c1_batch_{side}"] = int(sum(values["errors"])) if values["errors"] else None
    out.update(ab_summary({side: values["p99_ms"] for side, values in rounds.items()}))


PER_CORE_SERVERS = ("mcserve", "mc_floor", "litserve", "torchserve", "triton")


def cores() -> int:
    """The cores this process may run on (what a worker-per-core deployment would count)."""
    return len(os.sched_getaffinity(0))


def run_per_core(quick: bool, model_dir: Path | None, server_threads: int, duration: float | None) -> dict[str, Any]:
    """``python -m bench http_cores``: mcserve, the MC floor and the MC peers again, each with one server process per
    core (``--workers`` = the core count for every server that takes one), side by side in one run."""
    workers = cores()
    out = run(quick, model_dir, workers, server_threads, duration, only=list(PER_CORE_SERVERS), ab=False)
    eff = out.get("mc_http_efficiency_c64")
    out["mc_http_efficiency_per_core_c64"] = eff / workers if isinstance(eff, int | float) else None
    out["conditions"]["per_core"] = (
        f"every server with a worker setting runs {workers} processes (mcserve MCSERVE_WORKERS, uvicorn --workers "
        "for the floor, LitServe workers_per_device, TorchServe min/maxWorkers, Triton model instances: PyTriton "
        "infer functions, threads of one process); efficiency per core = efficiency / workers"
    )
    return out


def run(
    quick: bool,
    model_dir: Path | None,
    workers: int,
    server_threads: int,
    duration: float | None,
    only: list[str] | None = None,
    ab: bool = True,
) -> dict[str, Any]:
    """``python -m bench http``: every server of ``_specs`` (or those named in ``only``, else in ``BENCH_SERVERS``)
    and, with ``ab``, the MC batching A/B."""
    duration_s = duration or (2.0 if quick else 10.0)
    mc_duration_s = duration or (duration_s if quick else MC_FULL_DURATION_S)
    if only is None:
        only = [s for s in os.environ.get("BENCH_SERVERS", "").split(",") if s]
    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="bench-http-") as tmp:
        work = Path(tmp)
        model_dir, model_note = artifact.resolve(model_dir, work / "model")
        image = artifact.sample_image()
        out.update(mc_kernel_cost(model_dir, quick))  # first: nothing else is running yet
        env = procs.server_env(model_dir, server_threads, ROOT)
        env["OPENBLAS_NUM_THREADS"] = str(server_threads)  # numpy's BLAS, as ``python -m service`` sets it for itself
        env["PATH"] = f"{BENCH_VENV / 'bin'}:{os.environ.get('PATH', '')}"
        for spec in _specs(model_dir, image, workers, work):
            if only and spec.name not in only:
                continue
            _bench_server(spec, env, (duration_s, mc_duration_s), work, out)
        if ab and (not only or "mc_batch_ab" in only):
            mc_batch_ab(env, image, workers, out)
        if ab and (not only or "mc_rounds" in only):  # the MC servers at once, interleaved rounds at c = 64
            out.update(mcrounds.run(_specs(model_dir, image, workers, work), env, work, LOG_DIR, _post_ok))
    out.update(mc_derived(out))
    us, median = out.get("mc_kernel_us_per_image_b32_t100"), out.get("mc_rounds_rps_c64_median")
    out["mc_rounds_efficiency_c64"] = median * us / 1e6 if median is not None and us is not None else None
    out["conditions"] = {
        "load_generator": "wrk -t1 (one thread), Lua script posting one fixed JSON body, --timeout 10s",
        "duration_s_per_run": duration_s,
        "duration_s_per_run_mc_peers_and_floor": mc_duration_s,
        "concurrency": list(CONCURRENCY),
        "server_workers": workers,
        "server_torch_threads": server_threads,
        "model": model_note,
        "body": "one real test image (784 integer pixels) per request; uncertainty adds n_samples=100 (the MC peers "
        "and the MC floor get that same body); Triton gets the same pixels as KServe v2 JSON, its MC model "
        "n_samples as the v2 request parameter",
        "mc_peers": "dropout on (forward(mc=True)), the input repeated T=100 times in one forward pass, mean "
        "probabilities, population variance and mutual information per image; dynamic batching on: LitServe "
        "max_batch_size 64, batch_timeout 5 ms; TorchServe batchSize 64, maxBatchDelay 5 ms; Triton "
        "max_batch_size 64, default dynamic batcher",
        "mc_floor": "bare uvicorn raw ASGI app over mcserve's default HTTP protocol (service.httpproto: head and body "
        "in one write; bench.peers.onewrite): body read, not parsed; the requests waiting at once coalesced into one "
        "service.inference.mc_predict call (one fixed image repeated B times, T=100, chunk_size 8192) in one worker "
        "thread, torch 1 thread; constant answer",
        "mc_kernel_us_per_image_b32_t100": "service.inference.mc_predict, B=32 (the first 32 Fashion-MNIST test "
        "images), T=100, on the served artifact, timed in the bench process before any server started, "
        "torch.set_num_threads(1) (numpy's BLAS: mc_kernel_numpy_blas_threads), glibc keep-freed-buffers as "
        "the service sets it; median of bench.timing.time_call",
        "mc_efficiency": "req/s at c=64 x mc_kernel_us_per_image_b32_t100 / 1e6",
        "mc_rounds": f"mcserve, the MC floor and the MC peers all started; {mcrounds.MC_ROUNDS} rounds of wrk at c=64 "
        f"for {mcrounds.ROUND_S:g} s on each MC endpoint in turn (order rotating by one per round; the other servers "
        "paused with SIGSTOP meanwhile, so their idle threads take no CPU from it); ratios per round, "
        "then their median (mc_rounds_efficiency_c64: the median mcserve req/s x the kernel's us per image / 1e6)",
        "mc_batch_ab": f"two mcserve servers side by side, MCSERVE_MC_BATCH=true and false; {AB_ROUNDS} rounds, each "
        f"running wrk at c=1 for {AB_ROUND_S:g} s on each (the side going first alternates), after "
        f"{AB_WARMUP_S:g} s of warm-up on each; p99 = median over rounds of each round's wrk p99",
        "note": "client and server share the same cores, so wrk takes CPU the server could have used",
        "server_cpu_ms_per_req": "user+system CPU of the server's whole process group during the run / requests "
        "served; robust to other load on the machine, unlike req/s",
    }
    return out
