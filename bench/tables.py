"""The tables of docs/benchmarks.md (headline claims, kernel, HTTP, MC over HTTP, v2, batching A/B, training), from
the results JSON's sections; ``bench.report`` puts them into the page."""

from __future__ import annotations

from typing import Any

HTTP_ROWS = (
    ("mcserve `/predict`", "predict"),
    ("mcserve `/predict`, batching off (`MCSERVE_BATCH_MAX_IMAGES=1`)", "predict_nobatch"),
    ("mcserve `/predict`, fast path off (`MCSERVE_FAST_PATH=false`)", "predict_route"),
    ("LitServe", "litserve_predict"),
    ("TorchServe", "torchserve_predict"),
    ("Triton (PyTriton)", "triton_predict"),
    ("bare uvicorn (raw ASGI, constant; context)", "bare_uvicorn"),
    ("bare FastAPI route (constant; context)", "bare_fastapi"),
    ("mcserve `/predict/uncertainty` (T=100)", "uncertainty_t100"),
    ("mcserve `/predict/uncertainty` (T=100), fast path off", "uncertainty_t100_route"),
    ("LitServe, MC T=100", "litserve_mc_t100"),
    ("TorchServe, MC T=100", "torchserve_mc_t100"),
    ("Triton (PyTriton), MC T=100", "triton_mc_t100"),
    ("MC floor (bare uvicorn + batched MC kernel, constant)", "mc_floor"),
)
MC_PEER_NAMES = {"litserve": "LitServe", "torchserve": "TorchServe", "triton": "Triton (PyTriton)"}
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
    ("per-tile GEMM limit (company-independent)", "tiled_gemm_limit"),
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


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def _v2_failures(v: dict[str, Any]) -> int | None:
    """perf_analyzer stops at the first failed request: a mcserve v2 run that failed left a ``*_error`` string."""
    if not v:
        return None
    labels = ("v2_http", "v2_grpc", "v2_http_mc_t100", "v2_grpc_mc_t100")
    return sum(1 for label in labels if v.get(f"{label}_error")) + sum(
        int(v.get(f"{label}_errors_c{c}") or 0) for label in labels for c in (1, 16, 64)
    )


def efficiency_target(floor_efficiency: Any) -> tuple[float, str]:
    """The MC HTTP efficiency target: 0.5, or 0.8 of the floor's where the floor itself shows 0.5 out of reach."""
    floor = _number(floor_efficiency)
    if floor is not None and floor < 0.5:
        return 0.8 * floor, f">= 0.8 × floor = {0.8 * floor:.2f}"
    return 0.5, ">= 0.5"


def overload_small_met(o: dict[str, Any]) -> str:
    """A small MC request under the flood: answered within 0.25 s (p95 of the 200s) or refused fast (503 p95)."""
    if not o:
        return "not run"
    p95, ok = _number(o.get("overload_small_p95_s")), o.get("overload_small_ok")
    fraction, p95_503 = _number(o.get("overload_small_503_fraction")), _number(o.get("overload_small_503_p95_s"))
    if p95 is None and not ok and not fraction:
        return "not measured"
    answered_fast = p95 is None if not ok else p95 is not None and p95 <= 0.25
    refused_fast = not fraction or (p95_503 is not None and p95_503 <= 0.25)
    return "yes" if answered_fast and refused_fast else "**no**"


def _mc_peer_claim(h: dict[str, Any]) -> tuple[str, float | None]:
    best = h.get("mc_best_peer_c64")
    peer = f"{MC_PEER_NAMES.get(str(best), str(best))}, the best MC peer" if best else "the best MC peer (none ran)"
    return f"`/predict/uncertainty` (T=100) req/s ÷ {peer}, c=64", _number(h.get("mc_vs_best_peer_c64"))


def _mc_batch_ab_name(h: dict[str, Any]) -> str:
    name = "MC batching on ÷ off (`MCSERVE_MC_BATCH`), `/predict/uncertainty` (T=100) p99 at c=1 (interleaved A/B)"
    setting = h.get("uncertainty_t100_batch_ab_setting")
    if isinstance(setting, str) and setting != "recognised":
        name += f" ({setting})"
    return name


Row = tuple[str, Any, str, str]  # claim, measured value, target text, met


def _row(name: str, value: Any, op: str = "", target: float = 0.0, section: dict[str, Any] | None = None) -> Row:
    """A headline row; ``op`` "" is context (no target). ``section`` {} (not run) renders as "not run"."""
    if section is not None and not section:
        return name, "not run", f"{op} {target:g}" if op else "-", "not run" if op else "-"
    return name, value, f"{op} {target:g}" if op else "-", _check(_number(value), op, target) if op else "-"


def headline(sec: dict[str, dict[str, Any]]) -> str:
    k, h, t, b = (sec.get(name) or {} for name in ("kernel", "http", "train", "batching"))
    hc = sec.get("http_cores") or {}
    workers = (hc.get("conditions") or {}).get("server_workers", "?")
    v, o = sec.get("v2") or {}, sec.get("overload") or {}

    def rel(a: str, b: str) -> float | None:
        x, y = _number(h.get(a)), _number(h.get(b))
        return x / y if x is not None and y is not None and y > 0 else None

    mc_name, mc_value = _mc_peer_claim(h)
    eff_target, eff_text = efficiency_target(h.get("mc_floor_efficiency_c64"))
    eff = _number(h.get("mc_http_efficiency_c64"))
    rows: list[Row] = [
        _row("MC kernel vs naive loop, B=1 T=100", k.get("speedup_vs_naive_b1_t100"), ">=", 10.0, k),
        _row("MC kernel vs repeated batch, B=32 T=100", k.get("speedup_vs_repeat_b32_t100"), ">=", 1.8, k),
        _row("MC kernel time / GEMM limit, B=32 T=100", k.get("ratio_to_gemm_limit_b32_t100"), "<=", 1.5, k),
        _row(
            "MC kernel time / active-unit GEMM limit, B=32 T=100",
            k.get("ratio_to_active_gemm_limit_b32_t100"),
            "<=",
            1.6,
            k,
        ),
        _row(
            "MC kernel time / active-unit GEMM limit, B=1 T=100",
            k.get("ratio_to_active_gemm_limit_b1_t100"),
            "<=",
            2.5,
            k,
        ),
        _row(
            "MC kernel time / per-tile GEMM limit, B=32 T=100 (context: the floor of a company-independent kernel)",
            k.get("ratio_to_tiled_gemm_limit_b32_t100"),
            section=k,
        ),
        _row(
            "MC kernel time / per-tile GEMM limit, B=1 T=100 (context)",
            k.get("ratio_to_tiled_gemm_limit_b1_t100"),
            section=k,
        ),
        _row(
            "per-tile GEMM limit / active-unit GEMM limit, B=32 T=100 (context: the price of per-tile GEMMs)",
            k.get("tiled_vs_active_gemm_limit_b32_t100"),
            section=k,
        ),
        _row("`/predict` req/s ÷ LitServe, c=64", rel("predict_rps_c64", "litserve_predict_rps_c64"), ">=", 1.5, h),
        _row("`/predict` req/s ÷ TorchServe, c=64", rel("predict_rps_c64", "torchserve_predict_rps_c64"), ">=", 2.0, h),
        _row(
            "LitServe ÷ `/predict` server CPU per request, c=64 (context)",
            rel("litserve_predict_server_cpu_ms_per_req_c64", "predict_server_cpu_ms_per_req_c64"),
            section=h,
        ),
        _row(mc_name, mc_value, ">=", 5.0, h),
        _row(
            "`/predict/uncertainty` (T=100) req/s ÷ the best MC peer of the same round, c=64: median of interleaved "
            "rounds with every MC server started (the drift-free form of the row above)",
            h.get("mc_rounds_vs_best_peer_c64_median"),
            ">=",
            5.0,
            h,
        ),
        (
            "MC HTTP efficiency, c=64: `/predict/uncertainty` req/s × kernel µs/image (B=32, T=100) ÷ 10^6",
            eff if h else "not run",
            eff_text,
            _check(eff, ">=", eff_target) if h else "not run",
        ),
        _row(
            "MC floor's efficiency, c=64 (bare uvicorn + batched kernel, constant payload; context)",
            h.get("mc_floor_efficiency_c64"),
            section=h,
        ),
        _row("`/predict/uncertainty` req/s ÷ MC floor, c=64 (context)", h.get("mc_vs_floor_c64"), section=h),
        (
            "MC HTTP efficiency, c=64, median mcserve req/s of the interleaved rounds × kernel µs/image ÷ 10^6",
            _number(h.get("mc_rounds_efficiency_c64")) if h else "not run",
            eff_text,
            _check(_number(h.get("mc_rounds_efficiency_c64")), ">=", eff_target) if h else "not run",
        ),
        _row(
            "`/predict/uncertainty` req/s ÷ MC floor of the same round, c=64: median of interleaved rounds",
            h.get("mc_rounds_vs_floor_c64_median"),
            ">=",
            0.8,
            h,
        ),
        _row(
            f"`/predict/uncertainty` (T=100) req/s ÷ the best MC peer ({hc.get('mc_best_peer_c64') or '?'}), c=64, "
            f"with {workers} server processes (a worker per core) for every server that takes a worker count",
            hc.get("mc_vs_best_peer_c64"),
            ">=",
            5.0,
            hc,
        ),
        _row(
            f"MC HTTP efficiency per core, c=64, {workers} workers: req/s × kernel µs/image ÷ 10^6 ÷ workers",
            hc.get("mc_http_efficiency_per_core_c64"),
            section=hc,
        ),
        _row(
            f"`/predict/uncertainty` req/s ÷ MC floor, c=64, both with {workers} workers (context)",
            hc.get("mc_vs_floor_c64"),
            section=hc,
        ),
        _row(_mc_batch_ab_name(h), h.get("uncertainty_t100_p99_c1_on_vs_off"), "<=", 1.1, h),
        _row(
            "batching on ÷ off, `/predict` req/s, c=16 (interleaved A/B, keep if > 1)",
            b.get("batching_rps_gain_c16"),
            section=b,
        ),
        _row(
            "batching on ÷ off, `/predict` req/s, c=64 (interleaved A/B, keep if > 1)",
            b.get("batching_rps_gain_c64"),
            section=b,
        ),
        _row(
            "batching on ÷ off, `/predict` p99 at c=1 (interleaved A/B, keep if <= ~1)",
            b.get("batching_p99_ratio_c1"),
            section=b,
        ),
        _row("mcserve ÷ Triton, v2 HTTP infer/s, c=64 (perf_analyzer)", v.get("v2_http_vs_triton_c64"), ">=", 1.5, v),
        _row("mcserve ÷ Triton, v2 gRPC infer/s, c=64 (perf_analyzer)", v.get("v2_grpc_vs_triton_c64"), ">=", 1.0, v),
        _row(
            "mcserve v2 gRPC ÷ bare grpc.aio floor, infer/s, c=64 (context)", v.get("v2_grpc_vs_floor_c64"), section=v
        ),
        _row("v2 perf_analyzer runs that failed (HTTP, gRPC, both models, c=1,16,64)", _v2_failures(v), "<=", 0, v),
        (
            "overload: small MC request (1 image, T=100) under a flood of max-work ones, p95 of its 200s (s)",
            o.get("overload_small_p95_s") if o else "not run",
            "<= 0.25, or a fast 503",
            overload_small_met(o),
        ),
        _row(
            "overload: share of those small requests refused with 503", o.get("overload_small_503_fraction"), "", 0, o
        ),
        _row("overload: invalid request (422) p95 under the flood (ms)", o.get("overload_invalid_p95_ms"), "<=", 50, o),
        _row("overload: `/predict` p95 under the flood (ms)", o.get("overload_predict_p95_ms"), "<=", 50, o),
        _row("overload: slowest flood answer (s)", o.get("overload_flood_max_s"), "<=", 30, o),
        _row("overload: flood answers neither 200 nor 503", o.get("overload_flood_bad_statuses"), "<=", 0, o),
        _row("overload: server RSS growth over the run (MiB)", o.get("overload_rss_growth_mb"), "", 0, o),
        _row("training job ÷ DataLoader pipeline, samples/s", t.get("train_speedup_vs_dataloader"), ">=", 5.0, t),
    ]
    labels = ("predict", "uncertainty_t100")
    errors = sum(int(h.get(f"{label}_errors_c{c}") or 0) for label in labels for c in (1, 16, 64)) if h else None
    rows.append(_row("`/predict` and `/predict/uncertainty` errors over c=1,16,64", errors, "<=", 0, h))
    rows.append(_row("`/predict` p99 at c=1 (ms), reported", h.get("predict_p99_ms_c1"), "", 0, h))
    lines = ["| claim | target | measured | met |", "|---|---|---|---|"]
    lines += [f"| {name} | {target} | {fmt(value, 2)} | {met} |" for name, value, target, met in rows]
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
    lines = [
        "| c | req/s on | req/s off | on ÷ off | p99 ms on | p99 ms off | errors on/off |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in (1, 16, 64):
        on, off = b.get(f"batching_on_rps_c{c}"), b.get(f"batching_off_rps_c{c}")
        lines.append(
            f"| {c} | {fmt(on, 0)} | {fmt(off, 0)} | {fmt(b.get(f'batching_rps_gain_c{c}'), 2)} | "
            f"{fmt(b.get(f'batching_on_p99_ms_c{c}'), 2)} | {fmt(b.get(f'batching_off_p99_ms_c{c}'), 2)} | "
            f"{fmt(b.get(f'batching_on_errors_c{c}'))}/{fmt(b.get(f'batching_off_errors_c{c}'))} |"
        )
    return "\n".join(lines)


MC_SERVERS = (
    ("mcserve `/predict/uncertainty`", "uncertainty_t100"),
    ("LitServe", "litserve_mc_t100"),
    ("TorchServe", "torchserve_mc_t100"),
    ("Triton (PyTriton)", "triton_mc_t100"),
    ("MC floor", "mc_floor"),
)


def mc_table(h: dict[str, Any], with_ab: bool = True) -> str:
    """MC dropout (T = 100) over HTTP: req/s at c=64 per server, its efficiency and mcserve's ratio to it; then the
    kernel's own cost and the MC batching A/B at c = 1."""
    if not h:
        return "_HTTP benchmark not run_"
    us = _number(h.get("mc_kernel_us_per_image_b32_t100"))
    svc = _number(h.get("uncertainty_t100_rps_c64"))
    lines = [
        "| server | req/s c=64 | p99 ms c=64 | efficiency (req/s × kernel µs/image ÷ 10^6) | mcserve ÷ this |",
        "|---|---|---|---|---|",
    ]
    for name, key in MC_SERVERS:
        rps = _number(h.get(f"{key}_rps_c64"))
        eff = rps * us / 1e6 if rps is not None and us is not None else None
        vs = svc / rps if svc is not None and rps else None
        if h.get(f"{key}_error"):
            lines.append(f"| {name} | could not run (see the HTTP notes) | | | |")
            continue
        lines.append(
            f"| {name} | {fmt(rps, 0)} | {fmt(h.get(f'{key}_p99_ms_c64'), 2)} | {fmt(eff, 2)} | "
            + ("-" if key == "uncertainty_t100" else fmt(vs, 2))
            + " |"
        )
    kernel = f"{fmt(us, 1)} µs per image" if us is not None else f"not measured ({h.get('mc_kernel_error')})"
    lines += ["", f"MC kernel (`service.inference.mc_predict`, B=32, T=100, one torch thread): {kernel}."]
    if not with_ab:
        return "\n".join(lines)
    on, off = h.get("uncertainty_t100_p99_ms_c1_batch_on"), h.get("uncertainty_t100_p99_ms_c1_batch_off")
    if h.get("uncertainty_t100_batch_ab_error"):
        ab = f"could not run: `{' '.join(str(h['uncertainty_t100_batch_ab_error']).split())[:400]}`"
    elif on is None and off is None:
        ab = "not run"
    else:
        ab_key = "uncertainty_t100_{}_c1_batch_{}".format
        rounds = {
            side: ", ".join(fmt(x, 2) for x in h.get(ab_key("p99_ms", f"{side}_rounds")) or [])
            for side in ("on", "off")
        }
        ab = (
            f"p99 {fmt(on, 2)} ms on, {fmt(off, 2)} ms off (median of per-round p99s; rounds on {rounds['on']}, "
            f"off {rounds['off']}); on ÷ off {fmt(h.get('uncertainty_t100_p99_c1_on_vs_off'), 2)}; req/s "
            f"{fmt(h.get(ab_key('rps', 'on')), 0)} on, {fmt(h.get(ab_key('rps', 'off')), 0)} off; errors "
            f"{fmt(h.get(ab_key('errors', 'on')))}/{fmt(h.get(ab_key('errors', 'off')))}"
        )
    setting = h.get("uncertainty_t100_batch_ab_setting")
    if isinstance(setting, str) and setting != "recognised":
        ab += f" (`MCSERVE_MC_BATCH` {setting})"
    lines.append(f"MC batching A/B at c=1 (`MCSERVE_MC_BATCH` true vs false, interleaved): {ab}.")
    lines += ["", rounds_text(h)]
    return "\n".join(lines)


def rounds_text(h: dict[str, Any]) -> str:
    """The interleaved MC rounds (``bench.mcrounds``): every round's req/s per server, the per-round ratios."""
    if h.get("mc_rounds_error"):
        return f"Interleaved MC rounds could not run: `{' '.join(str(h['mc_rounds_error']).split())[:400]}`."
    rps = h.get("mc_rounds_rps_c64")
    if not isinstance(rps, dict) or not rps:
        return "Interleaved MC rounds: not run."
    names = {key: name for name, key in MC_SERVERS}

    def series(values: Any) -> str:
        return ", ".join(fmt(v, 2 if isinstance(v, float) and v < 100 else 0) for v in values or [])

    per_server = "; ".join(f"{names.get(label, label)} {series(values)}" for label, values in rps.items())
    return (
        f"Interleaved MC rounds (every MC server started, wrk c=64 on each in turn with the others paused, the order "
        f"rotating; req/s per round): {per_server}. mcserve ÷ the round's best peer: "
        f"{series(h.get('mc_rounds_vs_best_peer_c64'))} "
        f"(median {fmt(h.get('mc_rounds_vs_best_peer_c64_median'), 2)}); ÷ the round's floor: "
        f"{series(h.get('mc_rounds_vs_floor_c64'))} (median {fmt(h.get('mc_rounds_vs_floor_c64_median'), 2)}); "
        f"efficiency at the median mcserve req/s: {fmt(h.get('mc_rounds_efficiency_c64'), 2)}."
    )


def train_table(t: dict[str, Any]) -> str:
    if not t:
        return "_training benchmark not run_"
    lines = ["| pipeline | samples/s | samples | seconds |", "|---|---|---|---|"]
    for key in ("training_job", "dataloader"):
        r = t.get(key) or {}
        lines.append(f"| {r.get('source', key)} | {fmt(r.get('samples_per_s'))} | {r.get('samples')} | "
                     f"{fmt(r.get('seconds'), 2)} |")  # fmt: skip
    return "\n".join(lines)
