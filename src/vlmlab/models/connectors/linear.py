"""A single linear projection (LLaVA-1.0)."""

from __future__ import annotations

import torch
from torch import nn

from vlmlab.models.connectors.base import Connector


class LinearConnector(Connector):
    def __init__(self, in_dim: int, out_dim: int, num_in_tokens: int) -> None:
        super().__init__(in_dim, out_dim, num_in_tokens)
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)  # (B, N, in_dim) -> (B, N, out_dim)
