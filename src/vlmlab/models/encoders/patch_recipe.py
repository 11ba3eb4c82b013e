"""A native-resolution encoder's input recipe: how an image keeps its own shape under a token budget.

Fixed-size encoders take every image at one size (`ImagePreprocessing`). Native-resolution ones take each image
resized only as far as its patch budget requires, aspect ratio kept, and cut into patches that run through the tower
as one packed sequence. Two layouts, each its checkpoint processor's:

| layout     | size chosen by                                               | a patch row                           |
|------------|--------------------------------------------------------------|---------------------------------------|
| `qwen2_vl` | `smart_resize`: sides rounded to patch x merge, the area     | channels x time x patch x patch, rows |
|            | within `min_pixels`-`max_pixels` (Qwen2-VL)                  | in 2 x 2 merge order, the image twice |
| `siglip2`  | the largest scale whose patch grid fits `max_num_patches`    | patch x patch x channels, row-major   |
|            | (SigLIP2 NaFlex)                                             |                                       |

`vlmlab.data.native_resolution` carries the recipe out; tests/test_native_resolution.py holds it to each
transformers image processor.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

from vlmlab.models.encoders.base import INTERPOLATIONS

PatchLayout = Literal["qwen2_vl", "siglip2"]
MAX_ASPECT_RATIO = 200  # Qwen2-VL's processor refuses longer strips


@dataclass(frozen=True)
class PatchRecipe:
    """Args:
    layout: `qwen2_vl` or `siglip2` (the table above).
    patch_size: pixels per patch side.
    merge_size: patches per side merged into one token after the tower (Qwen2-VL 2; SigLIP2 1).
    temporal_patch_size: frames per patch (Qwen2-VL 2: a still image is repeated; SigLIP2 1).
    min_pixels, max_pixels: `qwen2_vl`'s pixel range after resizing.
    max_num_patches: `siglip2`'s patch budget.
    mean, std, interpolation, rescale_factor: as in `ImagePreprocessing`.
    square: every image stretched to the largest square of whole tokens within the budget, as a fixed-size
        encoder resizes it, instead of kept at its aspect ratio: the two compared at one tower.
    """

    layout: PatchLayout
    patch_size: int
    merge_size: int
    temporal_patch_size: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    rescale_factor: float = 1 / 255
    min_pixels: int | None = None
    max_pixels: int | None = None
    max_num_patches: int | None = None
    square: bool = False

    def __post_init__(self) -> None:
        if self.interpolation not in INTERPOLATIONS:
            raise ValueError(f"interpolation '{self.interpolation}' is not one of {', '.join(INTERPOLATIONS)}")
        if self.layout == "qwen2_vl":
            if self.min_pixels is None or self.max_pixels is None or self.min_pixels > self.max_pixels:
                raise ValueError(f"the qwen2_vl layout needs min_pixels <= max_pixels, got {self}")
        elif self.layout == "siglip2":
            if not self.max_num_patches or self.merge_size != 1 or self.temporal_patch_size != 1:
                raise ValueError(f"the siglip2 layout needs max_num_patches, merge_size 1, temporal 1, got {self}")
        else:
            raise ValueError(f"unknown patch layout '{self.layout}': qwen2_vl or siglip2")

    @property
    def patch_dim(self) -> int:
        """Values per patch row."""
        return 3 * self.temporal_patch_size * self.patch_size**2

    def resized(self, height: int, width: int) -> tuple[int, int]:
        """The size (height, width) an image of `height` x `width` pixels is resized to."""
        if self.square:
            unit = self.patch_size * self.merge_size
            units = self.max_pixels // unit**2 if self.layout == "qwen2_vl" else self.max_num_patches
            side = math.isqrt(units) * unit
            return side, side
        if self.layout == "qwen2_vl":
            return qwen2_vl_size(height, width, self.patch_size * self.merge_size, self.min_pixels, self.max_pixels)
        return siglip2_size(height, width, self.patch_size, self.max_num_patches)

    def grid(self, height: int, width: int) -> tuple[int, int, int]:
        """(frames, patch rows, patch columns) of an image of `height` x `width` pixels, before resizing."""
        new_height, new_width = self.resized(height, width)
        return 1, new_height // self.patch_size, new_width // self.patch_size


def qwen2_vl_size(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """Qwen2-VL's `smart_resize`: both sides multiples of `factor`, the area within [min_pixels, max_pixels], the
    aspect ratio kept as closely as that allows (same rounding as transformers 5.24)."""
    if max(height, width) / min(height, width) > MAX_ASPECT_RATIO:
        raise ValueError(
            f"an image of {height}x{width} pixels: its aspect ratio is over {MAX_ASPECT_RATIO}, which Qwen2-VL's "
            "processor refuses; crop it"
        )
    rounded_height, rounded_width = round(height / factor) * factor, round(width / factor) * factor
    if rounded_height * rounded_width > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        rounded_height = max(factor, math.floor(height / beta / factor) * factor)
        rounded_width = max(factor, math.floor(width / beta / factor) * factor)
    elif rounded_height * rounded_width < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        rounded_height = math.ceil(height * beta / factor) * factor
        rounded_width = math.ceil(width * beta / factor) * factor
    return rounded_height, rounded_width


def siglip2_size(height: int, width: int, patch_size: int, max_num_patches: int, eps: float = 1e-5) -> tuple[int, int]:
    """SigLIP2's size for `max_num_patches`: the scale found by bisection (to `eps`) whose sides, rounded up to
    whole patches (at least one), give at most that many patches (same search as transformers 5.24)."""

    def side(scale: float, size: int) -> int:
        return int(max(patch_size, math.ceil(size * scale / patch_size) * patch_size))

    low, high = eps / 10, 100.0
    while high - low >= eps:
        scale = (low + high) / 2
        if (side(scale, height) / patch_size) * (side(scale, width) / patch_size) <= max_num_patches:
            low = scale
        else:
            high = scale
    return side(low, height), side(low, width)
