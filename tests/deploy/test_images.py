"""Dockerfile rules and the two scripts baked into the images (healthcheck, train job).

The images themselves are built and run by `make compose-smoke`.
"""

from __future__ import annotations

import http.server
import os
import re
import shutil
import socket
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = (ROOT / "Dockerfile").read_text()


def stage(name: str) -> str:
    """The text of one build stage."""
    match = re.search(rf"^FROM \S+ AS {name}\n(.*?)(?=^FROM |\Z)", DOCKERFILE, re.M | re.S)
    assert match, f"no stage {name}"
    return match.group(1)


def test_no_syntax_directive_and_the_debian_base() -> None:
    assert not re.search(r"^#\s*syntax\s*=", DOCKERFILE, re.M | re.I)  # would pull a frontend image
    assert "ARG BASE_IMAGE=debian:bookworm-slim" in DOCKERFILE
    assert "python3 -m venv" in stage("base")


def test_serve_stage_has_no_training_code_and_runs_unprivileged_with_a_healthcheck() -> None:
    serve, src = stage("serve"), stage("src-serve")
    assert "training" not in src and "training" not in serve
    assert "[train]" not in serve and "torchvision" not in serve
    assert "from=src-serve" in serve
    assert re.search(r"^USER mcserve$", serve, re.M)
    assert re.search(r"^HEALTHCHECK .*mcserve-healthcheck", serve, re.M)
    assert "PYTHONDONTWRITEBYTECODE=1" in stage("base") and "PYTHONUNBUFFERED=1" in stage("base")


def test_train_stage_has_data_training_extra_and_the_job() -> None:
    train = stage("train")
    assert "dataset-fashion-mnist" in train
    assert '"/src[train]"' in train and "from=src-train" in train
    assert 'ENTRYPOINT ["mcserve-train-job"]' in train
    assert re.search(r"^USER mcserve$", train, re.M)


def test_grpc_stubs_are_generated_by_a_throwaway_stage_the_serve_image_never_holds() -> None:
    protogen, src, serve = stage("protogen"), stage("src-serve"), stage("serve")
    assert "grpcio-tools" in protogen and "python /gen/service/v2/protogen.py" in protogen
    assert "ARG PIP_NO_INDEX=" in protogen and "--mount=type=bind,source=deploy/wheelhouse" in protogen
    assert "COPY --from=protogen /gen/service/v2/protos/" in src
    assert "grpcio-tools" not in serve and "protogen.py" not in serve  # no compiler in the serve image
    assert re.search(r"^EXPOSE 8000 8001$", serve, re.M) and "MCSERVE_GRPC_PORT=8001" in serve
    ignored = (ROOT / ".dockerignore").read_text().split("\n")
    assert "service/v2/protos/*_pb2.py" in ignored  # the build context never carries stubs from a checkout


def test_torch_comes_from_the_cpu_index_by_default_and_pip_settings_are_build_args() -> None:
    for name in ("serve", "train"):
        text = stage(name)
        assert "ARG TORCH_INDEX_URL=https://download.pytorch.org/whl/cpu" in text
        assert "ARG PIP_NO_INDEX=" in text and "ARG PIP_FIND_LINKS=" in text
        assert "--mount=type=bind,source=deploy/wheelhouse,target=/wheelhouse" in text


def test_dockerignore_starts_from_nothing() -> None:
    lines = (ROOT / ".dockerignore").read_text().split("\n")
    assert lines[[line.strip() for line in lines].index("**")] == "**"
    for kept in ("!mcnet/**", "!service/**", "!training/**", "!deploy/docker/**", "!deploy/wheelhouse/**"):
        assert kept in lines
    assert not any(line.startswith("!.venv") or line.startswith("!models") for line in lines)


class _Handler(http.server.BaseHTTPRequestHandler):
    status = 200

    def do_GET(self) -> None:
        self.send_response(self.status if self.path == "/readyz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def readyz_server() -> Iterator[tuple[int, type[_Handler]]]:
    handler = type("Handler", (_Handler,), {})
    server = http.server.HTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server.server_address[1], handler
    server.shutdown()
    server.server_close()


def healthcheck(port: int) -> int:
    env = {**os.environ, "MCSERVE_PORT": str(port)}
    script = ROOT / "deploy/docker/healthcheck.py"
    return subprocess.run([sys.executable, str(script)], env=env, capture_output=True, timeout=30).returncode


def test_healthcheck_follows_readyz(readyz_server: tuple[int, type[_Handler]]) -> None:
    port, handler = readyz_server
    assert healthcheck(port) == 0
    handler.status = 503
    assert healthcheck(port) == 1


def test_healthcheck_fails_when_nothing_listens() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    assert healthcheck(port) == 1


def run_job(tmp_path: Path, python: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run deploy/docker/train-job.sh with ``python`` on PATH meaning the given interpreter."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    wrapper = bindir / "python"
    wrapper.write_text(f'#!/bin/sh\nexec "{python}" "$@"\n')
    wrapper.chmod(0o755)
    full_env = {"PATH": f"{bindir}:/usr/bin:/bin", **env}
    job = ROOT / "deploy/docker/train-job.sh"
    return subprocess.run(["sh", str(job)], env=full_env, capture_output=True, text=True, timeout=120, cwd=ROOT)


@pytest.fixture
def echo_python(tmp_path: Path) -> str:
    """Stands in for `python` to show exactly which command line the job would run."""
    stub = tmp_path / "echo-python"
    stub.write_text('#!/bin/sh\necho "$@"\n')
    stub.chmod(0o755)
    return str(stub)


def test_train_job_skips_a_valid_artifact_unless_forced(tmp_path: Path, echo_python: str) -> None:
    default = run_job(tmp_path, echo_python, MCSERVE_MODEL_DIR="/m/current")
    assert default.stdout.split() == ["-m", "training", "--out", "/m/current", "--skip-if-valid"]
    forced = run_job(tmp_path, echo_python, MCSERVE_MODEL_DIR="/m/current", MCSERVE_FORCE_RETRAIN="1")
    assert forced.stdout.split()[-3:] == ["training", "--out", "/m/current"]
    extra = run_job(tmp_path, echo_python, MCSERVE_TRAIN_ARGS="--epochs 1 --no-plots")
    assert extra.stdout.split()[-3:] == ["--epochs", "1", "--no-plots"]


def test_train_job_keeps_a_real_valid_artifact(tmp_path: Path, trained_artifact: Path) -> None:
    """Against the real training CLI: a valid artifact is left alone, byte for byte."""
    models = tmp_path / "models" / "current"
    shutil.copytree(trained_artifact, models)
    before = {p.name: p.read_bytes() for p in models.iterdir()}
    out = run_job(tmp_path, sys.executable, MCSERVE_MODEL_DIR=str(models))
    assert out.returncode == 0, out.stderr
    assert "not training" in out.stderr
    assert {p.name: p.read_bytes() for p in models.iterdir()} == before
