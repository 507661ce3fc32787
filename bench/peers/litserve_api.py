"""LitServe serving the mcnet artifact at BENCH_MODEL_DIR: ``python bench/peers/litserve_api.py PORT WORKERS``."""

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


def main() -> None:
    port, workers = int(sys.argv[1]), int(sys.argv[2])
    server = ls.LitServer(MCNetAPI(), accelerator="cpu", workers_per_device=workers, timeout=30)
    server.run(host="127.0.0.1", port=port, num_api_servers=1, log_level="warning", generate_client_file=False)


if __name__ == "__main__":
    main()
