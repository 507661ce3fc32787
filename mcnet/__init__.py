"""The network and the artifact format: the one package training and serving share.

It imports only torch, safetensors and the standard library (numpy for ``mcnet.conformal``), so the service can
load a model without importing any training code. ``mcnet.network`` holds the network, ``mcnet.artifact`` the
format and ``mcnet.manifest`` the manifest and file checks (standard library only, so the service runs them before
importing torch). The names below are re-exported from them, each imported on first use: ``import mcnet.manifest``
does not import torch.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mcnet.artifact import atomic_directory, load_artifact, save_artifact, write_artifact_files
    from mcnet.manifest import (
        FORMAT_VERSION,
        MANIFEST_FILE,
        MODEL_NAME,
        WEIGHTS_FILE,
        ArtifactError,
        read_manifest,
        sha256_file,
    )
    from mcnet.network import CLASS_NAMES, IMAGE_SIDE, PIXEL_MAX, Architecture, DropoutMLP, InputSpec

_HOME = {  # re-exported name -> the module that defines it
    **dict.fromkeys(["atomic_directory", "load_artifact", "save_artifact", "write_artifact_files"], "mcnet.artifact"),
    **dict.fromkeys(
        [
            "FORMAT_VERSION",
            "MANIFEST_FILE",
            "MODEL_NAME",
            "WEIGHTS_FILE",
            "ArtifactError",
            "read_manifest",
            "sha256_file",
        ],
        "mcnet.manifest",
    ),
    **dict.fromkeys(
        ["CLASS_NAMES", "IMAGE_SIDE", "PIXEL_MAX", "Architecture", "DropoutMLP", "InputSpec"], "mcnet.network"
    ),
}
_SUBMODULES = {"artifact", "conformal", "inputcheck", "manifest", "network"}

__all__ = [
    "CLASS_NAMES",
    "FORMAT_VERSION",
    "IMAGE_SIDE",
    "MANIFEST_FILE",
    "MODEL_NAME",
    "PIXEL_MAX",
    "WEIGHTS_FILE",
    "Architecture",
    "ArtifactError",
    "DropoutMLP",
    "InputSpec",
    "atomic_directory",
    "load_artifact",
    "read_manifest",
    "save_artifact",
    "sha256_file",
    "write_artifact_files",
]


def __getattr__(name: str) -> Any:
    """Import a re-exported name's module (or a submodule) on first use (PEP 562)."""
    if name in _SUBMODULES:
        return importlib.import_module(f"mcnet.{name}")
    home = _HOME.get(name)
    if home is None:
        raise AttributeError(f"module 'mcnet' has no attribute {name!r}")
    value = getattr(importlib.import_module(home), name)
    globals()[name] = value
    return value
