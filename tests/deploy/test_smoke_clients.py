"""The smoke test's client scripts against the real thing: real Fashion-MNIST, a real service."""

from __future__ import annotations

import os
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]
PORT = 18210  # this area's range: 18200-18299


def test_reads_real_test_images(fashion_dir: Path, load_module: Callable[[str], ModuleType]) -> None:
    smoke = load_module("scripts/smoke_requests.py")
    images, labels = smoke.load_test_images(20, fashion_dir)
    assert len(images) == len(labels) == 20
    assert all(len(img) == 784 and min(img) >= 0 and max(img) <= 255 for img in images)
    assert set(labels) <= set(range(10)) and len(set(labels)) > 3
    assert labels[:3] == [9, 2, 1]  # the t10k split starts Ankle boot, Pullover, Trouser


@pytest.fixture
def live_service(trained_artifact: Path) -> Iterator[str]:
    env = {**os.environ, "MCSERVE_MODEL_DIR": str(trained_artifact), "MCSERVE_PORT": str(PORT)}
    proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=env, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{PORT}"
    try:
        for _ in range(120):
            try:
                with urllib.request.urlopen(f"{url}/readyz", timeout=2) as resp:
                    if resp.status == 200:
                        break
            except OSError:
                if proc.poll() is not None:
                    pytest.fail(f"service exited: {proc.stderr.read() if proc.stderr else ''!r}")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_smoke_requests_pass_against_the_real_service(
    live_service: str, load_module: Callable[[str], ModuleType], capsys: pytest.CaptureFixture[str]
) -> None:
    smoke = load_module("scripts/smoke_requests.py")
    assert smoke.main(["--url", live_service, "--images", "16", "--n-samples", "10", "--traffic-s", "0"]) == 0
    assert "smoke_requests: OK" in capsys.readouterr().out


def test_smoke_requests_fail_on_a_wrong_answer(live_service: str, load_module: Callable[[str], ModuleType]) -> None:
    smoke = load_module("scripts/smoke_requests.py")
    images, labels = smoke.load_test_images(16)
    wrong = [(y + 1) % 10 for y in labels]  # every label off by one: accuracy 0
    with pytest.raises(smoke.SmokeError, match="accuracy"):
        smoke.check_predict(live_service, images, wrong, smoke.call(f"{live_service}/info")["class_names"])
