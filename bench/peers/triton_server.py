"""Triton Inference Server through PyTriton serving the mcnet artifact: ``python ... HTTP_PORT [INSTANCES]``.

Uses ports HTTP_PORT, +1 (gRPC), +2 (metrics). Requests are KServe v2 JSON (``inputs``: images FP32 [B, 784]).
Two models, both behind Triton's dynamic batcher:

* ``mc``: eval-mode softmax -> ``probabilities`` FP32 [10] (max_batch_size 256);
* ``mc_dropout``: Monte Carlo dropout (``common.mc_dropout``: dropout on, the input repeated T times in one forward
  pass) -> ``mean_probabilities`` FP32 [10], ``variance`` FP32 [10], ``mutual_information`` FP32 [1]
  (max_batch_size 64). T is the request parameter ``n_samples`` (v2 ``"parameters": {"n_samples": 100}``, the
  same field mcserve's body has), 100 when absent; the batch the batcher hands over is split by T, so the infer
  function takes PyTriton's list of requests rather than ``@batch``'s concatenated arrays.

INSTANCES (default 1) model instances per model: PyTriton's way to run several infer functions at once (bench http
passes its ``--workers``).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch
from pytriton.decorators import batch
from pytriton.model_config import DynamicBatcher, ModelConfig, Tensor
from pytriton.proxy.types import Request
from pytriton.triton import Triton, TritonConfig

from bench.peers import common

MODEL = common.load_model()


@batch  # type: ignore[misc]
def infer(images: np.ndarray) -> dict[str, Any]:
    probs = common.predict(MODEL, torch.from_numpy(images))
    return {"probabilities": probs.numpy()}


def infer_mc(requests: list[Request]) -> list[dict[str, np.ndarray]]:
    items = [(torch.from_numpy(r["images"]), common.n_samples_of(r.parameters or {})) for r in requests]
    return [
        {"mean_probabilities": m.numpy(), "variance": v.numpy(), "mutual_information": u.unsqueeze(-1).numpy()}
        for m, v, u in common.mc_many(MODEL, items)
    ]


def main() -> None:
    port = int(sys.argv[1])
    instances = int(sys.argv[2]) if len(sys.argv) > 2 else 1
    config = TritonConfig(
        http_address="127.0.0.1", http_port=port, grpc_address="127.0.0.1", grpc_port=port + 1, metrics_port=port + 2
    )
    images = [Tensor(name="images", dtype=np.float32, shape=(784,))]
    with Triton(config=config) as triton:
        triton.bind(
            model_name="mc",
            infer_func=[infer] * instances,
            inputs=images,
            outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(10,))],
            config=ModelConfig(max_batch_size=256),
        )
        triton.bind(
            model_name="mc_dropout",
            infer_func=[infer_mc] * instances,
            inputs=images,
            outputs=[
                Tensor(name="mean_probabilities", dtype=np.float32, shape=(10,)),
                Tensor(name="variance", dtype=np.float32, shape=(10,)),
                Tensor(name="mutual_information", dtype=np.float32, shape=(1,)),
            ],
            config=ModelConfig(max_batch_size=common.MC_MAX_BATCH, batcher=DynamicBatcher()),
        )
        triton.serve()


if __name__ == "__main__":
    main()
