"""A ring buffer of negative keys kept as module buffers, so it travels in every checkpoint."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from mmpretrain.errors import ConfigError


class KeyQueue(nn.Module):
    """Queue of L2-normalised keys stored column-wise, (dim, length), like the official MoBY `queue1/queue2`.

    Both the keys and the write pointer are registered buffers: a resumed run continues with the same
    negatives and the same position (lightly's memory bank, by contrast, is not saved).
    """

    def __init__(self, dim: int, length: int) -> None:
        super().__init__()
        if length <= 0 or dim <= 0:
            raise ValueError(f"queue dim and length must be positive, got dim={dim}, length={length}")
        self.register_buffer("keys", F.normalize(torch.randn(dim, length), dim=0))
        self.register_buffer("ptr", torch.zeros(1, dtype=torch.long))

    @property
    def length(self) -> int:
        return self.keys.shape[1]

    def check_batch(self, global_batch: int) -> None:
        """Refuse a global batch that does not divide the queue, as the official code asserts."""
        if self.length % global_batch != 0:
            raise ConfigError(
                f"model.queue_len={self.length} must be divisible by the global batch size {global_batch} "
                "(data.batch_size x devices x nodes); change one of them"
            )

    @torch.no_grad()
    def enqueue(self, keys: torch.Tensor) -> None:
        """Write a (B, dim) batch of keys at the pointer, wrapping around the end of the ring."""
        n = keys.shape[0]
        if n > self.length:
            keys, n = keys[-self.length :], self.length
        start = int(self.ptr.item())
        idx = (torch.arange(n, device=self.keys.device) + start) % self.length
        self.keys[:, idx] = keys.detach().to(self.keys.dtype).T
        self.ptr[0] = (start + n) % self.length
