"""The tables of docs/benchmarks.md (headline claims, kernel, HTTP, batching A/B, floors, training), from the
results JSON's sections; ``bench.report`` puts them into the page."""

from __future__ import annotations

from typing import Any

HTTP_ROWS = (
    ("mcserve `/predict`", "predict"),
    ("mcserve `/predict`, batching off (`MCSERVE_BATCH_MAX_IMAGES=1`)", "predict_nobatch"),
    ("mcserve `/predict`, fast path off (`MCSERVE_FAST_PATH=false`)", "predict_route"),
    ("mcserve `/predict/uncertainty` (T=100)", "uncertainty_t100"),
    ("mcserve `/predict/uncertainty` (T=100), fast path off", "uncertainty_t100_route"),
    ("bare uvicorn (raw ASGI, constant)", "bare_uvicorn"),
    ("bare FastAPI route (constant)", "bare_fastapi"),
    ("LitServe", "litserve_predict"),
    ("TorchServe", "torchserve_predict"),
    ("Triton (PyTriton)", "triton_predict"),
)
V2_ROWS = (
    ("mcserve v2 HTTP", "v2_http"),
    ("Triton (PyTriton) v2 HTTP", "triton_v2_http"),
    ("mcserve v2 gRPC", "v2_grpc"),
    ("Triton (PyTriton) v2 gRPC", "triton_v2_grpc"),
    ("gRPC floor (bare `grpc.aio`, constant)", "grpc_floor"),
    ("gRPC kernel floor (bare `grpc.aio` + the eval kernel)", "grpc_kernel_floor"),
    ("mcserve v2 HTTP, MC T=100", "v2_http_mc_t100"),
    ("Triton (PyTriton) v2 HTTP, MC T=100", "triton_v2_http_mc_t100"),
    ("mcserve v2 gRPC, MC T=100", "v2_grpc_mc_t100"),
    ("Triton (PyTriton) v2 gRPC, MC T=100", "triton_v2_grpc_mc_t100"),
)
V2_RATIOS = (
    ("mcserve ÷ Triton, v2 HTTP", "v2_http_vs_triton_c64"),
    ("mcserve ÷ Triton, v2 gRPC", "v2_grpc_vs_triton_c64"),
    ("mcserve v2 gRPC ÷ gRPC floor", "v2_grpc_vs_floor_c64"),
    ("gRPC kernel floor ÷ gRPC floor", "grpc_kernel_floor_vs_floor_c64"),
    ("mcserve v2 gRPC ÷ gRPC kernel floor", "v2_grpc_vs_kernel_floor_c64"),
    ("Triton v2 gRPC ÷ gRPC floor", "triton_v2_grpc_vs_floor_c64"),
    ("mcserve ÷ Triton, v2 HTTP, MC T=100", "v2_http_mc_t100_vs_triton_c64"),
    ("mcserve ÷ Triton, v2 gRPC, MC T=100", "v2_grpc_mc_t100_vs_triton_c64"),
)
KERNEL_IMPLS = (
    ("naive loop (train mode)", "naive"),
    ("repeat input T times", "repeat"),
    ("service kernel", "service"),
    ("GEMM limit", "gemm_limit"),
    ("active-unit GEMM limit", "active_gemm_limit"),
)


def fmt(value: Any, digits: int = 1) -> str:
    if value is None:
        return "n/a"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if abs(value) >= 1000:
            return f"{value:,.0f}"
        return f"{value:.{digits}f}"
    return str(value)


def _check(value: float | None, op: str, target: float) -> str:
    if value is None:
        return "not measured"
    ok = value >= target if op == ">=" else value <= target
    return "yes" if ok else "**no**"


def _v2_failures(v: dict[str, Any]) -> int | None:
    """perf_analyzer stops at the first failed request: a mcserve v2 run that failed left a ``*_error`` string."""
    if not v:
        return None
    labels = ("v2_http", "v2_grpc", "v2_http_mc_t100", "v2_grpc_mc_t100")
    return sum(1 for label in labels if v.get(f"{label}_error")) + sum(
        int(v.get(f"{label}_errors_c{c}") or 0) for label in labels for c in (1, 16, 64)
    )


def headline(sec: dict[str, dict[str, Any]]) -> str:
    k, h, t, b = sec["kernel"], sec["http"], sec["train"], sec["batching"]
    v = sec.get("v2") or {}

    def rel(a: str, b: str) -> float | None:
        x, y = h.get(a), h.get(b)
        return x / y if isinstance(x, int | float) and isinstance(y, int | float) and y > 0 else None

    errors = sum(int(h.get(f"predict_errors_c{c}") or 0) for c in (1, 16, 64)) if h else None
    rows = [
        ("MC kernel vs naive loop, B=1 T=100", k.get("speedup_vs_naive_b1_t100"), ">=", 10.0),
        ("MC kernel vs repeated batch, B=32 T=100", k.get("speedup_vs_repeat_b32_t100"), ">=", 1.8),
        ("MC kernel time / GEMM limit, B=32 T=100", k.get("ratio_to_gemm_limit_b32_t100"), "<=", 1.5),
        (
            "MC kernel time / active-unit GEMM limit, B=32 T=100 (context)",
            k.get("ratio_to_active_gemm_limit_b32_t100"),
            "",
            0,
        ),
        ("`/predict` req/s ÷ LitServe, c=64", rel("predict_rps_c64", "litserve_predict_rps_c64"), ">=", 1.5),
        ("`/predict` req/s ÷ TorchServe, c=64", rel("predict_rps_c64", "torchserve_predict_rps_c64"), ">=", 2.0),
        ("`/predict` req/s ÷ bare uvicorn, c=64", rel("predict_rps_c64", "bare_uvicorn_rps_c64"), ">=", 0.6),
        (
            "`/predict` req/s ÷ bare uvicorn, c=64, interleaved rounds (context)",
            b.get("interleaved_predict_over_bare_uvicorn_c64"),
            "",
            0,
        ),
        (
            "floor: bare uvicorn + pixel decoding only ÷ bare uvicorn, c=64, interleaved (context)",
            b.get("interleaved_floor_decode_over_bare_uvicorn_c64"),
            "",
            0,
        ),
        (
            "floor: decoding + batching + eval kernel inside uvicorn's protocol ÷ bare uvicorn, c=64, interleaved "
            "(context)",
            b.get("interleaved_floor_protocol_over_bare_uvicorn_c64"),
            "",
            0,
        ),
        (
            "`/predict` req/s ÷ floor of decoding + batching + eval kernel, c=64, interleaved (context)",
            b.get("interleaved_predict_over_floor_model_c64"),
            "",
            0,
        ),
        (
            "`/predict` req/s ÷ bare FastAPI route, c=64 (context)",
            rel("predict_rps_c64", "bare_fastapi_rps_c64"),
            "",
            0,
        ),
        (
            "LitServe ÷ `/predict` server CPU per request, c=64 (context)",
            rel("litserve_predict_server_cpu_ms_per_req_c64", "predict_server_cpu_ms_per_req_c64"),
            "",
            0,
        ),
        (
            "batching on ÷ off, `/predict` req/s, c=16 (interleaved A/B, keep if > 1)",
            b.get("batching_rps_gain_c16"),
            "",
            0,
        ),
        (
            "batching on ÷ off, `/predict` req/s, c=64 (interleaved A/B, keep if > 1)",
            b.get("batching_rps_gain_c64"),
            "",
            0,
        ),
        (
            "batching on ÷ off, `/predict` p99 at c=1 (interleaved A/B, keep if <= ~1)",
            b.get("batching_p99_ratio_c1"),
            "",
            0,
        ),
        (
            "fast path on ÷ off, `/predict` req/s, c=64 (context)",
            rel("predict_rps_c64", "predict_route_rps_c64"),
            "",
            0,
        ),
        (
            "fast path on ÷ off, `/predict/uncertainty` (T=100) req/s, c=1 (context)",
            rel("uncertainty_t100_rps_c1", "uncertainty_t100_route_rps_c1"),
            "",
            0,
        ),
        ("mcserve ÷ Triton, v2 HTTP infer/s, c=64 (perf_analyzer)", v.get("v2_http_vs_triton_c64"), ">=", 1.5),
        ("mcserve ÷ Triton, v2 gRPC infer/s, c=64 (perf_analyzer)", v.get("v2_grpc_vs_triton_c64"), ">=", 1.0),
        ("mcserve v2 gRPC ÷ bare grpc.aio floor, infer/s, c=64 (context)", v.get("v2_grpc_vs_floor_c64"), "", 0),
        ("v2 perf_analyzer runs that failed (HTTP, gRPC, both models, c=1,16,64)", _v2_failures(v), "<=", 0),
        ("training job ÷ DataLoader pipeline, samples/s", t.get("train_speedup_vs_dataloader"), ">=", 5.0),
    ]
    lines = ["| claim | target | measured | met |", "|---|---|---|---|"]
    for name, value, op, target in rows:
        met = _check(value, op, target) if op else "-"
        lines.append(f"| {name} | {op} {target:g} |" if op else f"| {name} | - |")
        lines[-1] += f" {fmt(value, 2)} | {met} |"
    lines.append(f"| `/predict` errors over c=1,16,64 | 0 | {fmt(errors)} | {_check(-(errors or 0), '>=', 0)} |")
    lines.append(f"| `/predict` p99 at c=1 (ms) | reported | {fmt(h.get('predict_p99_ms_c1'), 2)} | - |")
    return "\n".join(lines)


def kernel_table(k: dict[str, Any]) -> str:
    matrix = k.get("matrix") or []
    if not matrix:
        return "_kernel benchmark not run_"
    shapes = sorted({(r["n_samples"], r["batch"]) for r in matrix})
    head = "| T | B | " + " | ".join(name for name, _ in KERNEL_IMPLS) + " | service ÷ limit | service ÷ active limit |"
    lines = [head, "|---" * (len(KERNEL_IMPLS) + 4) + "|"]
    for n_samples, batch in shapes:
        cells = [k.get(f"{key}_us_per_image_b{batch}_t{n_samples}") for _, key in KERNEL_IMPLS]
        svc, lim, active = cells[2], cells[3], cells[4]  # service kernel, GEMM limit, active-unit limit
        ratios = [svc / floor if svc and floor else None for floor in (lim, active)]
        lines.append(
            f"| {n_samples} | {batch} | "
            + " | ".join(fmt(c) for c in cells)
            + "".join(f" | {fmt(r, 2)}" for r in ratios)
            + " |"
        )
    evals = [f"B={b}: {fmt(k.get(f'eval_predict_us_per_image_b{b}'), 2)} µs" for b in (1, 32, 256)]
    return "\n".join(lines) + "\n\nEval-mode `/predict` kernel, per image: " + ", ".join(evals) + "."


def http_table(h: dict[str, Any]) -> str:
    if not h:
        return "_HTTP benchmark not run_"
    lines = ["| server | c | req/s | p50 ms | p99 ms | errors | server CPU ms/req |", "|---|---|---|---|---|---|---|"]
    notes = []
    for name, key in HTTP_ROWS:
        err = h.get(f"{key}_error")
        if err:
            notes.append(f"- **{name} could not run**: `{' '.join(err.split())[:400]}`")
            lines.append(f"| {name} | - | n/a | n/a | n/a | see note | n/a |")
            continue
        if h.get(f"{key}_rps_c1") is None and f"{key}_error" not in h:
            continue
        for c in (1, 16, 64):
            vals = [h.get(f"{key}_{m}_c{c}") for m in ("rps", "p50_ms", "p99_ms", "errors", "server_cpu_ms_per_req")]
            lines.append(f"| {name} | {c} | " + " | ".join(fmt(v, 2 if i else 0) for i, v in enumerate(vals)) + " |")
    return "\n".join([*lines, "", *notes] if notes else lines)


def v2_table(v: dict[str, Any]) -> str:
    """perf_analyzer's infer/s and p99 per endpoint at c = 1, 16, 64 (``*``: never stable, measured relaxed)."""
    if not v:
        return "_v2 benchmark not run_"
    head = "| endpoint | infer/s c=1 | c=16 | c=64 | p99 ms c=1 | c=16 | c=64 | errors | server CPU ms/infer c=64 |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    notes = []
    for name, key in V2_ROWS:
        if f"{key}_infer_per_s_c1" not in v and f"{key}_error" not in v:
            continue
        rps = []
        for c in (1, 16, 64):
            star = "\\*" if v.get(f"{key}_stable_c{c}") is False else ""
            rps.append(fmt(v.get(f"{key}_infer_per_s_c{c}"), 0) + star)
        p99 = [fmt(v.get(f"{key}_p99_ms_c{c}"), 2) for c in (1, 16, 64)]
        errs = [v.get(f"{key}_errors_c{c}") for c in (1, 16, 64)]
        err_text = fmt(sum(int(e) for e in errs if e is not None)) if any(e is not None for e in errs) else "n/a"
        if v.get(f"{key}_error"):
            err_text = "see note"
            notes.append(f"- **{name} failed**: `{' '.join(str(v[f'{key}_error']).split())[:400]}`")
        cpu = fmt(v.get(f"{key}_server_cpu_ms_per_infer_c64"), 2)
        lines.append(f"| {name} | " + " | ".join([*rps, *p99, err_text, cpu]) + " |")
    lines += ["", "| infer/s ratio at c=64 | value |", "|---|---|"]
    lines += [f"| {name} | {fmt(v.get(key), 2)} |" for name, key in V2_RATIOS]
    if any(v.get(f"{key}_stable_c{c}") is False for _, key in V2_ROWS for c in (1, 16, 64)):
        lines += ["", "\\* perf_analyzer found no 3 windows in a row within the stability percentage; the figure is "
                  "the relaxed retry's (see the conditions)."]  # fmt: skip
    return "\n".join([*lines, "", *notes] if notes else lines)


def batching_table(b: dict[str, Any]) -> str:
    if not b:
        return "_batching A/B not run_"
    head = "| c | req/s on | req/s off | on ÷ off | p99 ms on | p99 ms off | errors on/off | bare uvicorn req/s "
    head += "| on ÷ bare |"
    lines = [head, "|---|---|---|---|---|---|---|---|---|"]
    for c in (1, 16, 64):
        on, off = b.get(f"batching_on_rps_c{c}"), b.get(f"batching_off_rps_c{c}")
        lines.append(
            f"| {c} | {fmt(on, 0)} | {fmt(off, 0)} | {fmt(b.get(f'batching_rps_gain_c{c}'), 2)} | "
            f"{fmt(b.get(f'batching_on_p99_ms_c{c}'), 2)} | {fmt(b.get(f'batching_off_p99_ms_c{c}'), 2)} | "
            f"{fmt(b.get(f'batching_on_errors_c{c}'))}/{fmt(b.get(f'batching_off_errors_c{c}'))} | "
            f"{fmt(b.get(f'batching_bare_rps_c{c}'), 0)} | "
            f"{fmt(b.get(f'interleaved_predict_over_bare_uvicorn_c{c}'), 2)} |"
        )
    return "\n".join(lines)


def floor_table(b: dict[str, Any]) -> str:
    if b.get("batching_floor_decode_rps_c64") is None:
        return "_floors not run_"
    lines = [
        "| c | bare uvicorn req/s | + decoding (÷ bare) | + batching, eval kernel (÷ bare) "
        "| the same inside uvicorn's protocol (÷ bare) | mcserve `/predict` (÷ bare) | mcserve ÷ model floor |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in (1, 16, 64):
        cells = [fmt(b.get(f"batching_bare_rps_c{c}"), 0)]
        for rps, ratio in (
            ("floor_decode", "floor_decode_over_bare_uvicorn"),
            ("floor_model", "floor_model_over_bare_uvicorn"),
            ("floor_protocol", "floor_protocol_over_bare_uvicorn"),
            ("on", "predict_over_bare_uvicorn"),
        ):
            cells.append(f"{fmt(b.get(f'batching_{rps}_rps_c{c}'), 0)} ({fmt(b.get(f'interleaved_{ratio}_c{c}'), 2)})")
        cells.append(fmt(b.get(f"interleaved_predict_over_floor_model_c{c}"), 2))
        lines.append(f"| {c} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def train_table(t: dict[str, Any]) -> str:
    if not t:
        return "_training benchmark not run_"
    lines = ["| pipeline | samples/s | samples | seconds |", "|---|---|---|---|"]
    for key in ("training_job", "dataloader"):
        r = t.get(key) or {}
        lines.append(f"| {r.get('source', key)} | {fmt(r.get('samples_per_s'))} | {r.get('samples')} | "
                     f"{fmt(r.get('seconds'), 2)} |")  # fmt: skip
    return "\n".join(lines)
