"""The torch-free manifest and file checks: importable without torch, and the same verdicts the load gives."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from mcnet import DropoutMLP, save_artifact
from mcnet.manifest import ArtifactError, manifest_checksum, read_manifest, verified_weights

REPO = Path(__file__).resolve().parents[2]


def _export(tmp_path: Path) -> Path:
    torch.manual_seed(0)
    out = tmp_path / "artifact"
    save_artifact(out, DropoutMLP())
    return out


def test_importing_the_manifest_checks_does_not_import_torch() -> None:
    probe = "import sys, mcnet.manifest, mcnet; print(sorted(m for m in ('torch', 'numpy') if m in sys.modules))"
    done = subprocess.run([sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"


def test_a_sound_artifact_passes_and_names_its_weights(tmp_path: Path) -> None:
    out = _export(tmp_path)
    assert verified_weights(out, read_manifest(out)) == out / "model.safetensors"


def test_a_flipped_weights_byte_is_refused_by_the_early_check(tmp_path: Path) -> None:
    out = _export(tmp_path)
    weights = out / "model.safetensors"
    data = bytearray(weights.read_bytes())
    data[len(data) // 2] ^= 1
    weights.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256 mismatch"):
        verified_weights(out, read_manifest(out))


@pytest.mark.parametrize(
    ("weights", "expected"),
    [({"file": "../model.safetensors", "sha256": "0" * 64}, "plain file name"), ({"file": "x"}, "schema error")],
)
def test_a_manifest_naming_its_weights_badly_is_refused(tmp_path: Path, weights: dict[str, str], expected: str) -> None:
    out = _export(tmp_path)
    manifest = json.loads((out / "manifest.json").read_text())
    manifest["weights"] = weights
    manifest["manifest_sha256"] = manifest_checksum(manifest)
    (out / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(ArtifactError, match=expected):
        verified_weights(out, read_manifest(out))
