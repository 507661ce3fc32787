"""The artifact format: what training writes and the service verifies before any tensor reaches a model.

An artifact is a directory holding

* ``model.safetensors`` - the weights, no pickle;
* ``manifest.json`` - everything needed to rebuild and trust the network:
  format version, architecture, input spec, class names, uncertainty threshold,
  the sha256 of the weights file and a checksum of the manifest itself;
* optionally ``input_check.safetensors`` - the pixel-space outlier check of
  ``mcnet.inputcheck``, with its own sha256 in the manifest;
* optionally ``conformal.safetensors`` - the conformal calibration of ``mcnet.conformal`` (prediction sets and
  abstention), with its own sha256 in the manifest.

Writes are atomic (a staging directory is renamed into place) and loading
verifies version, schema and every checksum before any tensor reaches a model; those checks
live in ``mcnet.manifest`` (standard library only), re-exported here.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load_file, save_file

from mcnet.manifest import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    MODEL_NAME,
    WEIGHTS_FILE,
    ArtifactError,
    manifest_checksum,
    read_manifest,
    sha256_file,
    verified_file,
    verified_weights,
)
from mcnet.network import CLASS_NAMES, Architecture, DropoutMLP, InputSpec

if TYPE_CHECKING:
    from mcnet.conformal import Conformal
    from mcnet.inputcheck import InputCheck

__all__ = [  # the manifest's names are re-exported: callers load and verify through one module
    "FORMAT_VERSION",
    "MANIFEST_FILE",
    "MODEL_NAME",
    "WEIGHTS_FILE",
    "ArtifactError",
    "atomic_directory",
    "load_artifact",
    "manifest_checksum",
    "read_manifest",
    "save_artifact",
    "sha256_file",
    "verified_file",
    "verified_weights",
    "write_artifact_files",
]


@contextlib.contextmanager
def atomic_directory(out_dir: Path | str) -> Iterator[Path]:
    """Yield a staging directory that replaces ``out_dir`` only if the block succeeds.

    A crash inside the block leaves ``out_dir`` as it was (no half artifact);
    the staging directory is removed.
    """
    out = Path(out_dir).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.partial-", dir=out.parent))
    try:
        yield staging
        for child in staging.iterdir():
            if child.is_file():
                child.chmod(0o644)  # readable by a serving user other than the trainer
                with open(child, "rb") as fh:
                    os.fsync(fh.fileno())
        staging.chmod(0o755)
        old = None
        if out.exists():
            old = out.parent / f".{out.name}.old-{os.getpid()}"
            os.replace(out, old)
        os.replace(staging, out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def write_artifact_files(
    directory: Path,
    model: DropoutMLP,
    class_names: tuple[str, ...] = CLASS_NAMES,
    uncertainty_threshold: float = 0.0,
    uncertainty_rule: str = "",
    extra: Mapping[str, Any] | None = None,
    input_check: InputCheck | None = None,
    conformal: Conformal | None = None,
) -> dict[str, Any]:
    """Write weights, the optional input check (``mcnet.inputcheck``), the optional conformal calibration
    (``mcnet.conformal``) and the manifest into ``directory``."""
    if len(class_names) != model.arch.num_classes:
        raise ValueError("one class name per output is required")
    weights_path = directory / WEIGHTS_FILE
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    save_file(tensors, str(weights_path), metadata={"format_version": str(FORMAT_VERSION)})
    import safetensors

    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "name": MODEL_NAME,
        "architecture": model.arch.to_json(),
        "input": model.input_spec.to_json(),
        "class_names": list(class_names),
        "uncertainty": {
            "metric": "mutual_information",
            "threshold": float(uncertainty_threshold),
            "rule": uncertainty_rule,
        },
        "weights": {"file": WEIGHTS_FILE, "sha256": sha256_file(weights_path)},
        "versions": {"torch": torch.__version__, "safetensors": safetensors.__version__},
        "created_at": _utc_now(),
        "input_check": None if input_check is None else input_check.save(directory),
        "conformal": None if conformal is None else conformal.save(directory),
        **(dict(extra) if extra else {}),
    }
    manifest["version"] = manifest.get("version") or manifest["weights"]["sha256"][:12]
    manifest["manifest_sha256"] = manifest_checksum(manifest)
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def save_artifact(out_dir: Path | str, model: DropoutMLP, **kwargs: Any) -> dict[str, Any]:
    """Atomically write a complete artifact to ``out_dir`` and return its manifest."""
    with atomic_directory(out_dir) as staging:
        return write_artifact_files(staging, model, **kwargs)


def load_artifact(directory: Path | str, device: str | torch.device = "cpu") -> tuple[DropoutMLP, dict[str, Any]]:
    """Verify and load an artifact; returns the model (eval mode, on ``device``) and manifest."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    mpath = directory / MANIFEST_FILE
    try:
        arch = Architecture.from_json(manifest["architecture"])
        spec = InputSpec.from_json(manifest["input"])
        threshold = float(manifest["uncertainty"]["threshold"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(mpath, f"manifest schema error ({exc!r})") from None
    class_names = manifest["class_names"]
    if len(class_names) != arch.num_classes or not all(isinstance(c, str) for c in class_names):
        raise ArtifactError(mpath, "class_names must be one string per output class")
    if not threshold >= 0.0:
        raise ArtifactError(mpath, "uncertainty threshold must be a non-negative number")
    wpath = verified_weights(directory, manifest)
    try:
        tensors = load_file(str(wpath))
    except Exception as exc:  # safetensors raises several types for malformed files
        raise ArtifactError(wpath, f"weights file is not valid safetensors ({exc})") from None
    model = DropoutMLP(arch, spec)
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:
        raise ArtifactError(wpath, f"weights do not match the manifest's architecture ({exc})") from None
    model.eval()
    return model.to(device), manifest


def _utc_now() -> str:
    from datetime import UTC, datetime

    return datetime.now(UTC).isoformat(timespec="seconds")
