"""The artifact's manifest and file checks, without torch: what can be verified before any heavy import.

``read_manifest`` checks ``manifest.json`` (version, schema, self-checksum) and ``verified_weights`` /
``verified_file`` the files it names (plain names inside the directory, present, the manifest's sha256). The service
runs them before importing torch, so a broken artifact fails a start in a fraction of a second; ``mcnet.artifact``
runs them again when it loads the tensors. Imports only the standard library.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
MODEL_NAME = "fashion-mnist-dropout-mlp"


class ArtifactError(RuntimeError):
    """An artifact that cannot be trusted or used; the message says what to do."""

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        artifact_dir = self.path.parent if self.path.suffix in {".json", ".safetensors"} else self.path
        super().__init__(
            f"{self.path}: {problem}. Re-export the model with "
            f"`python -m training --out {artifact_dir}` "
            "or point MCSERVE_MODEL_DIR at a valid artifact directory."
        )


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def manifest_checksum(manifest: Mapping[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


_REQUIRED: dict[str, type | tuple[type, ...]] = {
    "format_version": int,
    "name": str,
    "version": str,
    "architecture": dict,
    "input": dict,
    "class_names": list,
    "uncertainty": dict,
    "weights": dict,
    "created_at": str,
    "manifest_sha256": str,
}


def read_manifest(directory: Path | str) -> dict[str, Any]:
    """Read and validate ``manifest.json`` (version, schema, self-checksum)."""
    path = Path(directory) / MANIFEST_FILE
    try:
        is_dir = Path(directory).is_dir()
    except OSError as exc:  # e.g. a parent directory this user may not enter
        raise ArtifactError(directory, f"model directory cannot be read ({exc})") from None
    if not is_dir:
        raise ArtifactError(directory, "model directory does not exist or is not a directory")
    try:
        manifest = json.loads(path.read_text())
    except FileNotFoundError:
        raise ArtifactError(path, "manifest.json is missing") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ArtifactError(path, f"manifest.json cannot be read ({exc})") from None
    if not isinstance(manifest, dict):
        raise ArtifactError(path, "manifest.json must hold a JSON object")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise ArtifactError(path, f"format_version {version!r} is not supported (this build reads {FORMAT_VERSION})")
    for key, kind in _REQUIRED.items():
        if not isinstance(manifest.get(key), kind):
            raise ArtifactError(path, f"manifest field {key!r} is missing or not a {getattr(kind, '__name__', kind)}")
    if manifest_checksum(manifest) != manifest["manifest_sha256"]:
        raise ArtifactError(path, "manifest checksum mismatch: manifest.json was edited or corrupted")
    return manifest


def verified_weights(directory: Path | str, manifest: Mapping[str, Any]) -> Path:
    """The path of the weights file ``manifest`` names, after checking it is a plain file name in ``directory``,
    exists, can be read and has the manifest's sha256; :class:`ArtifactError` otherwise."""
    mpath = Path(directory) / MANIFEST_FILE
    try:
        expected_sha = str(manifest["weights"]["sha256"])
        weights_name = str(manifest["weights"]["file"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(mpath, f"manifest schema error ({exc!r})") from None
    if Path(weights_name).name != weights_name:
        raise ArtifactError(mpath, "weights file must be a plain file name inside the artifact directory")
    wpath = Path(directory) / weights_name
    if not wpath.is_file():
        raise ArtifactError(wpath, "weights file is missing")
    try:
        actual_sha = sha256_file(wpath)
    except OSError as exc:
        raise ArtifactError(wpath, f"weights file cannot be read ({exc.strerror})") from None
    if actual_sha != expected_sha:
        raise ArtifactError(
            wpath,
            f"sha256 mismatch (manifest {expected_sha[:12]}, file {actual_sha[:12]}): weights corrupted or tampered",
        )
    return wpath


def verified_file(directory: Path | str, name: str, expected_sha256: str, what: str) -> Path:
    """The path of an artifact's extra file ``name`` (input check, conformal calibration) after checking it is a plain
    file name in ``directory``, exists and has the manifest's sha256; :class:`ArtifactError` otherwise."""
    if Path(name).name != name:
        raise ArtifactError(
            Path(directory) / MANIFEST_FILE, f"{what} file must be a plain file name inside the artifact directory"
        )
    path = Path(directory) / name
    if not path.is_file():
        raise ArtifactError(path, f"{what} file is missing")
    actual = sha256_file(path)
    if actual != expected_sha256:
        problem = f"sha256 mismatch (manifest {expected_sha256[:12]}, file {actual[:12]}): corrupted or tampered"
        raise ArtifactError(path, problem)
    return path
