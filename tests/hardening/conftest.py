"""Fixtures of the hardening tests: real uvicorn servers on 127.0.0.1:18300-18399 with small limits."""

from __future__ import annotations

import hashlib
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # importlib import mode: make hardening_support importable

from hardening_support import LIMITS, Server, running_server


@pytest.fixture(scope="session")
def limits() -> dict[str, int]:
    return dict(LIMITS)


@pytest.fixture(scope="session")
def hardened(trained_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    """One shared real service with the small ``LIMITS`` (read-only tests: inputs, fuzzing, CORS)."""
    log = tmp_path_factory.mktemp("hardened") / "service.log"
    yield from running_server(trained_artifact, log, **LIMITS)


@pytest.fixture(scope="session")
def keyed(trained_artifact: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Server, str]]:
    """The same service with API keys on: ``(server, token)`` of an ``admin`` key (every scope)."""
    d = tmp_path_factory.mktemp("keyed")
    token = "mcs_" + secrets.token_urlsafe(24)
    digest = hashlib.sha256(token.encode()).hexdigest()
    (d / "keys.toml").write_text(f'[[keys]]\nid = "fuzz"\nsha256 = "{digest}"\nscopes = ["admin"]\n')
    for server in running_server(trained_artifact, d / "service.log", **LIMITS, api_keys_file=d / "keys.toml"):
        yield server, token
