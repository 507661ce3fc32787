"""Security properties that must never regress: no pickle, non-root read-only serving, closed CORS, no secrets.

The pickle check parses every Python source of the repository (tracked or not ignored)
with ``ast`` and fails on a pickle-family import or a ``torch.load`` without
``weights_only=True``; a self-test proves the detector fires on exactly those.
"""

from __future__ import annotations

import ast
import re
import subprocess
from pathlib import Path

import httpx
import yaml
from fastapi.testclient import TestClient
from hardening_support import REPO, Server

from service import Settings, create_app

PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "dill", "cloudpickle", "shelve", "joblib"}


def unsafe_deserialisation(source: str) -> list[str]:
    """Pickle-family imports, ``torch.load`` without ``weights_only=True``, ``numpy.load(allow_pickle=True)``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found += [
                f"line {node.lineno}: import {a.name}" for a in node.names if a.name.split(".")[0] in PICKLE_MODULES
            ]
        elif isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in PICKLE_MODULES:
            found.append(f"line {node.lineno}: from {node.module} import ...")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            name = ast.unparse(node.func)
            kwargs = {k.arg: k.value for k in node.keywords}
            if name.endswith("torch.load") or name == "torch.serialization.load":
                safe = kwargs.get("weights_only")
                if not (isinstance(safe, ast.Constant) and safe.value is True):
                    found.append(f"line {node.lineno}: {name}(...) without weights_only=True")
            if name in ("np.load", "numpy.load"):
                allow = kwargs.get("allow_pickle")
                if isinstance(allow, ast.Constant) and allow.value is True:
                    found.append(f"line {node.lineno}: {name}(..., allow_pickle=True)")
    return found


def python_sources() -> list[Path]:
    out = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard", "*.py"],
        cwd=REPO,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [REPO / p for p in out if (REPO / p).is_file()]


def test_the_pickle_detector_fires_on_unsafe_code() -> None:
    bad = (
        "import pickle\nfrom dill import loads\nimport torch\ntorch.load('m.pt')\n"
        "torch.load('m.pt', weights_only=False)\nimport numpy as np\nnp.load('a.npy', allow_pickle=True)\n"
    )
    assert len(unsafe_deserialisation(bad)) == 5
    assert unsafe_deserialisation("import torch\ntorch.load('m.pt', weights_only=True)\n") == []


def test_no_pickle_deserialisation_anywhere_in_the_repository() -> None:
    sources = python_sources()
    assert len(sources) > 30 and any(p.parts[-2:] == ("mcnet", "__init__.py") for p in sources)
    problems = {str(p.relative_to(REPO)): f for p in sources if (f := unsafe_deserialisation(p.read_text()))}
    assert not problems, problems


def _compose() -> dict[str, dict[str, dict[str, object]]]:
    data = yaml.safe_load((REPO / "docker-compose.yml").read_text())
    assert isinstance(data, dict)
    return data


def test_serve_image_runs_as_non_root() -> None:
    dockerfile = (REPO / "Dockerfile").read_text()
    serve = dockerfile.split("AS serve", 1)[1].split("\nFROM ", 1)[0]
    users = re.findall(r"^USER\s+(\S+)", serve, re.M)
    assert users and users[-1] not in ("root", "0", "0:0"), users
    api = _compose()["services"]["api"]
    assert str(api.get("user", users[-1])).split(":")[0] not in ("root", "0")


def test_compose_api_has_a_read_only_root_filesystem() -> None:
    api = _compose()["services"]["api"]
    assert api.get("read_only") is True
    assert api.get("user") in (None, "10001", "mcserve") or not str(api.get("user")).startswith("0")


SECRET = re.compile(
    r"(PASSWORD|PASSWD|SECRET|TOKEN|API_KEY)\s*[:=]\s*[\"']?[A-Za-z0-9]|-----BEGIN [A-Z ]*PRIVATE KEY-----"
    r"|AKIA[0-9A-Z]{16}",
    re.I,
)


def _code(path: Path) -> str:
    """The file without comment lines (which explain, e.g., how to pass a password of your own)."""
    return "\n".join(line for line in path.read_text().splitlines() if not line.lstrip().startswith("#"))


def test_no_secrets_or_default_passwords_in_images_or_compose() -> None:
    files = [REPO / "Dockerfile", REPO / "docker-compose.yml", *sorted((REPO / "deploy").glob("compose*.yml"))]
    files += sorted((REPO / "deploy" / "docker").glob("*"))
    hits = {str(f.relative_to(REPO)): SECRET.findall(_code(f)) for f in files if f.is_file()}
    assert {k: v for k, v in hits.items() if v} == {}
    assert SECRET.search("GF_SECURITY_ADMIN_PASSWORD: admin") and SECRET.search("DB_PASSWORD='hunter2'")
    assert not SECRET.search("PASSWORD: ${GRAFANA_PW:?set it}") and not SECRET.search("X_PASSWORD:?set it")


def test_cors_is_closed_by_default(hardened: Server) -> None:
    origin = {"Origin": "https://evil.example"}
    r = httpx.post(f"{hardened.url}/predict", json={"images": [[0] * 784]}, headers=origin, timeout=10)
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    pre = httpx.options(
        f"{hardened.url}/predict",
        headers=origin | {"Access-Control-Request-Method": "POST"},
        timeout=10,
    )
    assert "access-control-allow-origin" not in pre.headers and pre.status_code >= 400


def test_cors_opens_only_to_configured_origins(trained_artifact: Path) -> None:
    settings = Settings(model_dir=trained_artifact, device="cpu", cors_origins="https://app.example")  # type: ignore[arg-type]
    with TestClient(create_app(settings)) as client:
        ok = client.get("/livez", headers={"Origin": "https://app.example"})
        other = client.get("/livez", headers={"Origin": "https://evil.example"})
    assert ok.headers.get("access-control-allow-origin") == "https://app.example"
    assert "access-control-allow-origin" not in other.headers


def test_an_exposed_server_without_keys_warns_once(trained_artifact: Path, tmp_path: Path) -> None:
    """Bound to every interface without MCSERVE_API_KEYS_FILE: one warning that says what to set."""
    from hardening_support import running_server

    log = tmp_path / "service.log"
    for server in running_server(trained_artifact, log, host="0.0.0.0"):
        assert httpx.get(f"{server.url}/readyz", timeout=5).status_code == 200
        lines = [line for line in server.output().splitlines() if "without API keys" in line]
        assert len(lines) == 1 and "MCSERVE_API_KEYS_FILE" in lines[0], server.output()[-2000:]
    for server in running_server(trained_artifact, tmp_path / "loopback.log"):
        assert "without API keys" not in server.output()
