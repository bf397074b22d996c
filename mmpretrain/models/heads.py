"""MLP heads shared by the self-supervised methods."""

from __future__ import annotations

from torch import nn


class MLPHead(nn.Sequential):
    """Linear → BatchNorm1d → ReLU → Linear, MoBY's projector and predictor (biases on, no output norm)."""

    def __init__(self, in_dim: int, hidden_dim: int, out_dim: int) -> None:
        super().__init__(
            nn.Linear(in_dim, hidden_dim),
            nn.BatchNorm1d(hidden_dim),
            nn.ReLU(inplace=True),
            nn.Linear(hidden_dim, out_dim),
        )
