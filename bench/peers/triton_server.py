"""Triton Inference Server through PyTriton serving the mcnet artifact: ``python ... HTTP_PORT``.

Uses ports HTTP_PORT, +1 (gRPC), +2 (metrics). The request is KServe v2 JSON (``inputs``: images FP32 [B, 784]).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np
import torch
from pytriton.decorators import batch
from pytriton.model_config import ModelConfig, Tensor
from pytriton.triton import Triton, TritonConfig

from bench.peers import common

MODEL = common.load_model()


@batch  # type: ignore[misc]
def infer(images: np.ndarray) -> dict[str, Any]:
    probs = common.predict(MODEL, torch.from_numpy(images))
    return {"probabilities": probs.numpy()}


def main() -> None:
    port = int(sys.argv[1])
    config = TritonConfig(
        http_address="127.0.0.1", http_port=port, grpc_address="127.0.0.1", grpc_port=port + 1, metrics_port=port + 2
    )
    with Triton(config=config) as triton:
        triton.bind(
            model_name="mc",
            infer_func=infer,
            inputs=[Tensor(name="images", dtype=np.float32, shape=(784,))],
            outputs=[Tensor(name="probabilities", dtype=np.float32, shape=(10,))],
            config=ModelConfig(max_batch_size=256),
        )
        triton.serve()


if __name__ == "__main__":
    main()
