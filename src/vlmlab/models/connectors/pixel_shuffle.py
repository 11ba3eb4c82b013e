"""Pixel shuffle (space-to-depth) + projection: Idefics3 / SmolVLM / nanoVLM's token reduction."""

from __future__ import annotations

import torch
from torch import nn

from vlmlab.models.connectors.base import Connector
from vlmlab.models.connectors.grid import from_grid, grid_side, to_grid
from vlmlab.models.connectors.mlp import mlp_layers


class PixelShuffleConnector(Connector):
    """Folds each `scale_factor` x `scale_factor` block of neighbouring patches into one token with
    `scale_factor**2` times the channels (tokens / 4 for a factor of 2, / 16 for 4), then projects it
    to the LLM width. Idefics3 and SmolVLM project with one bias-free linear layer (`depth: 1`)."""

    def __init__(self, in_dim: int, out_dim: int, num_in_tokens: int, scale_factor: int = 2, depth: int = 1) -> None:
        super().__init__(in_dim, out_dim, num_in_tokens)
        self.side = grid_side(num_in_tokens, "PixelShuffleConnector")
        if scale_factor < 1 or self.side % scale_factor:
            raise ValueError(
                f"PixelShuffleConnector: the {self.side}x{self.side} patch grid does not split into "
                f"{scale_factor}x{scale_factor} blocks; choose a scale_factor that divides {self.side}"
            )
        self.scale_factor = scale_factor
        self.unshuffle = nn.PixelUnshuffle(scale_factor)
        self.proj = mlp_layers(in_dim * scale_factor**2, out_dim, depth, first_bias=depth > 1)

    @property
    def num_out_tokens(self) -> int:
        return (self.side // self.scale_factor) ** 2

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        folded = from_grid(self.unshuffle(to_grid(features, self.side)))  # (B, N / r^2, C * r^2)
        return self.proj(folded)
