"""The LitServe side of ``bench_serve.py --part litserve``: the same encoder and preprocessing behind LitServe's
batching. A module of its own because LitServe pickles the API into spawned worker processes."""

from __future__ import annotations

import base64
import io

import litserve as ls
import torch


class EmbedAPI(ls.LitAPI):
    """``{"image": base64}`` -> ``{"embedding": [...]}``, batched by LitServe."""

    def __init__(self, source: str, max_batch: int, max_wait_ms: float) -> None:
        super().__init__(max_batch_size=max_batch, batch_timeout=max_wait_ms / 1000)
        self.source = source

    def setup(self, device: str) -> None:
        from mmpretrain import load_encoder

        self.encoder = load_encoder(self.source, device="cpu", progress=False)

    def decode_request(self, request: dict) -> torch.Tensor:
        from mmpretrain.data import load_rgb

        return self.encoder.preprocess([load_rgb(io.BytesIO(base64.b64decode(request["image"])))])[0]

    def batch(self, inputs: list[torch.Tensor]) -> torch.Tensor:
        return torch.stack(inputs)

    def predict(self, pixels: torch.Tensor) -> torch.Tensor:
        with torch.inference_mode():
            return self.encoder.embed(pixels)

    def unbatch(self, output: torch.Tensor) -> list[torch.Tensor]:
        return list(output)

    def encode_response(self, row: torch.Tensor) -> dict:
        return {"embedding": row.tolist()}


def run(source: str, port: int, max_batch: int, max_wait_ms: float) -> None:
    import sys

    print("litserve: listening", file=sys.stderr, flush=True)
    server = ls.LitServer(EmbedAPI(source, max_batch, max_wait_ms), accelerator="cpu", workers_per_device=1)
    server.run(host="127.0.0.1", port=port, generate_client_file=False, log_level="warning")
