"""Drive a v2 (Open Inference Protocol) endpoint with NVIDIA's perf_analyzer and read its results.

perf_analyzer comes from the tritonclient 2.51.0 wheel in a separate venv (``scripts/perf_setup.sh``, run on
first use). It measures in time windows until three in a row agree within the stability percentage; a level that
never stabilises is measured once more with the check relaxed and reported with ``stable: False``. It stops at the
first failed request (non-zero exit, ``Thread [i] had error: ...``), so a run that finishes had no errors and one
that does not raises :class:`PerfError` with the tail of its output.
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import subprocess
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PERF_VENV = Path(os.environ.get("PERF_VENV", ROOT / ".venv-perf"))
UNSTABLE = "Failed to obtain stable measurement"
ERROR_PATTERNS = (
    r"Thread \[\d+\] had error:\s*(.*)",  # a failed request
    r"what\(\):\s*(.*)",  # an uncaught C++ exception (e.g. inconsistent server statistics)
    r"^(?:Error|error)\b:?\s*(.*)",  # a refused flag, an unreachable server
)


class PerfError(RuntimeError):
    """perf_analyzer failed; the message ends with the tail of its output."""


@dataclass(frozen=True)
class Settings:
    """perf_analyzer's measurement flags (the same for every server of a run)."""

    interval_ms: int
    stability_pct: int
    max_trials: int

    def flags(self) -> list[str]:
        return [
            *["--measurement-mode", "time_windows", "--measurement-interval", str(self.interval_ms)],
            *["--stability-percentage", str(self.stability_pct), "--max-trials", str(self.max_trials)],
        ]


QUICK = Settings(interval_ms=1000, stability_pct=30, max_trials=4)
FULL = Settings(interval_ms=3000, stability_pct=20, max_trials=5)
RELAXED_STABILITY_PCT = 1000  # the retry of a level that never stabilised: 3 windows within 11x, i.e. take them


@dataclass
class PerfResult:
    infer_per_s: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    avg_ms: float | None  # perf_analyzer's client average (present when it stabilises on the average)
    requests: int | None  # client request count of the reported windows
    errors: int  # always 0: perf_analyzer stops at the first failed request
    stable: bool
    wall_s: float

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def perf_analyzer() -> Path:
    """The perf venv's perf_analyzer binary; the venv is created on first use."""
    binary = PERF_VENV / "bin" / "perf_analyzer"
    if not binary.exists() or not (PERF_VENV / "bin" / "python").exists():
        subprocess.run(["bash", str(ROOT / "scripts" / "perf_setup.sh")], check=True, cwd=ROOT)
    return binary


def perf_python() -> Path:
    perf_analyzer()
    return PERF_VENV / "bin" / "python"


def perf_env() -> dict[str, str]:
    """The environment perf_analyzer needs: the PyPI CUDA runtime's lib folder on LD_LIBRARY_PATH (no GPU needed)."""
    libs = sorted(str(p) for p in (PERF_VENV / "lib").glob("python3*/site-packages/nvidia/cuda_runtime/lib"))
    old = os.environ.get("LD_LIBRARY_PATH", "")
    return {**os.environ, "LD_LIBRARY_PATH": ":".join([*libs, *([old] if old else [])])}


def write_input_data(path: Path, image: list[int]) -> Path:
    """perf_analyzer's ``--input-data`` JSON: one real image as ``images`` FP32 [784] (values 0..255)."""
    data = {"data": [{"images": {"content": [float(v) for v in image], "shape": [784]}}]}
    path.write_text(json.dumps(data))
    return path


def command(
    binary: Path | str,
    model: str,
    version: str,
    url: str,
    protocol: str,
    concurrency: int,
    input_data: Path,
    settings: Settings,
    csv_path: Path,
) -> list[str]:
    """The perf_analyzer command line of one run (binary tensor data, the default, over HTTP)."""
    if protocol not in ("http", "grpc"):
        raise ValueError(f"protocol must be http or grpc, not {protocol!r}")
    cmd = [str(binary), "-m", model, "-x", version, "-u", url, "-i", protocol]
    cmd += ["--concurrency-range", f"{concurrency}:{concurrency}", "--input-data", str(input_data)]
    cmd += ["--shape", "images:784", *settings.flags(), "-f", str(csv_path)]
    return cmd


def parse_csv(text: str) -> dict[str, float]:
    """The one row of perf_analyzer's ``-f`` CSV: infer/s and latency percentiles in ms."""
    rows = [r for r in csv.DictReader(io.StringIO(text)) if r.get("Concurrency")]
    if not rows:
        raise ValueError("perf_analyzer CSV has no result row")
    row = rows[-1]
    try:
        out = {"infer_per_s": float(row["Inferences/Second"])}
        for p in (50, 90, 95, 99):
            out[f"p{p}_ms"] = float(row[f"p{p} latency"]) / 1000.0
    except (KeyError, ValueError) as exc:
        raise ValueError(f"perf_analyzer CSV lacks {exc}: {text[:300]!r}") from exc
    return out


def parse_stdout(text: str) -> dict[str, Any]:
    """What the CSV does not hold: the client's request count and average latency, and the first error."""
    out: dict[str, Any] = {"requests": None, "avg_ms": None, "error": None}
    client = text.split("Server:", 1)[0]
    if m := re.search(r"Request count:\s*(\d+)", client):
        out["requests"] = int(m.group(1))
    if m := re.search(r"Avg latency:\s*([\d.]+)\s*usec", client):
        out["avg_ms"] = float(m.group(1)) / 1000.0
    for pattern in ERROR_PATTERNS:
        if m := re.search(pattern, text, re.MULTILINE):
            out["error"] = m.group(1).strip() or None
            break
    return out


def tail(text: str, chars: int = 1500) -> str:
    return text.strip()[-chars:]


def run(
    model: str,
    version: str,
    url: str,
    protocol: str,
    concurrency: int,
    input_data: Path,
    settings: Settings,
) -> PerfResult:
    """One perf_analyzer run at one concurrency level. Raises PerfError with its output's tail on failure."""
    binary = perf_analyzer()
    start = time.perf_counter()
    stable = True
    # generous: warm-up + max_trials windows, twice over for the relaxed retry, plus start-up
    timeout_s = 60 + 3 * settings.max_trials * settings.interval_ms / 1000
    with tempfile.TemporaryDirectory(prefix="perf-") as tmp:
        csv_path = Path(tmp) / "result.csv"
        attempt = settings
        while True:
            cmd = command(binary, model, version, url, protocol, concurrency, input_data, attempt, csv_path)
            try:
                proc = subprocess.run(cmd, capture_output=True, text=True, env=perf_env(), timeout=timeout_s)
            except subprocess.TimeoutExpired as exc:
                out = (exc.stdout or b"").decode(errors="replace") if isinstance(exc.stdout, bytes) else exc.stdout
                raise PerfError(f"perf_analyzer timed out after {timeout_s:.0f} s: {tail(out or '')}") from exc
            output = proc.stdout + proc.stderr
            if UNSTABLE in output and attempt.stability_pct < RELAXED_STABILITY_PCT:
                stable = False
                attempt = Settings(settings.interval_ms, RELAXED_STABILITY_PCT, 3)
                continue
            break
        info = parse_stdout(output)
        if proc.returncode != 0 or not csv_path.exists():
            reason = info["error"] or f"exit {proc.returncode}"
            raise PerfError(f"perf_analyzer failed ({reason}): {tail(output)}")
        numbers = parse_csv(csv_path.read_text())
    return PerfResult(
        infer_per_s=numbers["infer_per_s"],
        p50_ms=numbers["p50_ms"],
        p90_ms=numbers["p90_ms"],
        p95_ms=numbers["p95_ms"],
        p99_ms=numbers["p99_ms"],
        avg_ms=info["avg_ms"],
        requests=info["requests"],
        errors=0,
        stable=stable,
        wall_s=round(time.perf_counter() - start, 2),
    )
