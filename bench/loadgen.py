"""The load generator: Debian's ``wrk`` with a Lua script that posts one fixed JSON body.

wrk runs in its own process (1 thread: on 2 cores it competes with the server) and
its Lua ``done`` hook prints one JSON line with req/s, latency percentiles and errors,
which :func:`parse_wrk_output` picks out.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

RESULT_MARK = "BENCH_RESULT "

_DONE_HOOK = """
done = function(summary, latency, requests)
  local e = summary.errors
  local secs = summary.duration / 1e6
  io.write(string.format(
    '%s{"requests":%d,"duration_s":%.6f,"rps":%.3f,"p50_ms":%.4f,"p90_ms":%.4f,"p99_ms":%.4f,' ..
    '"max_ms":%.4f,"mean_ms":%.4f,"errors_connect":%d,"errors_read":%d,"errors_write":%d,' ..
    '"errors_status":%d,"errors_timeout":%d}\\n',
    "%(mark)s", summary.requests, secs, summary.requests / secs,
    latency:percentile(50) / 1000, latency:percentile(90) / 1000, latency:percentile(99) / 1000,
    latency.max / 1000, latency.mean / 1000,
    e.connect, e.read, e.write, e.status, e.timeout))
end
"""


@dataclass(frozen=True)
class LoadResult:
    concurrency: int
    rps: float
    p50_ms: float
    p99_ms: float
    errors: int
    requests: int
    raw: dict[str, Any]

    def to_json(self) -> dict[str, Any]:
        return {
            "concurrency": self.concurrency,
            "rps": self.rps,
            "p50_ms": self.p50_ms,
            "p99_ms": self.p99_ms,
            "errors": self.errors,
            "requests": self.requests,
            "wrk": self.raw,
        }


def _lua_long_string(text: str) -> str:
    level = 1
    while f"]{'=' * level}]" in text:
        level += 1
    eq = "=" * level
    return f"[{eq}[{text}]{eq}]"


def lua_script(body: str, content_type: str = "application/json") -> str:
    """A wrk script posting ``body`` on every request and printing a JSON summary at the end."""
    return (
        'wrk.method = "POST"\n'
        f"wrk.body = {_lua_long_string(body)}\n"
        f'wrk.headers["Content-Type"] = "{content_type}"\n' + _DONE_HOOK.replace("%(mark)s", RESULT_MARK)
    )


def parse_wrk_output(stdout: str) -> dict[str, Any]:
    """The JSON summary line the Lua ``done`` hook printed; ValueError if wrk did not get that far."""
    for line in stdout.splitlines():
        if line.startswith(RESULT_MARK):
            data: dict[str, Any] = json.loads(line[len(RESULT_MARK) :])
            return data
    raise ValueError(f"no wrk summary in output: {stdout[-500:]!r}")


def error_count(summary: dict[str, Any]) -> int:
    """Socket errors + non-2xx/3xx responses + timeouts."""
    return sum(int(summary.get(k, 0)) for k in summary if k.startswith("errors_"))


def run_wrk(url: str, body: str, concurrency: int, duration_s: float, threads: int = 1) -> LoadResult:
    """Drive ``url`` with ``concurrency`` open connections for ``duration_s`` seconds."""
    wrk = shutil.which("wrk")
    if wrk is None:
        raise RuntimeError("wrk is not installed (apt-get install wrk)")
    with tempfile.TemporaryDirectory(prefix="bench-wrk-") as tmp:
        script = Path(tmp) / "post.lua"
        script.write_text(lua_script(body))
        cmd = [
            wrk,
            f"-t{min(threads, concurrency)}",
            f"-c{concurrency}",
            f"-d{max(1, round(duration_s))}s",
            "--timeout",
            "10s",
            "-s",
            str(script),
            url,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=duration_s + 60, check=False)
    summary = parse_wrk_output(proc.stdout)
    return LoadResult(
        concurrency=concurrency,
        rps=float(summary["rps"]),
        p50_ms=float(summary["p50_ms"]),
        p99_ms=float(summary["p99_ms"]),
        errors=error_count(summary),
        requests=int(summary["requests"]),
        raw=summary,
    )
