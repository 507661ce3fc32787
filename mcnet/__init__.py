"""The network and the artifact format: the one module training and serving share.

It imports only torch, safetensors and the standard library, so the service can
load a model without importing any training code.

An artifact is a directory holding

* ``model.safetensors`` - the weights, no pickle;
* ``manifest.json`` - everything needed to rebuild and trust the network:
  format version, architecture, input spec, class names, uncertainty threshold,
  the sha256 of the weights file and a checksum of the manifest itself;
* optionally ``input_check.safetensors`` - the pixel-space outlier check of
  ``mcnet.inputcheck``, with its own sha256 in the manifest.

Writes are atomic (a staging directory is renamed into place) and loading
verifies version, schema and both checksums before any tensor reaches a model.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn

if TYPE_CHECKING:
    from mcnet.inputcheck import InputCheck

FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
MANIFEST_FILE = "manifest.json"
MODEL_NAME = "fashion-mnist-dropout-mlp"
CLASS_NAMES: tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
IMAGE_SIDE = 28
PIXEL_MAX = 255.0


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


@dataclass(frozen=True)
class Architecture:
    """Shape of the §4.6 dropout MLP (d2l.ai): 784-256-256-10, ReLU, dropout 0.2/0.5."""

    input_dim: int = IMAGE_SIDE * IMAGE_SIDE
    hidden: tuple[int, int] = (256, 256)
    num_classes: int = len(CLASS_NAMES)
    dropout: tuple[float, float] = (0.2, 0.5)
    activation: str = "relu"

    def to_json(self) -> dict[str, Any]:
        return {"type": "dropout_mlp", **asdict(self), "hidden": list(self.hidden), "dropout": list(self.dropout)}

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Architecture:
        hidden = tuple(int(h) for h in data["hidden"])
        dropout = tuple(float(p) for p in data["dropout"])
        if data.get("type") != "dropout_mlp" or len(hidden) != 2 or len(dropout) != 2:
            raise ValueError("architecture must be a dropout_mlp with two hidden layers")
        if data["activation"] != "relu":
            raise ValueError(f"unsupported activation {data['activation']!r}")
        if not all(0.0 <= p < 1.0 for p in dropout):
            raise ValueError("dropout rates must lie in [0, 1)")
        return cls(
            input_dim=int(data["input_dim"]),
            hidden=(hidden[0], hidden[1]),
            num_classes=int(data["num_classes"]),
            dropout=(dropout[0], dropout[1]),
            activation=str(data["activation"]),
        )


@dataclass(frozen=True)
class InputSpec:
    """Images arrive as 28x28 grayscale on the dataset's 0-255 scale; the network normalises."""

    height: int = IMAGE_SIDE
    width: int = IMAGE_SIDE
    channels: int = 1
    scale_min: float = 0.0
    scale_max: float = PIXEL_MAX
    mean: float = 0.2860  # of x/255 over the Fashion-MNIST training images
    std: float = 0.3530

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> InputSpec:
        spec = cls(**{k: type(getattr(cls(), k))(data[k]) for k in cls.__dataclass_fields__})
        if spec.std <= 0 or spec.height * spec.width * spec.channels <= 0:
            raise ValueError("input spec needs std > 0 and a positive image size")
        return spec


class DropoutMLP(nn.Module):
    """784-256-256-10 MLP with dropout after each hidden layer (d2l.ai §4.6).

    Takes raw pixels on the 0-255 scale, shape ``(N, 784)`` or ``(N, 28, 28)``,
    and returns logits.  ``mc=True`` keeps dropout on for this call only, so an
    eval-mode module can be shared by deterministic and Monte Carlo callers.
    """

    in_scale: torch.Tensor
    in_shift: torch.Tensor

    def __init__(self, arch: Architecture | None = None, input_spec: InputSpec | None = None) -> None:
        super().__init__()
        self.arch = arch or Architecture()
        self.input_spec = input_spec or InputSpec()
        h1, h2 = self.arch.hidden
        self.fc1 = nn.Linear(self.arch.input_dim, h1)
        self.fc2 = nn.Linear(h1, h2)
        self.fc3 = nn.Linear(h2, self.arch.num_classes)
        # x_norm = (x/255 - mean)/std  ==  x * scale + shift
        scale = 1.0 / (self.input_spec.scale_max * self.input_spec.std)
        shift = -self.input_spec.mean / self.input_spec.std
        self.register_buffer("in_scale", torch.tensor(scale), persistent=False)
        self.register_buffer("in_shift", torch.tensor(shift), persistent=False)

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        return x.reshape(x.shape[0], -1) * self.in_scale + self.in_shift

    def hidden1(self, x: torch.Tensor) -> torch.Tensor:
        """The deterministic part before the first dropout: ReLU(fc1(normalise(x)))."""
        return F.relu(self.fc1(self.normalise(x)))

    def forward(self, x: torch.Tensor, mc: bool = False) -> torch.Tensor:
        active = self.training or mc
        p1, p2 = self.arch.dropout
        h = F.dropout(self.hidden1(x), p1, training=active)
        h = F.dropout(F.relu(self.fc2(h)), p2, training=active)
        return self.fc3(h)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest_checksum(manifest: Mapping[str, Any]) -> str:
    body = {k: v for k, v in manifest.items() if k != "manifest_sha256"}
    canonical = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(canonical.encode()).hexdigest()


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
) -> dict[str, Any]:
    """Write weights, the optional input check (``mcnet.inputcheck``) and the manifest into ``directory``."""
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
        **(dict(extra) if extra else {}),
    }
    manifest["version"] = manifest.get("version") or manifest["weights"]["sha256"][:12]
    manifest["manifest_sha256"] = _manifest_checksum(manifest)
    (directory / MANIFEST_FILE).write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return manifest


def save_artifact(out_dir: Path | str, model: DropoutMLP, **kwargs: Any) -> dict[str, Any]:
    """Atomically write a complete artifact to ``out_dir`` and return its manifest."""
    with atomic_directory(out_dir) as staging:
        return write_artifact_files(staging, model, **kwargs)


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
    if not Path(directory).is_dir():
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
    if _manifest_checksum(manifest) != manifest["manifest_sha256"]:
        raise ArtifactError(path, "manifest checksum mismatch: manifest.json was edited or corrupted")
    return manifest


def load_artifact(directory: Path | str, device: str | torch.device = "cpu") -> tuple[DropoutMLP, dict[str, Any]]:
    """Verify and load an artifact; returns the model (eval mode, on ``device``) and manifest."""
    directory = Path(directory)
    manifest = read_manifest(directory)
    mpath = directory / MANIFEST_FILE
    try:
        arch = Architecture.from_json(manifest["architecture"])
        spec = InputSpec.from_json(manifest["input"])
        threshold = float(manifest["uncertainty"]["threshold"])
        expected_sha = str(manifest["weights"]["sha256"])
        weights_name = str(manifest["weights"]["file"])
    except (KeyError, TypeError, ValueError) as exc:
        raise ArtifactError(mpath, f"manifest schema error ({exc!r})") from None
    class_names = manifest["class_names"]
    if len(class_names) != arch.num_classes or not all(isinstance(c, str) for c in class_names):
        raise ArtifactError(mpath, "class_names must be one string per output class")
    if not threshold >= 0.0:
        raise ArtifactError(mpath, "uncertainty threshold must be a non-negative number")
    if Path(weights_name).name != weights_name:
        raise ArtifactError(mpath, "weights file must be a plain file name inside the artifact directory")
    wpath = directory / weights_name
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


__all__ = [
    "CLASS_NAMES",
    "FORMAT_VERSION",
    "MANIFEST_FILE",
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
