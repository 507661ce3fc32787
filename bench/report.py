"""``python -m bench report``: docs/benchmarks.md (+ docs/benchmarks.png) from the results JSON.

The prose lives in ``bench/doc_template.md``; every number comes from the JSON, so a rerun
on another machine regenerates the whole page.
"""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

TEMPLATE = Path(__file__).with_name("doc_template.md")
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


def sections(results: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """Split an ``all`` JSON into its sections; a single-section JSON becomes that one section."""
    known = ("kernel", "http", "batching", "coldstart", "train")
    if any(k in results for k in known):
        return {k: results.get(k) or {} for k in known}
    guess = {
        "kernel": "ratio_to_gemm_limit_b32_t100",
        "http": "predict_rps_c64",
        "batching": "batching_rps_gain_c64",
        "coldstart": "cold_start_s_median",
        "train": "train_speedup_vs_dataloader",
    }
    return {k: (results if key in results else {}) for k, key in guess.items()}


def _check(value: float | None, op: str, target: float) -> str:
    if value is None:
        return "not measured"
    ok = value >= target if op == ">=" else value <= target
    return "yes" if ok else "**no**"


def headline(sec: dict[str, dict[str, Any]]) -> str:
    k, h, t, b = sec["kernel"], sec["http"], sec["train"], sec["batching"]

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
        "| c | bare uvicorn req/s | + decoding req/s (÷ bare) | + batching, eval kernel req/s (÷ bare) "
        "| mcserve `/predict` req/s (÷ bare) | mcserve ÷ second floor |",
        "|---|---|---|---|---|---|",
    ]
    for c in (1, 16, 64):
        cells = [fmt(b.get(f"batching_bare_rps_c{c}"), 0)]
        for rps, ratio in (
            ("floor_decode", "floor_decode_over_bare_uvicorn"),
            ("floor_model", "floor_model_over_bare_uvicorn"),
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


def plot(sec: dict[str, dict[str, Any]], path: Path) -> bool:
    """Two panels: HTTP req/s per server and concurrency; kernel µs/image vs T at B=32. False if nothing to plot."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    h, k = sec["http"], sec["kernel"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(13, 4.8))
    servers = [(n, key) for n, key in HTTP_ROWS if h.get(f"{key}_rps_c1") is not None]
    width = 0.8 / 3
    for i, c in enumerate((1, 16, 64)):
        xs = [j + (i - 1) * width for j in range(len(servers))]
        ax1.bar(xs, [h.get(f"{key}_rps_c{c}") or 0 for _, key in servers], width, label=f"c={c}")
    labels = [n.replace("`", "").replace(" (", "\n(") for n, _ in servers]
    ax1.set_xticks(range(len(servers)), labels, fontsize=7, rotation=20)
    ax1.set_ylabel("requests / s")
    ax1.set_title("HTTP throughput (wrk, one image per request)")
    ax1.legend()
    matrix = k.get("matrix") or []
    for name, key in KERNEL_IMPLS:
        pts = sorted((r["n_samples"], r["us_per_image"]) for r in matrix
                     if r["impl"] == key and r["batch"] == 32 and r["us_per_image"])  # fmt: skip
        if pts:
            ax2.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=name)
    ax2.set_xscale("log")
    ax2.set_yscale("log")
    ax2.set_xlabel("MC samples T")
    ax2.set_ylabel("µs per image (B=32)")
    ax2.set_title("MC-dropout cost per image")
    ax2.legend(fontsize=8)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return bool(servers or matrix)


def render(results: dict[str, Any], plot_name: str) -> str:
    sec = sections(results)
    m = results.get("machine", {})
    cold = sec["coldstart"]
    cold_text = (
        f"{fmt(cold.get('cold_start_s_median'), 2)} s median over {len(cold.get('cold_start_s_all') or [])} starts"
        if cold.get("cold_start_s_median") is not None
        else f"not measured ({cold.get('cold_start_error') or 'not run'})"
    )
    conditions = {name: s.get("conditions") for name, s in sec.items() if s.get("conditions")}
    load = [m.get("load_average_1m_at_start"), m.get("load_average_1m_at_end")]
    cores = m.get("cores") or 1
    # Only the start says whether other work was running: by the end the benchmark's own servers, wrk and the
    # training section have loaded the cores themselves.
    busy = isinstance(load[0], int | float) and load[0] > 0.5 * cores
    load_note = (
        f"1-minute load average {fmt(load[0], 2)} at start; {fmt(load[1], 2)} at the end, which is the benchmark's "
        "own load (servers, wrk, training)"
    )
    if busy:
        load_note = (
            f"**{load_note}, on {cores} cores: the machine was busy with other work when this run started, so these "
            "numbers (kernel timings with 2 threads above all) are distorted; rerun on an idle machine before "
            "quoting them.**"
        )
    return string.Template(TEMPLATE.read_text()).substitute(
        date=m.get("date", "?"),
        machine=f"{m.get('cpu', '?')}, {m.get('cores', '?')} cores, {m.get('platform', '?')}, "
        f"Python {m.get('python', '?')}",
        command=m.get("command", "?"),
        load=load_note,
        headline=headline(sec),
        kernel_table=kernel_table(sec["kernel"]),
        http_table=http_table(sec["http"]),
        batching_table=batching_table(sec["batching"]),
        floor_table=floor_table(sec["batching"]),
        train_table=train_table(sec["train"]),
        cold_start=cold_text,
        plot=plot_name,
        conditions="```json\n" + json.dumps(conditions, indent=2, sort_keys=True) + "\n```",
    )


def write(json_path: Path, doc_path: Path) -> None:
    results = json.loads(json_path.read_text())
    png = doc_path.with_suffix(".png")
    plot(sections(results), png)
    doc_path.write_text(render(results, png.name))
    print(f"bench: wrote {doc_path} and {png}")
