"""Interleaved rounds of the MC comparison at c = 64: mcserve, the MC floor and the MC peers, all started at once.

The per-server runs of ``bench http`` measure each server minutes apart, and this VM's speed drifts by tens of
percent within minutes, so a ratio of two of them carries that drift. Here every MC server is started first and
left running; then ``MC_ROUNDS`` rounds each run wrk at c = 64 on every MC endpoint in turn (the order rotating by
one each round), and each round's ratios (mcserve ÷ the best peer of that round, mcserve ÷ the floor) use numbers
measured seconds apart. The claims are the medians of the per-round ratios; every round's req/s is kept.

While one endpoint is measured, the other servers are paused (SIGSTOP to their process groups, SIGCONT after):
left running, the idle servers used 0.10-0.15 of a core between them (LitServe's queue polling above all), which
every measured server lost to them; that is no part of any design's work (measured 2026-12-04: the rounds' req/s
rose 5-20 % for every server, mcserve ÷ floor moved by +0.03 in each round).
"""

from __future__ import annotations

import contextlib
import statistics
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

from bench import procs
from bench.loadgen import run_wrk

MC_ROUNDS = 3
ROUND_S = 6.0
SERVICE = "uncertainty_t100"
FLOOR = "mc_floor"
PEERS = ("litserve_mc_t100", "torchserve_mc_t100", "triton_mc_t100")


def run(
    specs: Sequence[Any],  # bench.http.ServerSpec
    env: dict[str, str],
    work: Path,
    log_dir: Path,
    post_ok: Callable[[str, str], Any],
    rounds: int = MC_ROUNDS,
    duration_s: float = ROUND_S,
) -> dict[str, Any]:
    """The rounds over every spec with an endpoint in ``SERVICE``, ``FLOOR`` or ``PEERS`` (each server started once,
    in its own folder under ``work``); the ``mc_rounds_*`` keys, or ``mc_rounds_error`` when a server cannot run."""
    wanted = {SERVICE, FLOOR, *PEERS}
    endpoints: list[Any] = []
    groups: dict[str, int] = {}  # endpoint label -> its server's process group (the leader's PID)
    try:
        with contextlib.ExitStack() as stack:
            for spec in specs:
                mine = [ep for ep in spec.endpoints if ep.label in wanted]
                if not mine:
                    continue
                cwd = work / f"rounds-{spec.name}"
                cwd.mkdir(parents=True, exist_ok=True)
                if spec.prepare is not None:
                    spec.prepare(cwd)
                spec_env = {**env, **spec.env}
                serving = procs.serve(f"rounds_{spec.name}", spec.cmd, spec.ready_url, spec_env, log_dir, cwd=cwd)
                server = stack.enter_context(serving)
                endpoints.extend(mine)
                groups.update((ep.label, server.proc.pid) for ep in mine)
            for ep in endpoints:
                post_ok(ep.url, ep.body)  # warm: every server answers before the first round
            targets = [(ep.label, ep.url, ep.body) for ep in endpoints]
            rps = interleave(targets, groups, rounds, duration_s, "bench http")
    except Exception as exc:  # a server that cannot run: the rounds are recorded as not run, the rest goes on
        return {"mc_rounds_error": f"{type(exc).__name__}: {exc}"[:2000]}
    return summarise(rps)


def interleave(
    targets: Sequence[tuple[str, str, str]], groups: Mapping[str, int], rounds: int, duration_s: float, name: str
) -> dict[str, list[float]]:
    """``rounds`` rounds of wrk at c = 64 for ``duration_s`` on each ``(label, url, body)`` in turn, the order rotating
    by one per round, every other server's process group (``groups``: label -> group) paused meanwhile; each
    label's req/s per round (0 for a run with errors)."""
    rps: dict[str, list[float]] = {label: [] for label, _, _ in targets}
    for r in range(rounds):
        for label, url, body in [*targets[r % len(targets) :], *targets[: r % len(targets)]]:
            with procs.paused({pgid for pgid in groups.values() if pgid != groups[label]}):
                res = run_wrk(url, body, 64, duration_s)
            rps[label].append(res.rps if res.errors == 0 else 0.0)
            print(f"{name}: round {r + 1} {label} c=64: {res.rps:.0f} req/s", flush=True)
    return rps


def summarise(rps: dict[str, list[float]]) -> dict[str, Any]:
    """Per-round ratios and their medians from each endpoint's req/s per round."""
    svc = rps.get(SERVICE, [])
    peers = [label for label in PEERS if label in rps]
    best = [max(rps[p][r] for p in peers) for r in range(len(svc))] if peers else []
    vs_peer = [s / b for s, b in zip(svc, best, strict=True) if b > 0] if peers else []
    vs_floor = [s / f for s, f in zip(svc, rps.get(FLOOR, []), strict=False) if f > 0]
    out: dict[str, Any] = {
        "mc_rounds_error": None,
        "mc_rounds_rps_c64": rps,
        "mc_rounds_vs_best_peer_c64": vs_peer,
        "mc_rounds_vs_best_peer_c64_median": statistics.median(vs_peer) if vs_peer else None,
        "mc_rounds_vs_floor_c64": vs_floor,
        "mc_rounds_vs_floor_c64_median": statistics.median(vs_floor) if vs_floor else None,
        "mc_rounds_rps_c64_median": statistics.median(svc) if svc else None,
    }
    return out
