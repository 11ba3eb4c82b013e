"""The `VisionEncoder` interface every backend implements."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn


@dataclass(frozen=True)
class ImagePreprocessing:
    """What an encoder expects of its input: square-or-not size in pixels and per-channel normalisation."""

    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


class VisionEncoder(nn.Module):
    """Maps pixel values [B, C, H, W] to patch features [B, N, output_dim].

    Subclasses build their backbone, set `preprocessing`, implement `forward`, and call
    `_probe_shapes()` at the end of `__init__`: one forward of a blank image tells `num_patches`
    and `output_dim` for any backbone, layer choice and prefix-token policy without special cases.
    """

    preprocessing: ImagePreprocessing
    num_patches: int
    output_dim: int

    def _probe_shapes(self) -> None:
        p = self.preprocessing
        with torch.no_grad():
            features = self.forward(torch.zeros(1, 3, p.height, p.width))
        self.num_patches, self.output_dim = int(features.shape[1]), int(features.shape[2])

    def block_classes(self) -> set[type[nn.Module]]:
        """Transformer block classes, the units that FSDP wraps and activation checkpointing recomputes."""
        raise NotImplementedError
