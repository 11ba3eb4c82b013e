"""No connector: the encoder's tokens go to the LLM as they are. For a tower that ends in its own projection to the
LLM's width (Qwen2-VL's 2 x 2 patch merger), as the published model has it."""

from __future__ import annotations

import torch

from vlmlab.models.connectors.base import Connector


class IdentityConnector(Connector):
    def __init__(self, in_dim: int, out_dim: int, num_in_tokens: int) -> None:
        super().__init__(in_dim, out_dim, num_in_tokens)
        if in_dim != out_dim:
            raise ValueError(
                f"model/connector=identity passes the encoder's features on unchanged, but they are {in_dim} wide "
                f"and the LLM's embeddings {out_dim}; use a projecting connector (linear, mlp2x_gelu)"
            )

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return features
