"""The `Connector` contract: the builder injects the three dimensions, the class reports its output length."""

from __future__ import annotations

import math

import torch
from torch import nn


class Connector(nn.Module):
    """Maps [B, num_in_tokens, in_dim] encoder features to [B, num_out_tokens, out_dim] LLM embeddings.

    `in_dim` (the encoder's feature size), `out_dim` (the LLM's hidden size) and `num_in_tokens` (the
    encoder's patch count) are passed by the model builder; a connector's YAML only holds its own
    options. A token-reducing connector overrides `num_out_tokens`; the data pipeline expands each
    `<image>` placeholder into that many image tokens.
    """

    def __init__(self, in_dim: int, out_dim: int, num_in_tokens: int) -> None:
        super().__init__()
        self.in_dim = in_dim
        self.out_dim = out_dim
        self.num_in_tokens = num_in_tokens

    @property
    def num_out_tokens(self) -> int:
        return self.num_in_tokens

    def add_image_newline(self) -> None:
        """LLaVA-NeXT's learned `image_newline` token (`model.image_newline: true`), which ends each row of a
        tiled image's tokens (`vlmlab.models.image_layout`). It is a parameter of the connector, so it trains
        and freezes with it; initialised as LLaVA-NeXT does (normal, std 1/sqrt(out_dim))."""
        self.image_newline = nn.Parameter(torch.randn(self.out_dim) / math.sqrt(self.out_dim))
