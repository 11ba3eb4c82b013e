"""Images at their own shape: a native-resolution encoder's patches (`PatchRecipe` carried out).

Each image is resized to the size its recipe picks for it (aspect ratio kept, within its token budget) with
transformers' pixel operations (`vlmlab.data.pixels.TransformersPixels`: uint8 resize with antialiasing, then the
fused rescale and normalisation), then cut into one row per patch in the order its tower reads them. The patches of
several images are packed end to end (`pack_patches`): no padding to a common size; their grids say where each
image starts and how its patches lie.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache

import torch
from PIL import Image

from vlmlab.data.pixels import TransformersPixels
from vlmlab.models.encoders.base import ImagePreprocessing
from vlmlab.models.encoders.patch_recipe import PatchRecipe


@dataclass(frozen=True)
class ImagePatches:
    """One image's patches [rows x cols x frames, `recipe.patch_dim`] and its grid (frames, rows, cols)."""

    patches: torch.Tensor
    grid: tuple[int, int, int]


@cache
def pixel_operations(recipe: PatchRecipe) -> TransformersPixels:
    """The recipe's resize filter and normalisation as transformers' torchvision backend applies them (the size
    fields of `ImagePreprocessing` are not used: each image's size is its own), built once per recipe."""
    stats = dict(mean=recipe.mean, std=recipe.std, interpolation=recipe.interpolation)
    return TransformersPixels(ImagePreprocessing(height=1, width=1, rescale_factor=recipe.rescale_factor, **stats))


def image_patches(image: Image.Image, recipe: PatchRecipe) -> ImagePatches:
    """`image` as its recipe's patches (pixels as the checkpoint's transformers image processor gives them)."""
    ops = pixel_operations(recipe)
    pixels = ops.load(image)
    height, width = ops.size(pixels)
    size = recipe.resized(height, width)
    if size != (height, width):
        pixels = ops.resize(pixels, size)
    pixels = ops.finish(pixels)  # (3, H, W) float32
    if recipe.layout == "qwen2_vl":
        return ImagePatches(qwen2_vl_patches(pixels, recipe), recipe.grid(height, width))
    return ImagePatches(siglip2_patches(pixels, recipe.patch_size), recipe.grid(height, width))


def qwen2_vl_patches(pixels: torch.Tensor, recipe: PatchRecipe) -> torch.Tensor:
    """[3, H, W] -> [rows x cols, 3 x T x P x P]: the patches of each merge_size x merge_size block together (the
    order the tower's patch merger reads), each patch's values channel, frame (the still image repeated), row,
    column."""
    patch, merge, frames = recipe.patch_size, recipe.merge_size, recipe.temporal_patch_size
    channels, height, width = pixels.shape
    rows, cols = height // patch, width // patch
    blocks = pixels.reshape(channels, rows // merge, merge, patch, cols // merge, merge, patch)
    blocks = blocks.permute(1, 4, 2, 5, 0, 3, 6)  # block row, block col, row in block, col in block, c, y, x
    repeated = blocks.unsqueeze(5).expand(-1, -1, -1, -1, -1, frames, -1, -1)
    return repeated.reshape(rows * cols, channels * frames * patch * patch)


def siglip2_patches(pixels: torch.Tensor, patch: int) -> torch.Tensor:
    """[3, H, W] -> [rows x cols, P x P x 3]: patches row by row, each patch's values row, column, channel."""
    channels, height, width = pixels.shape
    rows, cols = height // patch, width // patch
    grid = pixels.reshape(channels, rows, patch, cols, patch).permute(1, 3, 2, 4, 0)
    return grid.reshape(rows * cols, patch * patch * channels)


def pack_patches(images: Sequence[ImagePatches]) -> tuple[torch.Tensor, torch.Tensor]:
    """The images' patches end to end [sum of patches, patch_dim] and their grids [num_images, 3] (long)."""
    if not images:
        raise ValueError("pack_patches needs at least one image")
    patches = torch.cat([image.patches for image in images])
    return patches, torch.tensor([image.grid for image in images], dtype=torch.long)
