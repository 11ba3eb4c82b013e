"""Downsampling connectors: average pooling + MLP, and Honeybee's C-Abstractor."""

from __future__ import annotations

from functools import partial

import torch
from timm.layers import LayerNorm2d
from timm.models.regnet import RegStage
from torch import nn

from vlmlab.models.connectors.base import Connector
from vlmlab.models.connectors.grid import checked_out_side, from_grid, grid_side, to_grid
from vlmlab.models.connectors.mlp import mlp_layers


class AvgPoolConnector(Connector):
    """Averages the patch grid down to `out_side` x `out_side` tokens, then an MLP (LLaVA's mlp2x_gelu by
    default) maps them to the LLM width."""

    def __init__(self, in_dim: int, out_dim: int, num_in_tokens: int, out_side: int = 12, depth: int = 2) -> None:
        super().__init__(in_dim, out_dim, num_in_tokens)
        self.side = grid_side(num_in_tokens, "AvgPoolConnector")
        self.out_side = checked_out_side(out_side, self.side, "AvgPoolConnector")
        self.pool = nn.AdaptiveAvgPool2d(out_side)
        self.proj = mlp_layers(in_dim, out_dim, depth)

    @property
    def num_out_tokens(self) -> int:
        return self.out_side**2

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(from_grid(self.pool(to_grid(features, self.side))))


class CAbstractorConnector(Connector):
    """Honeybee's C-Abstractor (Cha et al. 2024): a RegNet stage of `depth` blocks on the patch grid,
    adaptive average pooling to `out_side` x `out_side`, another RegNet stage, then an MLP of
    `mlp_depth` layers. Convolutions keep local context that plain pooling averages away. Defaults
    are the paper's: 144 tokens (12 x 12), depth 3, width `hidden_dim` (null = the LLM width), SiLU
    and LayerNorm2d in timm's RegNet blocks."""

    def __init__(
        self,
        in_dim: int,
        out_dim: int,
        num_in_tokens: int,
        out_side: int = 12,
        depth: int = 3,
        hidden_dim: int | None = None,
        mlp_depth: int = 2,
    ) -> None:
        super().__init__(in_dim, out_dim, num_in_tokens)
        self.side = grid_side(num_in_tokens, "CAbstractorConnector")
        self.out_side = checked_out_side(out_side, self.side, "CAbstractorConnector")
        hidden = hidden_dim or out_dim
        stage = partial(RegStage, stride=1, dilation=1, act_layer=nn.SiLU, norm_layer=LayerNorm2d)
        self.before = stage(depth, in_dim, hidden)
        self.pool = nn.AdaptiveAvgPool2d(out_side)
        self.after = stage(depth, hidden, hidden)
        self.readout = mlp_layers(hidden, out_dim, mlp_depth)

    @property
    def num_out_tokens(self) -> int:
        return self.out_side**2

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        grid = self.after(self.pool(self.before(to_grid(features, self.side))))
        return self.readout(from_grid(grid))
