"""Patch features as a square grid: the connectors that pool or shuffle need the 2-D layout back."""

from __future__ import annotations

import math

import torch


def grid_side(num_tokens: int, connector: str) -> int:
    """The side of the square patch grid `num_tokens` forms; an error when it is not square (an encoder
    that keeps its CLS token: set feature_select: default / keep_prefix_tokens: false)."""
    side = math.isqrt(num_tokens)
    if side * side != num_tokens:
        raise ValueError(
            f"{connector} needs a square grid of patch features, got {num_tokens} tokens; drop the encoder's "
            "prefix (CLS) tokens (model.encoder.feature_select=default, or keep_prefix_tokens=false for timm)"
        )
    return side


def checked_out_side(out_side: int, side: int, connector: str) -> int:
    if not 1 <= out_side <= side:
        raise ValueError(f"{connector}: out_side={out_side} must be between 1 and the patch grid's side {side}")
    return out_side


def to_grid(features: torch.Tensor, side: int) -> torch.Tensor:
    """(B, side*side, C) -> (B, C, side, side)."""
    return features.transpose(1, 2).reshape(features.shape[0], features.shape[2], side, side)


def from_grid(grid: torch.Tensor) -> torch.Tensor:
    """(B, C, H, W) -> (B, H*W, C), row-major."""
    return grid.flatten(2).transpose(1, 2)
