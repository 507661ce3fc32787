"""bench.procs.paused on a real process group: a CPU-burning child gets no CPU while paused and runs again after."""

from __future__ import annotations

import subprocess
import sys
import time

import pytest

from bench import procs

BURN = "import time\nwhile True:\n    sum(range(10000))\n"


def _cpu_after(pgid: int, seconds: float) -> float:
    before = procs.group_cpu_seconds(pgid)
    time.sleep(seconds)
    return procs.group_cpu_seconds(pgid) - before


def test_paused_stops_a_group_and_lets_it_go_on() -> None:
    proc = subprocess.Popen([sys.executable, "-c", BURN], start_new_session=True)
    try:
        assert _cpu_after(proc.pid, 0.5) > 0.1  # it burns CPU (a tick is 10 ms)
        with procs.paused([proc.pid]):
            time.sleep(0.05)  # the stop lands
            assert _cpu_after(proc.pid, 0.5) <= 0.02
            assert proc.poll() is None  # stopped, not gone
        assert _cpu_after(proc.pid, 0.5) > 0.1
    finally:
        procs.stop(proc)


def test_paused_resumes_when_the_block_raises_and_skips_gone_groups() -> None:
    proc = subprocess.Popen([sys.executable, "-c", BURN], start_new_session=True)
    gone = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    gone.wait()
    try:
        with pytest.raises(RuntimeError), procs.paused([gone.pid, proc.pid]):
            raise RuntimeError("wrk failed")
        assert _cpu_after(proc.pid, 0.5) > 0.1
    finally:
        procs.stop(proc)
