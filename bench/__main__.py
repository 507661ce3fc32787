"""Command line: ``python -m bench {SECTION,all,report} [--quick] --json PATH``; ``all`` runs every one of ``SECTIONS``.

SECTION is kernel, http, http_cores (the MC servers again with a worker per core), v2, batching, overload,
coldstart or train.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import socket
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

DEFAULT_JSON = Path("bench/results/all.json")
SECTIONS = ["kernel", "http", "http_cores", "v2", "batching", "overload", "coldstart", "train"]


def machine() -> dict[str, Any]:
    """Where the numbers came from: printed in the JSON and in docs/benchmarks.md."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "host": socket.gethostname(),
        "cpu": cpu,
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
        "command": " ".join(["python -m bench", *sys.argv[1:]]),
        "load_average_1m_at_start": round(os.getloadavg()[0], 2),
    }


def _write(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    print(f"bench: wrote {path}")


def _run_section(name: str, args: argparse.Namespace) -> dict[str, Any]:
    start = time.perf_counter()
    if name == "kernel":
        from bench import kernel

        data = kernel.run(args.quick, args.kernel_threads, args.model_dir, args.chunk_size)
    elif name == "http":
        from bench import http

        data = http.run(args.quick, args.model_dir, args.workers, args.server_threads, args.duration)
    elif name == "http_cores":
        from bench import http

        data = http.run_per_core(args.quick, args.model_dir, args.server_threads, args.duration)
    elif name == "v2":
        from bench import v2

        data = v2.run(args.quick, args.model_dir, args.server_threads)
    elif name == "batching":
        from bench import batching

        data = batching.run(args.quick, args.model_dir, args.server_threads)
    elif name == "overload":
        from bench import overload

        data = overload.run(args.quick, args.model_dir, args.server_threads)
    elif name == "coldstart":
        from bench import coldstart

        data = coldstart.run(args.model_dir, repeats=2 if args.quick else 5)
    elif name == "train":
        from bench import train

        data = train.run(args.quick, args.threads, args.batch_size, args.loader_workers)
    else:
        raise ValueError(name)
    data["elapsed_s"] = round(time.perf_counter() - start, 1)
    return data


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument("command", choices=[*SECTIONS, "all", "report"])
    parser.add_argument("--quick", action="store_true", help="smaller matrix / shorter runs (< 2 min each)")
    parser.add_argument("--json", type=Path, default=None, help="where to write the results (report: where to read)")
    parser.add_argument("--model-dir", type=Path, default=None, help="artifact to serve; default: random weights")
    parser.add_argument("--threads", type=int, default=2, help="torch intra-op threads (train)")
    parser.add_argument(
        "--kernel-threads", type=int, default=1,
        help="torch and BLAS threads for every kernel timed (the service runs MC calls with one, as in the benches)",
    )  # fmt: skip
    parser.add_argument("--server-threads", type=int, default=1, help="torch threads per server process (http)")
    parser.add_argument("--chunk-size", type=int, default=8192, help="mc_chunk_size passed to the service kernel")
    parser.add_argument("--workers", type=int, default=1, help="server processes per server under test")
    parser.add_argument("--duration", type=float, default=None, help="seconds per wrk run (default 10, quick 3)")
    parser.add_argument("--batch-size", type=int, default=256, help="training batch size (train)")
    parser.add_argument("--loader-workers", type=int, default=2, help="DataLoader workers of the book's pipeline")
    parser.add_argument("--doc", type=Path, default=Path("docs/benchmarks.md"), help="report: markdown to write")
    args = parser.parse_args(argv)

    if args.command == "report":
        from bench import report

        report.write(args.json or DEFAULT_JSON, args.doc)
        return 0
    sections = SECTIONS if args.command == "all" else [args.command]
    results: dict[str, Any] = {"machine": machine()}
    for name in sections:
        print(f"bench: {name} ...", flush=True)
        results[name] = _run_section(name, args)
    results["machine"]["load_average_1m_at_end"] = round(os.getloadavg()[0], 2)
    if args.command != "all":
        results = {"machine": results["machine"], **results[args.command]}
    _write(args.json or Path(f"bench/results/{args.command}.json"), results)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
