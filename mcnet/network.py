"""The network: the §4.6 dropout MLP (d2l.ai), its architecture and input spec, and the class names.

Imports only torch and the standard library; ``mcnet.artifact`` stores and verifies it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

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
