"""A service that cannot serve correctly refuses to start: non-zero exit, one clear line, port never bound.

Each case breaks a copy of a real trained artifact (or the environment) and runs
``python -m service`` as a real process. The issue asks for an exit within 5 s: the
process's own CPU time must stay under 5 s (it does not depend on how busy the shared
machine is) on a machine where importing torch and the service costs at most 2 s of CPU,
and under 2.5 x that import on a slower one (a CI machine measured about 2x this one);
the wall-clock time is only bounded loosely (30 s) to catch a hang.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
from hardening_support import REPO, free_port, service_env

Breaker = Callable[[Path], dict[str, str]]  # breaks the artifact copy in place; returns extra environment


def _missing_weights(d: Path) -> dict[str, str]:
    (d / "model.safetensors").unlink()
    return {}


def _truncated_weights(d: Path) -> dict[str, str]:
    w = d / "model.safetensors"
    w.write_bytes(w.read_bytes()[: w.stat().st_size // 2])
    return {}


def _tampered_weights(d: Path) -> dict[str, str]:
    w = d / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-100] ^= 0x01  # one bit of one weight
    w.write_bytes(bytes(data))
    return {}


def _other_format_version(d: Path) -> dict[str, str]:
    m = d / "manifest.json"
    manifest = json.loads(m.read_text())
    manifest["format_version"] = manifest["format_version"] + 1
    m.write_text(json.dumps(manifest))
    return {}


def _edited_manifest(d: Path) -> dict[str, str]:
    m = d / "manifest.json"
    manifest = json.loads(m.read_text())
    manifest["uncertainty"]["threshold"] = 0.0
    m.write_text(json.dumps(manifest))
    return {}


def _missing_manifest(d: Path) -> dict[str, str]:
    (d / "manifest.json").unlink()
    return {}


def _dir_is_a_file(d: Path) -> dict[str, str]:
    shutil.rmtree(d)
    d.write_text("not a directory")
    return {}


def _dir_missing(d: Path) -> dict[str, str]:
    shutil.rmtree(d)
    return {}


def _cuda_without_gpu(d: Path) -> dict[str, str]:
    """``cuda`` on a machine without CUDA; on one with GPUs, an index past the last one."""
    import torch

    return {"MCSERVE_DEVICE": f"cuda:{torch.cuda.device_count()}" if torch.cuda.is_available() else "cuda"}


def _bad_setting(d: Path) -> dict[str, str]:
    return {"MCSERVE_MAX_BATCH": "0"}


def _grpc_port_taken(d: Path) -> dict[str, str]:
    """Something else already listens on the gRPC port (the socket stays open for the test's lifetime)."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    _HELD.append(sock)
    return {"MCSERVE_GRPC_PORT": str(sock.getsockname()[1])}


_HELD: list[socket.socket] = []
_DIGEST = "0" * 64


def _keys(text: str) -> Breaker:
    def breaker(d: Path) -> dict[str, str]:
        path = d.parent / "keys.toml"
        path.write_text(text)
        return {"MCSERVE_API_KEYS_FILE": str(path)}

    return breaker


def _half_tls(d: Path) -> dict[str, str]:
    return {"MCSERVE_TLS_CERTFILE": str(d / "manifest.json")}


def _tls_not_pem(d: Path) -> dict[str, str]:
    return {"MCSERVE_TLS_CERTFILE": str(d / "manifest.json"), "MCSERVE_TLS_KEYFILE": str(d / "manifest.json")}


def _keys_missing(d: Path) -> dict[str, str]:
    return {"MCSERVE_API_KEYS_FILE": str(d.parent / "no-such-keys.toml")}


CASES: list[tuple[str, Breaker, str]] = [
    ("missing weights", _missing_weights, "weights file is missing"),
    ("truncated weights", _truncated_weights, "model.safetensors"),
    ("tampered weights", _tampered_weights, "sha256"),
    ("manifest of another format version", _other_format_version, "format_version"),
    ("edited manifest", _edited_manifest, "checksum"),
    ("missing manifest", _missing_manifest, "manifest.json is missing"),
    ("model dir is a file", _dir_is_a_file, "not a directory"),
    ("model dir missing", _dir_missing, "does not exist"),
    ("MCSERVE_DEVICE=cuda without a GPU", _cuda_without_gpu, "CUDA device"),
    ("bad setting", _bad_setting, "MCSERVE_MAX_BATCH"),
    ("gRPC port already in use", _grpc_port_taken, "MCSERVE_GRPC_PORT"),
    ("keys file not TOML", _keys("[[keys]\nid = 1"), "not valid TOML"),
    (
        "keys file unknown scope",
        _keys(f'[[keys]]\nid="a"\nsha256="{_DIGEST}"\nscopes=["root"]'),
        "unknown scope 'root'",
    ),
    (
        "keys file duplicate id",
        _keys(
            f'[[keys]]\nid="a"\nsha256="{_DIGEST}"\nscopes=["infer"]\n[[keys]]\nid="a"\nsha256="{"1" * 64}"\n'
            'scopes=["infer"]'
        ),
        "duplicate id",
    ),
    ("keys file bad digest", _keys('[[keys]]\nid="a"\nsha256="xyz"\nscopes=["infer"]'), "64 hex digits"),
    ("keys file missing", _keys_missing, "MCSERVE_API_KEYS_FILE"),
    ("TLS certificate without key", _half_tls, "MCSERVE_TLS_KEYFILE"),
    ("TLS files not PEM", _tls_not_pem, "MCSERVE_TLS_CERTFILE"),
]


def run_service(env: dict[str, str], prefix: list[str] | None = None) -> tuple[int, str, float, float]:
    """Run ``python -m service`` to its exit: (code, stderr, wall seconds, CPU seconds of the child)."""
    cpu_before = _children_cpu()
    start = time.monotonic()
    proc = subprocess.Popen(
        [*(prefix or []), sys.executable, "-m", "service"],
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        _, stderr = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.communicate()
        pytest.fail("the service did not exit within 30 s")
    wall = time.monotonic() - start
    return proc.returncode, stderr.decode(errors="replace"), wall, _children_cpu() - cpu_before


def _children_cpu() -> float:
    """User + system CPU seconds of all reaped children (the service is the only one reaped in between)."""
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


@pytest.fixture(scope="module")
def cpu_budget() -> float:
    """The CPU seconds a failed start may take here: 5, or 2.5 x importing what the service imports before its last
    check (torch, the engine, the app) where that import alone costs more than 2 s."""
    before = _children_cpu()
    modules = "import mcnet, service.engine, service.mcnative, service.app"
    subprocess.run([sys.executable, "-c", modules], cwd=REPO, check=True, timeout=60)
    return max(5.0, 2.5 * (_children_cpu() - before))


def _assert_clear_failure(code: int, stderr: str, wall: float, cpu: float, expected: str, budget: float) -> None:
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert code == 2, (code, stderr)
    assert "Traceback" not in stderr, stderr
    assert len(lines) == 1 and lines[0].startswith("mcserve-serve: error: "), stderr
    assert expected in lines[0], lines[0]
    assert cpu < budget, f"{cpu:.2f} s of CPU time before exiting (budget {budget:.2f} s)"
    print(f"exit {code} after {wall:.2f} s wall, {cpu:.2f} s CPU: {lines[0][:160]}")


@pytest.mark.parametrize(("name", "breaker", "expected"), CASES, ids=[c[0] for c in CASES])
def test_broken_start_exits_nonzero_with_a_clear_message(
    name: str, breaker: Breaker, expected: str, trained_artifact: Path, tmp_path: Path, cpu_budget: float
) -> None:
    model = tmp_path / "model"
    shutil.copytree(trained_artifact, model)
    port = free_port()
    env = service_env(model, port) | breaker(model)
    code, stderr, wall, cpu = run_service(env)
    _assert_clear_failure(code, stderr, wall, cpu, expected, cpu_budget)


def test_unreadable_model_dir_as_an_unprivileged_user(
    trained_artifact: Path, tmp_path: Path, cpu_budget: float
) -> None:
    """chmod 000 means nothing to root, so the service runs as ``nobody`` (setpriv) for this case."""
    setpriv = shutil.which("setpriv")
    assert setpriv, "setpriv (util-linux) is needed to drop privileges"
    tmp_path.chmod(0o755)
    model = tmp_path / "model"
    shutil.copytree(trained_artifact, model)
    model.chmod(0o000)
    env = service_env(model, free_port())
    prefix = [setpriv, "--reuid=65534", "--regid=65534", "--clear-groups"] if os.geteuid() == 0 else []
    try:
        code, stderr, wall, cpu = run_service(env, prefix)
    finally:
        model.chmod(0o755)
    _assert_clear_failure(code, stderr, wall, cpu, "ermission denied", cpu_budget)
