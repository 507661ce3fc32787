"""A Monte Carlo request's per-image summaries: :class:`MCResult`, as tensors or as one packed float32 buffer.

The CPU kernels (``service.mcrequest``) and the kernel process (``service.mcchild``) produce the packed form; the
torch kernel (CUDA) the tensor form. Encoders read :meth:`MCResult.lists` or :meth:`MCResult.arrays`, which are
cheap for the packed form.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch


class MCLists(NamedTuple):
    """An :class:`MCResult`'s summaries as Python lists, one entry per image: what the encoders serialise."""

    mean: list[list[float]]
    variance: list[list[float]]
    std: list[list[float]]
    pe: list[float]
    ee: list[float]
    mi: list[float]


class MCResult:
    """Per-image summaries of ``n_samples`` stochastic passes (all on the model's device).

    Made from six tensors, or (:meth:`packed`) from one flat float32 buffer, the CPU kernel's own output and what the
    kernel process sends: mean, variance and std ``(B, C)`` each, then predictive entropy, expected entropy and mutual
    information ``(B,)``, one after the other. Then :meth:`lists` and :meth:`arrays` read the buffer directly and the
    tensors are views of it made only when asked for (six ``torch.from_numpy`` calls cost more than encoding a
    small answer)."""

    __slots__ = ("_buffer", "_images", "_lists", "_tensors", "n_samples")

    def __init__(
        self,
        mean_probs: torch.Tensor,  # (B, C) mean of the softmax over passes
        variance: torch.Tensor,  # (B, C) per-class population variance (divide by T) of the probabilities
        std: torch.Tensor,  # (B, C) sqrt(variance)
        predictive_entropy: torch.Tensor,  # (B,) H[mean_probs], nats
        expected_entropy: torch.Tensor,  # (B,) mean over passes of H[p_t], nats
        mutual_information: torch.Tensor,  # (B,) predictive - expected entropy (BALD), >= 0
        n_samples: int,
    ) -> None:
        self._tensors: tuple[torch.Tensor, ...] | None = (
            mean_probs, variance, std, predictive_entropy, expected_entropy, mutual_information,
        )  # fmt: skip
        self._buffer: np.ndarray | None = None
        self._images = len(mean_probs)
        self._lists: MCLists | None = None
        self.n_samples = n_samples

    @classmethod
    def packed(cls, buffer: np.ndarray, images: int, n_samples: int) -> MCResult:
        """The result of ``images`` images whose summaries are laid out in the flat float32 ``buffer`` as
        :meth:`pack` returns them."""
        self = cls.__new__(cls)
        self._tensors, self._buffer, self._images, self._lists = None, buffer, images, None
        self.n_samples = n_samples
        return self

    def pack(self) -> np.ndarray:
        """The six summaries in one flat float32 buffer on CPU, the layout :meth:`packed` reads."""
        if self._buffer is not None:
            return self._buffer
        return np.concatenate([a.reshape(-1) for a in self.arrays()])

    @property
    def images(self) -> int:
        return self._images

    @property
    def on_cpu(self) -> bool:
        return self._buffer is not None or self.mean_probs.device.type == "cpu"

    def arrays(self) -> tuple[np.ndarray, ...]:
        """The six summaries as numpy arrays on CPU (views of the buffer when packed)."""
        buffer = self._buffer
        if buffer is None:
            return tuple(t.detach().cpu().numpy() for t in self._fields())
        planes, lines = self._split(buffer)
        return planes[0], planes[1], planes[2], lines[0], lines[1], lines[2]

    def _split(self, buffer: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        b = self._images
        c = (len(buffer) - 3 * b) // (3 * b)
        return buffer[: 3 * b * c].reshape(3, b, c), buffer[3 * b * c :].reshape(3, b)

    def lists(self) -> MCLists:
        """The summaries as Python lists (made once; moves them off the device)."""
        if self._lists is None:
            if self._buffer is None:
                self._lists = MCLists(*(t.cpu().tolist() for t in self._fields()))
            else:
                planes, lines = self._split(self._buffer)
                self._lists = MCLists(*planes.tolist(), *lines.tolist())
        return self._lists

    def _fields(self) -> tuple[torch.Tensor, ...]:
        if self._tensors is None:
            self._tensors = tuple(torch.from_numpy(a) for a in self.arrays())
        return self._tensors

    @property
    def mean_probs(self) -> torch.Tensor:
        return self._fields()[0]

    @property
    def variance(self) -> torch.Tensor:
        return self._fields()[1]

    @property
    def std(self) -> torch.Tensor:
        return self._fields()[2]

    @property
    def predictive_entropy(self) -> torch.Tensor:
        return self._fields()[3]

    @property
    def expected_entropy(self) -> torch.Tensor:
        return self._fields()[4]

    @property
    def mutual_information(self) -> torch.Tensor:
        return self._fields()[5]
