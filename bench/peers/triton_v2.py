"""Triton (PyTriton) serving mcserve's two v2 models by the same names: ``python ... HTTP_PORT``.

Ports HTTP_PORT (HTTP), +1 (gRPC), +2 (metrics). Run from the bench venv (``scripts/bench_setup.sh``). The names
come from the artifact's manifest (BENCH_MODEL_DIR), as mcserve's do:

- ``fashion-mnist-dropout-mlp`` (the manifest's name): eval-mode softmax -> ``probabilities`` FP32 [10],
  ``class_id`` INT64 [1].
- ``fashion-mnist-dropout-mlp-mc``: Monte Carlo dropout with T = 100 the way a Triton user writes it: dropout in
  train mode, every image repeated T times in one vectorised batch, then ``mean_probabilities``, ``variance``
  (population, over T) FP32 [10] and ``mutual_information`` FP32 [1].

Both: input ``images`` FP32 [784] on the 0..255 scale, max_batch_size 256, Triton's dynamic batcher on.
Statistics endpoints unrestricted (PyTriton protects them by default; perf_analyzer reads them).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig, TritonSecurityConfig

from bench.peers import common

# mcserve's names: the manifest's ``name`` and that name + "-mc"
EVAL_NAME = str(json.loads((Path(os.environ["BENCH_MODEL_DIR"]) / "manifest.json").read_text())["name"])
MC_NAME = f"{EVAL_NAME}-mc"
MC_SAMPLES = 100
MAX_BATCH = 256
MODEL = common.load_model().eval()
MC_MODEL = common.load_model().train()  # a second copy: dropout on, shared by no eval call


@batch  # type: ignore[misc]
def infer_eval(images: np.ndarray) -> dict[str, Any]:
    probs = common.predict(MODEL, torch.from_numpy(images))
    return {"probabilities": probs.numpy(), "class_id": probs.argmax(dim=-1, keepdim=True).numpy()}


def mc_dropout(x: torch.Tensor, samples: int = MC_SAMPLES) -> dict[str, np.ndarray]:
    """T stochastic passes as one batch of T*B rows (dropout active), reduced over T."""
    batch_size = x.shape[0]
    with torch.inference_mode():
        logits = MC_MODEL(x.reshape(batch_size, -1).repeat(samples, 1))
        probs = torch.softmax(logits, dim=-1).reshape(samples, batch_size, -1)
        mean = probs.mean(dim=0)
        variance = probs.var(dim=0, unbiased=False)
        entropy = -(mean * mean.clamp_min(1e-12).log()).sum(dim=-1)
        expected = -(probs * probs.clamp_min(1e-12).log()).sum(dim=-1).mean(dim=0)
        mutual_information = (entropy - expected).clamp_min(0.0)
    return {
        "mean_probabilities": mean.numpy(),
        "variance": variance.numpy(),
        "mutual_information": mutual_information.unsqueeze(-1).numpy(),
    }


@batch  # type: ignore[misc]
def infer_mc(images: np.ndarray) -> dict[str, Any]:
    return mc_dropout(torch.from_numpy(images))


def main() -> None:
    port = int(sys.argv[1])
    config = TritonConfig(
        http_address="127.0.0.1", http_port=port, grpc_address="127.0.0.1", grpc_port=port + 1, metrics_port=port + 2
    )
    model_config = ModelConfig(max_batch_size=MAX_BATCH, batcher=DynamicBatcher())
    images = [Tensor(name="images", dtype=np.float32, shape=(784,))]
    with Triton(config=config, security_config=TritonSecurityConfig(restricted_endpoints=[])) as triton:
        triton.bind(
            model_name=EVAL_NAME,
            infer_func=infer_eval,
            inputs=images,
            outputs=[
                Tensor(name="probabilities", dtype=np.float32, shape=(10,)),
                Tensor(name="class_id", dtype=np.int64, shape=(1,)),
            ],
            config=model_config,
        )
        triton.bind(
            model_name=MC_NAME,
            infer_func=infer_mc,
            inputs=images,
            outputs=[
                Tensor(name="mean_probabilities", dtype=np.float32, shape=(10,)),
                Tensor(name="variance", dtype=np.float32, shape=(10,)),
                Tensor(name="mutual_information", dtype=np.float32, shape=(1,)),
            ],
            config=model_config,
        )
        triton.serve()


if __name__ == "__main__":
    main()
