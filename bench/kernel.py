"""``python -m bench kernel``: per-image cost of MC-dropout inference, naive vs repeat vs service vs GEMM limit."""

from __future__ import annotations

import platform
import time
from pathlib import Path
from typing import Any

import torch

from bench import kernels
from bench.artifact import test_images
from bench.timing import Timing, ratio, time_call
from mcnet import DropoutMLP, load_artifact

FULL_T = (10, 30, 100, 1000)
FULL_B = (1, 32, 256)
QUICK_T = (10, 100)
QUICK_B = (1, 32)
EVAL_B = (1, 32, 256)
# The repeat-batch kernel materialises T*B x 784 floats; above this many rows it is skipped (memory, not speed).
MAX_REPEAT_ROWS = 64_000


def load_model(model_dir: Path | None) -> tuple[DropoutMLP, str]:
    """The artifact's model, or a seeded random-weight one (timing does not depend on the weight values)."""
    if model_dir is not None:
        model, manifest = load_artifact(model_dir)
        return model, f"artifact {model_dir} (version {manifest['version']})"
    torch.manual_seed(0)
    return DropoutMLP().eval(), "random weights (seed 0); timing does not depend on weight values"


def _time(fn: Any, quick: bool) -> Timing:
    start = time.perf_counter()
    fn()  # first call doubles as a warm-up and tells how many repeats we can afford
    first = time.perf_counter() - start
    if first > 0.3:
        return time_call(fn, warmup=0, min_repeats=3, max_repeats=3)
    budget = 0.15 if quick else 0.5
    return time_call(fn, warmup=1, min_repeats=5, max_repeats=500, budget_s=budget)


def _record(impl: str, n_samples: int, batch: int, timing: Timing | None, note: str | None = None) -> dict[str, Any]:
    rec: dict[str, Any] = {"impl": impl, "n_samples": n_samples, "batch": batch}
    if timing is None:
        rec.update(median_ms=None, us_per_image=None, repeats=0, note=note)
    else:
        rec.update(
            median_ms=timing.median_s * 1e3,
            us_per_image=timing.median_s * 1e6 / batch,
            repeats=timing.repeats,
            spread_ms=[timing.min_s * 1e3, timing.max_s * 1e3],
        )
    return rec


def run(quick: bool, threads: int, model_dir: Path | None, chunk_size: int) -> dict[str, Any]:
    torch.set_num_threads(threads)
    keep_buffers = keep_freed_buffers_if_available()  # as the service does at startup; applies to every implementation
    model, model_note = load_model(model_dir)
    service, service_error = kernels.load_service_kernel(chunk_size)
    impls: dict[str, kernels.Kernel | None] = {
        "naive": kernels.naive_loop,
        "repeat": kernels.repeat_batch,
        "service": service,
        "gemm_limit": kernels.GemmLimit(),
        "active_gemm_limit": kernels.ActiveGemmLimit(),
        "tiled_gemm_limit": kernels.TiledGemmLimit(),
    }
    t_values, b_values = (QUICK_T, QUICK_B) if quick else (FULL_T, FULL_B)
    images, images_note = test_images(max(max(b_values), max(EVAL_B)))
    matrix: list[dict[str, Any]] = []
    out: dict[str, Any] = {}
    for n_samples in t_values:
        for batch in b_values:
            x = images[:batch].contiguous()
            for name, impl in impls.items():
                if impl is None:
                    matrix.append(_record(name, n_samples, batch, None, service_error))
                    continue
                if name == "repeat" and not kernels.rows_budget_ok(n_samples, batch, MAX_REPEAT_ROWS):
                    matrix.append(_record(name, n_samples, batch, None, f"skipped: more than {MAX_REPEAT_ROWS} rows"))
                    continue
                gen = torch.Generator().manual_seed(1234)
                timing = _time(lambda impl=impl, x=x, t=n_samples, g=gen: impl(model, x, t, g), quick)
                matrix.append(_record(name, n_samples, batch, timing))
                print(f"bench kernel: {name} T={n_samples} B={batch}: {timing.median_s * 1e3:.2f} ms/call", flush=True)
    for rec in matrix:
        out[f"{rec['impl']}_us_per_image_b{rec['batch']}_t{rec['n_samples']}"] = rec["us_per_image"]

    predict_eval, eval_error = kernels.load_eval_predict()
    eval_fn = predict_eval or kernels.eval_forward
    for batch in EVAL_B:
        x = images[:batch].contiguous()
        timing = _time(lambda x=x: eval_fn(model, x), quick)
        out[f"eval_predict_us_per_image_b{batch}"] = timing.median_s * 1e6 / batch

    def cost(impl: str, batch: int, n_samples: int) -> float | None:
        return out.get(f"{impl}_us_per_image_b{batch}_t{n_samples}")

    out.update(
        speedup_vs_naive_b1_t100=ratio(cost("naive", 1, 100), cost("service", 1, 100)),
        speedup_vs_repeat_b32_t100=ratio(cost("repeat", 32, 100), cost("service", 32, 100)),
        ratio_to_gemm_limit_b32_t100=ratio(cost("service", 32, 100), cost("gemm_limit", 32, 100)),
        speedup_vs_naive_b32_t100=ratio(cost("naive", 32, 100), cost("service", 32, 100)),
        ratio_to_gemm_limit_b1_t100=ratio(cost("service", 1, 100), cost("gemm_limit", 1, 100)),
        ratio_to_active_gemm_limit_b32_t100=ratio(cost("service", 32, 100), cost("active_gemm_limit", 32, 100)),
        ratio_to_active_gemm_limit_b1_t100=ratio(cost("service", 1, 100), cost("active_gemm_limit", 1, 100)),
        ratio_to_tiled_gemm_limit_b32_t100=ratio(cost("service", 32, 100), cost("tiled_gemm_limit", 32, 100)),
        ratio_to_tiled_gemm_limit_b1_t100=ratio(cost("service", 1, 100), cost("tiled_gemm_limit", 1, 100)),
        tiled_vs_active_gemm_limit_b32_t100=ratio(
            cost("tiled_gemm_limit", 32, 100), cost("active_gemm_limit", 32, 100)
        ),
        tiled_vs_active_gemm_limit_b1_t100=ratio(cost("tiled_gemm_limit", 1, 100), cost("active_gemm_limit", 1, 100)),
    )
    out["service_kernel_error"] = service_error
    out["eval_predict_source"] = "service.inference.predict_eval" if predict_eval else f"fallback ({eval_error})"
    out["conditions"] = {
        "service_kernel_code": _kernel_code(),
        "torch_threads": threads,
        "torch": torch.__version__,
        "cpu": platform.processor() or platform.machine(),
        "mc_chunk_size": chunk_size,
        "model": model_note,
        "images": images_note,
        "quick": quick,
        "timing": "median of repeats after warm-up; us_per_image = median call time / batch",
        "allocator": "glibc mallopt keep-freed-buffers, as the service sets it (service.memory)"
        if keep_buffers
        else "default allocator settings",
    }
    out["matrix"] = matrix
    return out


def _kernel_code() -> str:
    """Which code ``service_kernel`` ran: the C kernel or numpy (``service.mcnative``, MCSERVE_MC_NATIVE=auto)."""
    try:
        from service import mcnative
    except ImportError as exc:
        return f"unknown ({exc})"
    choice = mcnative.choice()
    return f"{choice.name} ({choice.reason})"


def keep_freed_buffers_if_available() -> bool:
    """``service.memory.keep_freed_buffers`` (glibc mallopt, as the service sets it at startup), if importable."""
    try:
        from service.memory import keep_freed_buffers
    except ImportError:
        return False
    return keep_freed_buffers()
