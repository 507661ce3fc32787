"""The model holder: device choice, artifact loading, warm-up and bounded off-loop execution."""

from __future__ import annotations

import logging
import os
import random
import secrets
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property, partial
from typing import Any, TypeVar

import anyio
import numpy as np
import torch

from mcnet import ArtifactError, DropoutMLP, load_artifact
from mcnet.conformal import Conformal, load_conformal
from mcnet.inputcheck import InputCheck, load_input_check

from . import mcjson, mcnative
from .evalkernel import EvalKernel
from .inference import mc_predict, predict_eval
from .memory import keep_freed_buffers
from .settings import Settings

log = logging.getLogger("service")
T = TypeVar("T")
SEED_BITS = 63  # seeds are 0 <= seed < 2**63
_SEEDS = random.Random(secrets.randbits(128))  # fresh seeds (Engine.fresh_seed); a forked child reseeds its own
os.register_at_fork(after_in_child=lambda: _SEEDS.seed(secrets.randbits(128)))


class DeviceError(RuntimeError):
    """The configured device cannot be used; the message says what to do."""


def resolve_device(spec: str) -> torch.device:
    """Map ``auto | cpu | cuda | cuda:N`` to a usable device, or raise ``DeviceError``."""
    if spec == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if spec == "cpu":
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise DeviceError(
            f"MCSERVE_DEVICE={spec} but no CUDA device is available on this machine "
            "(torch.cuda.is_available() is False); set MCSERVE_DEVICE=cpu or auto"
        )
    device = torch.device(spec)
    index = device.index or 0
    if index >= torch.cuda.device_count():
        raise DeviceError(
            f"MCSERVE_DEVICE={spec} but only {torch.cuda.device_count()} CUDA device(s) exist; "
            f"use cuda:0..cuda:{torch.cuda.device_count() - 1}"
        )
    return torch.device("cuda", index)


@dataclass(frozen=True)
class LoadedModel:
    model: DropoutMLP
    manifest: dict[str, Any]
    device: torch.device
    input_check: InputCheck | None = None  # None for artifacts exported before the check existed
    kernel: EvalKernel | None = None  # the numpy eval pass on CPU; None on CUDA, where torch runs it
    conformal: Conformal | None = None  # prediction sets and abstention; None for artifacts exported without one

    @cached_property  # read on every request; the manifest never changes
    def class_names(self) -> list[str]:
        return [str(c) for c in self.manifest["class_names"]]

    @cached_property  # read on every request; the manifest never changes
    def threshold(self) -> float:
        return float(self.manifest["uncertainty"]["threshold"])

    @cached_property  # read on every request; the manifest never changes
    def ref(self) -> dict[str, str]:
        m = self.manifest
        return {"name": str(m["name"]), "version": str(m["version"]), "sha256": str(m["weights"]["sha256"])}


class Engine:
    """Loads the artifact once and runs inference in worker threads, at most ``max_concurrency`` at a time."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._loaded: LoadedModel | None = None
        self.mc_code = "unknown"  # which code computes MC dropout (load() decides): c, numpy or torch
        self._mc_reason = ""
        self._lock = threading.Lock()
        self._limiter: anyio.CapacityLimiter | None = None

    @property
    def ready(self) -> bool:
        return self._loaded is not None

    @property
    def loaded(self) -> LoadedModel:
        if self._loaded is None:
            raise RuntimeError("model not loaded")
        return self._loaded

    def load(self) -> LoadedModel:
        """Resolve the device, verify and load the artifact, warm up. Idempotent; raises on any problem."""
        with self._lock:
            if self._loaded is not None:
                return self._loaded
            if self.settings.torch_threads > 0:
                torch.set_num_threads(self.settings.torch_threads)
            if self.settings.keep_freed_buffers:
                keep_freed_buffers()
            device = resolve_device(self.settings.device)
            self.mc_code = self._choose_mc_kernel(device)
            start = time.perf_counter()
            model, manifest = load_artifact(self.settings.model_dir, device)
            if model.training:
                raise ArtifactError(self.settings.model_dir, "loaded model is not in eval mode")
            check = load_input_check(self.settings.model_dir, manifest)  # on CPU, where requests decode pixels
            kernel = EvalKernel(model, check) if device.type == "cpu" else None
            conformal = load_conformal(self.settings.model_dir, manifest)
            loaded = LoadedModel(
                model=model, manifest=manifest, device=device, input_check=check, kernel=kernel, conformal=conformal
            )
            self._warm_up(loaded)
            log.info(
                "model %s version %s loaded on %s and warmed up in %.2fs; MC kernel: %s (%s)",
                manifest["name"], manifest["version"], device, time.perf_counter() - start, self.mc_code,
                self._mc_reason,
            )  # fmt: skip
            if self.mc_code == "numpy" and self.settings.mc_native == "auto":
                log.warning("the MC kernel runs in numpy, not C: %s", self._mc_reason)
            json_problem = mcjson.problem()  # loaded here, before the first request needs it
            if json_problem is not None:
                log.warning("JSON bodies are parsed without the C pixel parser (slower, same answer): %s", json_problem)
            self._loaded = loaded
            return loaded

    def _choose_mc_kernel(self, device: torch.device) -> str:
        """Which code computes MC dropout here: ``c`` or ``numpy`` on CPU (``MCSERVE_MC_NATIVE``), ``torch`` on CUDA.
        Raises NativeKernelError for ``on`` without the library, before anything is loaded."""
        choice = mcnative.configure(self.settings.mc_native)
        self._mc_reason = choice.reason
        if device.type != "cpu":
            return "torch"
        return "c" if choice.native else "numpy"

    def unload(self) -> None:
        with self._lock:
            self._loaded = None

    def _warm_up(self, loaded: LoadedModel) -> None:
        x = torch.zeros(2, loaded.model.arch.input_dim, device=loaded.device)
        predict_eval(loaded.model, x)
        if loaded.kernel is not None:
            loaded.kernel(x.cpu().numpy())
        mc_predict(loaded.model, x, 4, self.generator(0, loaded.device), self.settings.mc_chunk_size)
        if loaded.device.type == "cuda":
            torch.cuda.synchronize(loaded.device)

    @staticmethod
    def generator(seed: int, device: torch.device) -> torch.Generator:
        return torch.Generator(device=device).manual_seed(seed)

    @staticmethod
    def fresh_seed() -> int:
        """A seed for a request that gave none: from a generator seeded once per process by the OS (a read of the OS's
        randomness per request, as ``secrets`` does, cost more than the request's admission)."""
        return _SEEDS.getrandbits(SEED_BITS)

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        """Deterministic probabilities on CPU, ``(B, C)``."""
        return torch.from_numpy(self.predict_scored(x.numpy())[:, :-1])

    def predict_scored(self, x: np.ndarray) -> np.ndarray:
        """``(B, C + 1)`` float32 for CPU pixels ``(B, 28, 28)``: :meth:`predict`'s probabilities with the input
        check's score as the last column (NaN when the artifact has no check), from one pass: on CPU the numpy
        :class:`EvalKernel`, which computes both in one call; on CUDA the torch model, the check scored on CPU.
        numpy in and out: the fast path and the micro-batcher never make a torch tensor on CPU."""
        loaded = self.loaded
        if loaded.kernel is not None:
            return loaded.kernel(x)
        t = torch.from_numpy(x)
        probs = predict_eval(loaded.model, t.to(loaded.device)).cpu()
        check = loaded.input_check
        score = torch.full((t.shape[0],), float("nan")) if check is None else check.score(t)
        return torch.cat([probs, score.to(probs.dtype)[:, None]], 1).numpy()

    def input_residuals(self, x: torch.Tensor) -> list[float] | None:
        """The input check's score per image of the CPU batch ``x``; None when the artifact has no check."""
        loaded = self.loaded
        if loaded.input_check is None:
            return None
        if loaded.kernel is not None:  # the same arithmetic as predict_scored's column
            return loaded.kernel.scores(x.numpy()).tolist()
        return loaded.input_check.score(x).tolist()

    def input_residuals_array(self, x: np.ndarray) -> np.ndarray | None:
        """:meth:`input_residuals` for numpy pixels ``(B, 28, 28)``, as a ``(B,)`` float64 array."""
        loaded = self.loaded
        if loaded.input_check is None:
            return None
        if loaded.kernel is not None:
            return loaded.kernel.scores(x)
        return loaded.input_check.score(torch.from_numpy(x)).to(torch.float64).numpy()

    @property
    def limiter(self) -> anyio.CapacityLimiter:
        """The ``max_concurrency`` worker tokens (made on first use, inside the running event loop)."""
        if self._limiter is None:
            self._limiter = anyio.CapacityLimiter(self.settings.max_concurrency)
        return self._limiter

    async def run(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` in a worker thread, never more than ``max_concurrency`` at once."""
        return await anyio.to_thread.run_sync(partial(fn, *args), limiter=self.limiter)
