"""``python -m bench.floorab``: mcserve variants against the MC floor, in interleaved rounds at c = 64.

The question ``bench http``'s rounds answer with the peers in them, asked of mcserve alone and of settings or code
changes: how close does ``/predict/uncertainty`` come to the MC floor (``bench.peers.mc_floor``), and does a change
move that? Every server is started once; then each round runs wrk at c = 64 for ``--seconds`` on each in turn
(the order rotating by one per round), with the others paused (``bench.procs.paused``), so the ratios of a round
use numbers measured seconds apart on a VM whose speed drifts by tens of percent within minutes.

A variant is ``NAME[@DIR][:SETTING=VALUE...]``: mcserve from checkout ``DIR`` (default: this one; its native
libraries and gRPC stubs built) with those environment settings, e.g. ``--variant thread:MCSERVE_MC_PROCESS=off
--variant child``. It prints each round's req/s and, per variant, the median of its per-round ratios to the floor;
with two or more, the median per-round ratio of each to the first.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
from pathlib import Path
from typing import Any, NamedTuple

from bench import procs
from bench.artifact import sample_image
from bench.mcrounds import interleave

ROOT = Path(__file__).resolve().parent.parent
FLOOR = "floor"
PORT = 18760


class Variant(NamedTuple):
    name: str
    root: Path
    settings: dict[str, str]


def parse_variant(text: str, default_root: Path = ROOT) -> Variant:
    """``NAME[@DIR][:SETTING=VALUE...]`` as a :class:`Variant` (ValueError naming what is wrong)."""
    head, *pairs = text.split(":")
    name, _, where = head.partition("@")
    if not name or name == FLOOR:
        raise ValueError(f"variant {text!r}: give it a name other than {FLOOR!r}")
    settings = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise ValueError(f"variant {text!r}: {pair!r} is not SETTING=VALUE")
        settings[key] = value
    return Variant(name, Path(where).resolve() if where else default_root, settings)


def summarise(rps: dict[str, list[float]], names: list[str]) -> dict[str, Any]:
    """Per variant: its per-round ratios to the floor and their median; with two or more, each one's per-round
    ratio to the first and its median. A round where a server failed (0 req/s) gives no ratio."""
    floor = rps[FLOOR]

    def ratios(top: list[float], bottom: list[float]) -> list[float]:
        return [a / b for a, b in zip(top, bottom, strict=True) if a > 0 and b > 0]

    out: dict[str, Any] = {"rps_c64": rps}
    for name in names:
        vs_floor = ratios(rps[name], floor)
        out[f"{name}_vs_floor"] = vs_floor
        out[f"{name}_vs_floor_median"] = statistics.median(vs_floor) if vs_floor else None
        if name != names[0]:
            vs_first = ratios(rps[name], rps[names[0]])
            out[f"{name}_vs_{names[0]}"] = vs_first
            out[f"{name}_vs_{names[0]}_median"] = statistics.median(vs_first) if vs_first else None
    return out


def run(variants: list[Variant], model_dir: Path, rounds: int, seconds: float, log_dir: Path) -> dict[str, Any]:
    body = json.dumps({"images": [sample_image()], "n_samples": 100})
    py = sys.executable
    urls: dict[str, str] = {}
    groups: dict[str, int] = {}
    with contextlib.ExitStack() as stack:
        env = procs.server_env(model_dir, 1, ROOT) | {"OPENBLAS_NUM_THREADS": "1"}  # as ``bench http`` runs them
        floor_cmd = [py, "-m", "bench.peers.onewrite", "--port", str(PORT), "bench.peers.mc_floor:app"]
        server = stack.enter_context(procs.serve(FLOOR, floor_cmd, f"http://127.0.0.1:{PORT}/readyz", env, log_dir))
        urls[FLOOR], groups[FLOOR] = f"http://127.0.0.1:{PORT}/predict/uncertainty", server.proc.pid
        for i, v in enumerate(variants, start=1):
            port = PORT + i
            env = procs.server_env(model_dir, 1, v.root) | {"OPENBLAS_NUM_THREADS": "1", "MCSERVE_PORT": str(port)}
            env["MCSERVE_HOST"] = "127.0.0.1"
            env |= {"MCSERVE_LOG_LEVEL": "warning", "MCSERVE_GRPC_PORT": "0", "MCSERVE_WORKERS": "1", **v.settings}
            ready = f"http://127.0.0.1:{port}/readyz"
            server = stack.enter_context(procs.serve(v.name, [py, "-m", "service"], ready, env, log_dir, cwd=v.root))
            urls[v.name], groups[v.name] = f"http://127.0.0.1:{port}/predict/uncertainty", server.proc.pid
        targets = [(label, url, body) for label, url in urls.items()]
        interleave(targets, groups, 1, 2.0, "bench.floorab warm-up")  # not kept: first calls allocate
        rps = interleave(targets, groups, rounds, seconds, "bench.floorab")
    return summarise(rps, [v.name for v in variants])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.floorab", description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", action="append", default=[], help="NAME[@DIR][:SETTING=VALUE...]; repeatable")
    parser.add_argument("--model-dir", type=Path, default=ROOT / "models" / "current")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=6.0, help="wrk run per server per round")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results")
    args = parser.parse_args(argv)
    try:
        variants = [parse_variant(text) for text in (args.variant or ["mcserve"])]
    except ValueError as exc:
        parser.error(str(exc))
    if len({v.name for v in variants}) < len(variants):
        parser.error("every --variant needs its own name")
    if not (args.model_dir / "manifest.json").is_file():
        parser.error(f"no artifact at {args.model_dir}: train one (python -m training --out {args.model_dir})")
    out = run(variants, args.model_dir.resolve(), args.rounds, args.seconds, ROOT / "bench" / "results" / "logs")
    for key, value in out.items():
        if key.endswith("_median"):
            print(f"{key}: {value:.3f}" if value is not None else f"{key}: none")
    if args.json is not None:
        args.json.write_text(json.dumps(out, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
