"""LitServe serving the mcnet artifact at BENCH_MODEL_DIR: ``python bench/peers/litserve_api.py PORT WORKERS``.

One ``LitServer`` with two ``LitAPI``s:

* ``POST /predict``: eval-mode softmax, one request per ``predict`` call (LitServe's default, no batching);
* ``POST /predict/uncertainty``: Monte Carlo dropout (``common.mc_dropout``: dropout on, the input repeated T times
  in one forward pass; mean probabilities, variance, mutual information) with LitServe's dynamic batching on
  (``max_batch_size`` 64, ``batch_timeout`` 5 ms). It takes mcserve's body: ``images`` and ``n_samples``
  (default 100); any other field (``seed``) is ignored.
"""

import sys
from typing import Any

import litserve as ls
import torch

from bench.peers import common


class MCNetAPI(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device: str) -> None:
        self.model = common.load_model()

    def decode_request(self, request: dict) -> torch.Tensor:  # type: ignore[type-arg]  # LitServe reads this hint
        return common.to_tensor(request["images"])

    def predict(self, x: torch.Tensor) -> torch.Tensor:
        return common.predict(self.model, x)

    def encode_response(self, output: torch.Tensor) -> dict[str, Any]:
        return common.encode(output)


MCItem = tuple[torch.Tensor, int]
MCAnswer = tuple[torch.Tensor, torch.Tensor, torch.Tensor]


class MCDropoutAPI(ls.LitAPI):  # type: ignore[misc]
    def setup(self, device: str) -> None:
        self.model = common.load_model()

    def decode_request(self, request: dict) -> MCItem:  # type: ignore[type-arg]
        return common.to_tensor(request["images"]), common.n_samples_of(request)

    def batch(self, inputs: list[MCItem]) -> list[MCItem]:
        return inputs  # requests may differ in images and T: predict groups them

    def predict(self, items: list[MCItem]) -> list[MCAnswer]:
        return common.mc_many(self.model, items)

    def unbatch(self, output: list[MCAnswer]) -> list[MCAnswer]:
        return output

    def encode_response(self, output: MCAnswer) -> dict[str, Any]:
        return common.encode_mc(*output)


def main() -> None:
    port, workers = int(sys.argv[1]), int(sys.argv[2])
    apis = [
        MCNetAPI(api_path="/predict"),
        MCDropoutAPI(
            api_path="/predict/uncertainty", max_batch_size=common.MC_MAX_BATCH, batch_timeout=common.MC_BATCH_DELAY_S
        ),
    ]
    server = ls.LitServer(apis, accelerator="cpu", workers_per_device=workers, timeout=30)
    server.run(host="127.0.0.1", port=port, num_api_servers=1, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
