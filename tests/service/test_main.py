"""``python -m service`` checks what needs no torch (settings, ports, keys, TLS, the artifact's manifest and weights
checksum) before importing torch, so those mistakes fail a start in a fraction of a second."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from mcnet.manifest import manifest_checksum, sha256_file

pytestmark = pytest.mark.slow  # child processes: `make test`, not test-fast

REPO = Path(__file__).resolve().parents[2]

# Runs main() in a fresh interpreter, then reports its exit code and whether torch was ever imported.
_PROBE = """
import json, sys
from service.__main__ import main
code = main()
print(json.dumps({"code": code, "torch": "torch" in sys.modules}))
"""


def _probe(model_dir: Path, **env: str) -> tuple[dict[str, object], str]:
    environ = {"MCSERVE_MODEL_DIR": str(model_dir), "MCSERVE_DEVICE": "cpu", "MCSERVE_GRPC_PORT": "0", **env}
    base = {k: v for k, v in os.environ.items() if not k.startswith("MCSERVE_")}
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=REPO, env=base | environ, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def _tamper(d: Path) -> None:
    w = d / "model.safetensors"
    data = bytearray(w.read_bytes())
    data[-1] ^= 0xFF
    w.write_bytes(bytes(data))


def _drop_manifest(d: Path) -> None:
    (d / "manifest.json").unlink()


def _edit_manifest(d: Path) -> None:
    m = d / "manifest.json"
    manifest = json.loads(m.read_text())
    manifest["class_names"][0] = "Tee"
    m.write_text(json.dumps(manifest))


@pytest.mark.parametrize(
    ("breaker", "expected"),
    [(_tamper, "sha256 mismatch"), (_drop_manifest, "manifest.json is missing"), (_edit_manifest, "checksum")],
    ids=["tampered weights", "no manifest", "edited manifest"],
)
def test_a_broken_artifact_fails_before_torch_is_imported(
    breaker: Callable[[Path], None], expected: str, trained_artifact: Path, tmp_path: Path
) -> None:
    model = tmp_path / "model"
    shutil.copytree(trained_artifact, model)
    breaker(model)
    result, stderr = _probe(model)
    assert result == {"code": 2, "torch": False}, (result, stderr)
    assert expected in stderr, stderr


def test_a_bad_keys_file_fails_before_torch_is_imported(trained_artifact: Path, tmp_path: Path) -> None:
    keys = tmp_path / "keys.toml"
    keys.write_text("[[keys]\n")
    result, stderr = _probe(trained_artifact, MCSERVE_API_KEYS_FILE=str(keys))
    assert result == {"code": 2, "torch": False}, (result, stderr)
    assert "not valid TOML" in stderr, stderr


def test_an_artifact_with_sound_checksums_gets_past_the_early_checks(trained_artifact: Path, tmp_path: Path) -> None:
    """The other side: weights that are not safetensors, with a manifest that vouches for them, pass every check that
    needs no torch; the start then fails where the tensors are read, after torch is imported."""
    model = tmp_path / "model"
    shutil.copytree(trained_artifact, model)
    (model / "model.safetensors").write_bytes(b"not safetensors at all")
    manifest = json.loads((model / "manifest.json").read_text())
    manifest["weights"]["sha256"] = sha256_file(model / "model.safetensors")
    manifest["manifest_sha256"] = manifest_checksum(manifest)
    (model / "manifest.json").write_text(json.dumps(manifest))
    result, stderr = _probe(model)
    assert result == {"code": 2, "torch": True}, (result, stderr)
    assert "not valid safetensors" in stderr, stderr
