"""The network and the artifact format: the one package training and serving share.

It imports only torch, safetensors and the standard library (numpy for ``mcnet.conformal``), so the service can
load a model without importing any training code. ``mcnet.network`` holds the network, ``mcnet.artifact`` the
format; the names below are re-exported from them.
"""

from mcnet.artifact import (
    FORMAT_VERSION,
    MANIFEST_FILE,
    MODEL_NAME,
    WEIGHTS_FILE,
    ArtifactError,
    atomic_directory,
    load_artifact,
    read_manifest,
    save_artifact,
    sha256_file,
    write_artifact_files,
)
from mcnet.network import CLASS_NAMES, IMAGE_SIDE, PIXEL_MAX, Architecture, DropoutMLP, InputSpec

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
