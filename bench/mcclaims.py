"""The MC parts of ``bench http`` that need no server: the kernel's own cost timed in process, and the claims derived
from the measured keys (efficiency, ratios to the floor and the best peer, the batching A/B summary)."""

from __future__ import annotations

import contextlib
import importlib.util
import statistics
from pathlib import Path
from typing import Any

from bench import artifact
from bench.timing import ratio

MC_SAMPLES = 100
MC_PEERS = ("litserve", "torchserve", "triton")
KERNEL_BATCH = 32


def _reason(exc: Exception) -> str:
    return f"{type(exc).__name__}: {exc}"


def _one_blas_thread() -> contextlib.AbstractContextManager[object]:
    """numpy's BLAS on one thread too (as ``MCSERVE_TORCH_THREADS=1`` makes the service set it), where threadpoolctl
    is installed; numpy read OPENBLAS_NUM_THREADS long before this process could set it."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        return contextlib.nullcontext()
    return threadpool_limits(limits=1, user_api="blas")


def mc_kernel_cost(model_dir: Path, quick: bool) -> dict[str, Any]:
    """µs per image of ``service.inference.mc_predict`` at B = 32, T = 100 on the served artifact, one torch thread,
    timed in this process (no server is running yet)."""
    import torch

    from bench.kernel import keep_freed_buffers_if_available
    from bench.timing import time_call
    from mcnet import load_artifact

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        from service.inference import mc_predict

        keep_freed_buffers_if_available()
        model, _ = load_artifact(model_dir)
        x, images_note = artifact.test_images(KERNEL_BATCH)
        gen = torch.Generator().manual_seed(1234)

        def call() -> None:
            with torch.inference_mode():
                mc_predict(model, x, MC_SAMPLES, gen, chunk_size=8192)

        with _one_blas_thread():
            timing = time_call(call, warmup=3, min_repeats=10, max_repeats=1000, budget_s=0.5 if quick else 2.0)
        us = timing.median_s * 1e6 / KERNEL_BATCH
        print(f"bench http: MC kernel B={KERNEL_BATCH} T={MC_SAMPLES}: {us:.1f} µs/image", flush=True)
        blas = "1 thread (threadpoolctl)" if importlib.util.find_spec("threadpoolctl") else "default (no threadpoolctl)"
        return {
            "mc_kernel_us_per_image_b32_t100": us,
            "mc_kernel_error": None,
            "mc_kernel_images": images_note,
            "mc_kernel_numpy_blas_threads": blas,
            "mc_kernel_code": _kernel_code(),
        }
    except Exception as exc:
        print(f"bench http: MC kernel timing failed: {_reason(exc)[:300]}", flush=True)
        return {"mc_kernel_us_per_image_b32_t100": None, "mc_kernel_error": _reason(exc)}
    finally:
        torch.set_num_threads(threads)


def _kernel_code() -> str:
    from service import mcnative

    return mcnative.choice().name


def ab_summary(p99s: dict[str, list[float]]) -> dict[str, float | None]:
    """Median over rounds of each side's p99 at c = 1, and on ÷ off."""
    on = statistics.median(p99s["on"]) if p99s.get("on") else None
    off = statistics.median(p99s["off"]) if p99s.get("off") else None
    return {
        "uncertainty_t100_p99_ms_c1_batch_on": on,
        "uncertainty_t100_p99_ms_c1_batch_off": off,
        "uncertainty_t100_p99_c1_on_vs_off": ratio(on, off),
    }


def _number(value: Any) -> float | None:
    return float(value) if isinstance(value, int | float) and not isinstance(value, bool) else None


def mc_derived(out: dict[str, Any]) -> dict[str, Any]:
    """The MC claims from the measured keys (``None`` where a side is missing).

    Efficiency = req/s × the kernel's µs per image at B = 32 ÷ 10^6: the share of one core the kernel alone would
    need to serve that many one-image requests batched 32 at a time.
    """
    us = _number(out.get("mc_kernel_us_per_image_b32_t100"))
    svc, floor = _number(out.get("uncertainty_t100_rps_c64")), _number(out.get("mc_floor_rps_c64"))
    peers = {p: _number(out.get(f"{p}_mc_t100_rps_c64")) for p in MC_PEERS}
    ran = {p: v for p, v in peers.items() if v is not None and v > 0}
    best = max(ran, key=lambda p: ran[p]) if ran else None
    return {
        "mc_http_efficiency_c64": svc * us / 1e6 if svc is not None and us is not None else None,
        "mc_floor_efficiency_c64": floor * us / 1e6 if floor is not None and us is not None else None,
        "mc_vs_floor_c64": ratio(svc, floor),
        "mc_vs_best_peer_c64": ratio(svc, ran[best]) if best is not None else None,
        "mc_best_peer_c64": best,
    }
