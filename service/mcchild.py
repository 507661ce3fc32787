"""The MC kernel process's side (``service.mcprocess`` is the parent's): load the artifact, then answer calls.

The child runs the same ``service.mckernel`` code as the parent's threads, with the same torch thread count, and
scores each finished request's pixels with the same input check (``service.evalkernel``), so a seeded answer is
bit-identical either way. What a finished request gets back is its summaries in one flat float32 buffer
(``MCResult.pack``: the C kernel's own output) and its input-check scores; the parent reads the buffer as it is
(``MCResult.packed``).
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np
import torch

from mcnet import IMAGE_SIDE as PIXEL_SIDE

Call = tuple[int, np.ndarray | None, int, int, int, int]  # job id, pixels (first call only), T, seed, first, count
# job id, then None (more tiles to come) | (summaries buffer, input-check scores or None, n_samples) | error text
Answer = tuple[int, Any]


# On the wire the pixels travel as raw float32 bytes, and a call's finished summaries and scores as one array each
# (views are cut from them on arrival): pickling a few arrays per call instead of two per request, and no array
# object per request, is most of what the parent's side of a call costs.
WireCall = tuple[int, bytes | None, int, int, int, int]
WireAnswers = tuple[list[tuple[int, Any]], float, np.ndarray | None, np.ndarray | None]


def calls_to_wire(calls: list[Call]) -> list[WireCall]:
    return [
        (i, None if x is None else np.ascontiguousarray(x, np.float32).tobytes(), n, s, f, c)
        for i, x, n, s, f, c in calls
    ]


def calls_from_wire(wire: list[WireCall]) -> list[Call]:
    side = PIXEL_SIDE
    return [
        (i, None if x is None else np.frombuffer(x, np.float32).reshape(-1, side, side), n, s, f, c)
        for i, x, n, s, f, c in wire
    ]


def answers_to_wire(answers: list[Answer], seconds: float) -> WireAnswers:
    """Each finished job's ``(summaries, scores, n_samples)`` as ``(n_samples, start, end, score start, score end)``
    into the call's one summaries array and one scores array (score start -1: no scores)."""
    out: list[tuple[int, Any]] = []
    summaries: list[np.ndarray] = []
    scores: list[np.ndarray] = []
    at, score_at = 0, 0
    for job_id, answer in answers:
        if answer is None or isinstance(answer, str):
            out.append((job_id, answer))
            continue
        buffer, score, n_samples = answer
        summaries.append(buffer)
        start = -1
        if score is not None:
            scores.append(score)
            start, score_at = score_at, score_at + len(score)
        out.append((job_id, (n_samples, at, at + len(buffer), start, score_at)))
        at += len(buffer)
    flat = np.concatenate(summaries) if summaries else None
    return out, seconds, flat, np.concatenate(scores) if scores else None


def answers_from_wire(wire: WireAnswers) -> tuple[list[Answer], float]:
    """:func:`serve_call`'s answers again (views of the arrays that came)."""
    out, seconds, flat, scores = wire
    answers: list[Answer] = []
    for job_id, answer in out:
        if answer is None or isinstance(answer, str):
            answers.append((job_id, answer))
            continue
        n_samples, start, end, score_start, score_end = answer
        assert flat is not None
        score = None if score_start < 0 or scores is None else scores[score_start:score_end]
        answers.append((job_id, (flat[start:end], score, n_samples)))
    return answers, seconds


def child_main(conn: Any, model_dir: str, threads: int, keep_freed: bool, mc_native: str) -> None:
    """The child's main: load the artifact, say which it is, then answer calls until told to stop."""
    try:
        from mcnet import load_artifact
        from mcnet.inputcheck import load_input_check

        from . import mcnative
        from .evalkernel import EvalKernel

        mcnative.configure(mc_native)  # type: ignore[arg-type]  # "on" or "off": the parent's choice, never auto
        from .mcweights import weights_of
        from .memory import keep_freed_buffers

        if threads > 0:  # else torch's default, as in the parent (MCSERVE_TORCH_THREADS)
            torch.set_num_threads(threads)
        if keep_freed:
            keep_freed_buffers()
        model, manifest = load_artifact(model_dir, torch.device("cpu"))
        check = load_input_check(model_dir, manifest)
        scores = EvalKernel(model, check).scores if check is not None else None  # as the parent's Engine scores
        weights = weights_of(model)
    except Exception as exc:  # the parent raises it: startup fails fast with this message
        conn.send(("failed", f"{type(exc).__name__}: {exc}"))
        return
    conn.send(("ready", manifest))
    jobs: dict[int, Any] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the parent is gone
            return
        if message is None:
            return
        wire_calls, forget = message
        for job_id in forget:
            jobs.pop(job_id, None)
        conn.send(answers_to_wire(*serve_call(model, weights, jobs, calls_from_wire(wire_calls), scores)))


def serve_call(
    model: Any, weights: Any, jobs: dict[int, Any], calls: list[Call], scores: Any = None
) -> tuple[list[Answer], float]:
    """One call's tiles, as ``MCScheduler`` computes them in a thread: prepare the new jobs together, run every
    tile in one ``run_tiles``, finish the jobs whose last tile this was (with ``scores`` of their pixels, the input
    check's, when given). ``jobs``: id -> (Prepared, Accumulator, pixels)."""
    from .mckernel import Tile, prepare, prepare_many, run_tiles
    from .mcrequest import Accumulator

    start = time.perf_counter()
    failed: dict[int, str] = {}
    new = [(job_id, x, n, seed) for job_id, x, n, seed, _, _ in calls if x is not None]
    if new:
        prepared: list[Any]
        try:
            prepared = prepare_many(model, [(x, n, seed) for _, x, n, seed in new], weights)
        except Exception:  # one request's own fault: find it, fail it alone
            prepared = []
            for job_id, x, n, seed in new:
                try:
                    prepared.append(prepare(model, x, n, seed, weights))
                except Exception as exc:
                    prepared.append(None)
                    failed[job_id] = f"{type(exc).__name__}: {exc}"
        for (job_id, x, _, _), request in zip(new, prepared, strict=True):
            if request is not None:
                jobs[job_id] = (request, Accumulator(request, weights.classes), x)
    tiles: list[Tile] = []
    live: list[Call] = []
    for c in calls:
        job_id, first, count = c[0], c[4], c[5]
        if job_id in failed:
            continue
        if job_id not in jobs:
            failed[job_id] = "KernelProcessError: the kernel process has no state for this request"
            continue
        request = jobs[job_id][0]
        nb = request.blocks
        tiles.extend(Tile(request, q // nb, q % nb) for q in range(first, first + count))
        live.append(c)
    done: dict[int, Any] = {}
    if tiles:
        try:
            parts = run_tiles(model, tiles)
        except Exception as exc:
            for c in live:
                failed[c[0]] = f"{type(exc).__name__}: {exc}"
                jobs.pop(c[0], None)
            live = []
        offset = 0
        for job_id, _, _, _, first, count in live:
            request, acc, x = jobs[job_id]
            acc.put(first, parts, offset, offset + count)
            offset += count
            if first + count == request.images * request.blocks:
                del jobs[job_id]
                try:
                    r = acc.result()
                    done[job_id] = (r.pack(), None if scores is None else scores(x), r.n_samples)
                except Exception as exc:
                    failed[job_id] = f"{type(exc).__name__}: {exc}"
    answers = [(c[0], failed.get(c[0], done.get(c[0]))) for c in calls]
    return answers, time.perf_counter() - start
