"""An MLP projector; depth 2 with GELU is LLaVA-1.5's `mlp2x_gelu`."""

from __future__ import annotations

import torch
from torch import nn

from vlmlab.models.connectors.base import Connector


def mlp_layers(in_dim: int, out_dim: int, depth: int, first_bias: bool = True) -> nn.Sequential:
    """`depth` linear layers with GELU between them: in_dim -> out_dim, then out_dim -> out_dim."""
    if depth < 1:
        raise ValueError(f"an MLP projection needs depth >= 1, got {depth}")
    layers: list[nn.Module] = [nn.Linear(in_dim, out_dim, bias=first_bias)]
    for _ in range(depth - 1):
        layers += [nn.GELU(), nn.Linear(out_dim, out_dim)]
    return nn.Sequential(*layers)


class MLPConnector(Connector):
    """`depth` linear layers with GELU between them; the first maps in_dim -> out_dim, the rest out_dim -> out_dim."""

    def __init__(self, in_dim: int, out_dim: int, num_in_tokens: int, depth: int = 2) -> None:
        super().__init__(in_dim, out_dim, num_in_tokens)
        self.layers = mlp_layers(in_dim, out_dim, depth)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.layers(features)  # (B, N, in_dim) -> (B, N, out_dim)
