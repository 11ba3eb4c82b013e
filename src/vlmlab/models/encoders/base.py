"""The `VisionEncoder` interface every backend implements."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode


def feature_layers(feature_layer: int | Sequence[int]) -> list[int]:
    """The layer indices to take features from: one, or several whose features are concatenated."""
    layers = [feature_layer] if isinstance(feature_layer, int) else [int(i) for i in feature_layer]
    if not layers:
        raise ValueError("feature_layer is an empty list: name at least one layer")
    return layers


INTERPOLATIONS = ("nearest", "box", "bilinear", "hamming", "bicubic", "lanczos")
BACKENDS = ("transformers", "timm")


@dataclass(frozen=True)
class ImagePreprocessing:
    """An encoder's input recipe: what its checkpoint's own processor does to an image (`vlmlab.data.pixels`
    carries it out).

    Args:
        height, width: the encoder's input size in pixels (after any centre crop).
        mean, std: per-channel normalisation of the pixel values times `rescale_factor`.
        interpolation: the filter of every resize (`INTERPOLATIONS`); vlmlab's random-weight presets use
            `bilinear`, CLIP, SigLIP, DINOv2 and the LLaVA processors `bicubic`.
        shortest_edge: the short side an image is scaled to before a centre crop to `height` x `width`
            (transformers' `size.shortest_edge`, 256 for DINOv2's 224 px crop; timm's input size / crop_pct);
            None: min(height, width), a crop that only trims the long side.
        backend: whose preprocessing is reproduced: `transformers` (its default, torchvision image processors:
            the uint8 image resized by torchvision) or `timm` (its eval transform: the PIL image resized by PIL).
        rescale_factor: pixel values (0-255) are multiplied by it before normalisation.
    """

    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str = "bilinear"
    shortest_edge: int | None = None
    backend: str = "transformers"
    rescale_factor: float = 1 / 255

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation '{self.interpolation}' is not one of {', '.join(INTERPOLATIONS)}")
        if self.backend not in BACKENDS:
            raise ValueError(f"preprocessing backend '{self.backend}' is not one of {', '.join(BACKENDS)}")
        if self.shortest_edge is not None and self.shortest_edge < min(self.height, self.width):
            raise ValueError(
                f"shortest_edge={self.shortest_edge} is smaller than the {self.height}x{self.width} crop it is cut to"
            )

    @property
    def short_side(self) -> int:
        """The short side before the centre crop (`shortest_edge`, or the crop's own)."""
        return self.shortest_edge or min(self.height, self.width)


class VisionEncoder(nn.Module):
    """Maps pixel values [B, C, H, W] to patch features [B, N, output_dim].

    Subclasses build their backbone, set `preprocessing`, implement `forward`, and call
    `_probe_shapes()` at the end of `__init__`: one forward of a blank image tells `num_patches`
    and `output_dim` for any backbone, layer choice and prefix-token policy without special cases.
    """

    preprocessing: ImagePreprocessing
    num_patches: int
    output_dim: int
    flops_per_image: int  # forward FLOPs of one image (matmuls, convolutions, attention), for MFU

    def _probe_shapes(self) -> None:
        p = self.preprocessing
        # The math attention kernel is made of matmuls that the FLOP counter sees (it does not know the
        # CPU's fused kernel); only the shapes and the count are kept from this forward.
        with torch.no_grad(), sdpa_kernel(SDPBackend.MATH), FlopCounterMode(display=False) as counter:
            features = self.forward(torch.zeros(1, 3, p.height, p.width))
        self.num_patches, self.output_dim = int(features.shape[1]), int(features.shape[2])
        self.flops_per_image = int(counter.get_total_flops())

    def block_classes(self) -> set[type[nn.Module]]:
        """Transformer block classes, the units that FSDP wraps and activation checkpointing recomputes."""
        raise NotImplementedError


class FusedVisionEncoder(VisionEncoder):
    """Several encoders side by side, their features concatenated per patch (Prismatic's DINOv2 +
    SigLIP: `output_dim` is the sum of theirs). They must give the same patch count.

    It takes images prepared for the first encoder and converts them for each of the others (its
    size, its normalisation), so the data pipeline prepares one tensor per image as for any encoder.
    """

    def __init__(self, encoders: Sequence[VisionEncoder] | Mapping[str, VisionEncoder]) -> None:
        """`encoders`: a list, or a mapping name -> encoder (its order is kept), as the YAML gives it."""
        super().__init__()
        encoders = list(encoders.values()) if isinstance(encoders, Mapping) else list(encoders)
        if len(encoders) < 2:
            raise ValueError(f"FusedVisionEncoder needs at least two encoders, got {len(encoders)}")
        self.model = nn.ModuleList(encoders)  # `model`: the backbone, as for every encoder (LoRA finds it)
        self.preprocessing = encoders[0].preprocessing
        counts = [e.num_patches for e in encoders]
        if len(set(counts)) > 1:
            raise ValueError(
                f"FusedVisionEncoder: the encoders give {counts} patches; set their image sizes so that the "
                "patch grids match (e.g. DINOv2 and SigLIP with patch 14 both at 384 px: 729)"
            )
        self._probe_shapes()

    def _for(self, encoder: VisionEncoder, pixel_values: torch.Tensor) -> torch.Tensor:
        """`pixel_values` (prepared for the first encoder) as `encoder` expects them."""
        ours, theirs = self.preprocessing, encoder.preprocessing
        if theirs == ours:
            return pixel_values

        def stats(values: tuple[float, ...]) -> torch.Tensor:
            return torch.tensor(values, dtype=pixel_values.dtype, device=pixel_values.device).view(1, 3, 1, 1)

        raw = pixel_values * stats(ours.std) + stats(ours.mean)
        if (theirs.height, theirs.width) != (ours.height, ours.width):
            raw = nn.functional.interpolate(
                raw, size=(theirs.height, theirs.width), mode="bicubic", align_corners=False
            )
        return (raw - stats(theirs.mean)) / stats(theirs.std)

    def forward(self, pixel_values: torch.Tensor) -> torch.Tensor:
        return torch.cat([encoder(self._for(encoder, pixel_values)) for encoder in self.model], dim=-1)

    def block_classes(self) -> set[type[nn.Module]]:
        return set().union(*(encoder.block_classes() for encoder in self.model))
