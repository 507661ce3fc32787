"""Settings: read from MCSERVE_* only, validated, with errors that name the variable."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from service.engine import DeviceError, resolve_device
from service.settings import Settings, describe_error


def test_defaults_match_the_issue(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("MCSERVE_"):
            monkeypatch.delenv(key)
    s = Settings()
    assert (s.port, s.default_samples, s.max_samples, s.max_batch, s.device) == (8000, 100, 1000, 256, "auto")
    assert s.cors_origins == [] and s.workers == 1


def test_environment_is_read_with_the_prefix(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("MCSERVE_MODEL_DIR", str(tmp_path))
    monkeypatch.setenv("MCSERVE_DEVICE", "CUDA:1")
    monkeypatch.setenv("MCSERVE_MAX_BATCH", "17")
    monkeypatch.setenv("MCSERVE_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("MCSERVE_LOG_LEVEL", "WARNING")
    monkeypatch.setenv("MAX_BATCH", "99")  # unprefixed: ignored
    s = Settings()
    assert s.model_dir == tmp_path and s.device == "cuda:1" and s.max_batch == 17 and s.log_level == "warning"
    assert s.cors_origins == ["https://a.example", "https://b.example"]


@pytest.mark.parametrize(
    ("env", "needle"),
    [
        ({"MCSERVE_DEVICE": "tpu"}, "MCSERVE_DEVICE"),
        ({"MCSERVE_PORT": "0"}, "MCSERVE_PORT"),
        ({"MCSERVE_WORKERS": "0"}, "MCSERVE_WORKERS"),
        ({"MCSERVE_DEFAULT_SAMPLES": "50", "MCSERVE_MAX_SAMPLES": "10"}, "default_samples"),
    ],
)
def test_invalid_settings_name_the_variable(monkeypatch: pytest.MonkeyPatch, env: dict[str, str], needle: str) -> None:
    for key, val in env.items():
        monkeypatch.setenv(key, val)
    with pytest.raises(ValidationError) as info:
        Settings()
    assert needle in describe_error(info.value)


def test_device_resolution() -> None:
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    bad = "cuda" if not torch.cuda.is_available() else f"cuda:{torch.cuda.device_count()}"
    with pytest.raises(DeviceError, match="MCSERVE_DEVICE"):
        resolve_device(bad)


def test_access_log_is_off_by_default_and_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in list(os.environ):
        if key.startswith("MCSERVE_"):
            monkeypatch.delenv(key)
    assert Settings().access_log is False
    monkeypatch.setenv("MCSERVE_ACCESS_LOG", "true")
    assert Settings().access_log is True


def test_http_one_write_is_on_by_default_and_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    assert Settings().http_one_write is True
    monkeypatch.setenv("MCSERVE_HTTP_ONE_WRITE", "false")
    assert Settings().http_one_write is False
