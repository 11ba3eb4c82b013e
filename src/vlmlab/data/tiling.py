"""LLaVA-NeXT's AnyRes: an image cut into encoder-sized tiles at the grid that suits its size and shape.

The grid is chosen among `grid_pinpoints` (tile rows x columns; x the encoder's image size they are
LLaVA-NeXT's `image_grid_pinpoints` in pixels) as transformers' `select_best_resolution` chooses: the
resolution that keeps the most of the image's pixels, then the one that wastes the least. The image is
resized to fit that resolution (aspect ratio kept), padded with black to it (centred), and cut into
tiles row by row; the whole image stretched to one tile comes first (the base tile).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


def select_best_resolution(size: tuple[int, int], resolutions: Sequence[tuple[int, int]]) -> tuple[int, int]:
    """The (height, width) among `resolutions` for an image of `size` (height, width): the most effective
    pixels (the image downscaled to fit, never counted above its own size), ties to the least waste."""
    height, width = size
    best, best_effective, best_waste = None, 0, math.inf
    for res_height, res_width in resolutions:
        scale = min(res_width / width, res_height / height)
        effective = min(int(width * scale) * int(height * scale), width * height)
        waste = res_width * res_height - effective
        if effective > best_effective or (effective == best_effective and waste < best_waste):
            best, best_effective, best_waste = (res_height, res_width), effective, waste
    if best is None:
        raise ValueError(f"no resolution to choose from for an image of {height}x{width}")
    return best


def fitted_size(size: tuple[int, int], target: tuple[int, int]) -> tuple[int, int]:
    """(height, width) of an image of `size` resized to fit inside `target` with its aspect ratio
    (transformers' `get_patch_output_size`: the short side rounded up)."""
    height, width = size
    target_height, target_width = target
    scale_w, scale_h = target_width / width, target_height / height
    if scale_w < scale_h:
        return min(math.ceil(height * scale_w), target_height), target_width
    return target_height, min(math.ceil(width * scale_h), target_width)


@dataclass(frozen=True)
class Tiling:
    """AnyRes settings: `grid_pinpoints` (tile rows, columns) to choose from and `tile` (pixels per side,
    the encoder's size). `max_tiles` drops the grids of more tiles (the base tile not counted)."""

    grid_pinpoints: tuple[tuple[int, int], ...]
    tile: int
    max_tiles: int | None = None

    def __post_init__(self) -> None:
        grids = tuple((int(r), int(c)) for r, c in self.grid_pinpoints)
        if not grids or any(r < 1 or c < 1 for r, c in grids):
            raise ValueError(
                f"data.anyres.grid_pinpoints={[list(g) for g in self.grid_pinpoints]} needs [rows, cols] pairs >= 1"
            )
        allowed = tuple(g for g in grids if self.max_tiles is None or g[0] * g[1] <= self.max_tiles)
        if not allowed:
            raise ValueError(
                f"data.anyres.max_tiles={self.max_tiles} leaves none of the grids {[list(g) for g in grids]}; raise it"
            )
        object.__setattr__(self, "grid_pinpoints", allowed)

    @property
    def resolutions(self) -> list[tuple[int, int]]:
        """The grids in pixels (height, width): LLaVA-NeXT's `image_grid_pinpoints`."""
        return [(rows * self.tile, cols * self.tile) for rows, cols in self.grid_pinpoints]

    def grid(self, size: tuple[int, int]) -> tuple[int, int]:
        """(rows, cols) of tiles for an image of `size` (height, width)."""
        height, width = select_best_resolution(size, self.resolutions)
        return height // self.tile, width // self.tile


def tiling_from_options(anyres: Mapping[str, Any] | None, tile: int) -> Tiling:
    """The `Tiling` of a `data.anyres` config node (grid_pinpoints, max_tiles) for tiles of `tile` pixels."""
    options = dict(anyres or {})
    if not options.get("grid_pinpoints"):
        raise ValueError("data.image_resize=anyres needs data.anyres.grid_pinpoints (tile grids [rows, cols])")
    return Tiling(tuple(tuple(g) for g in options["grid_pinpoints"]), tile, options.get("max_tiles"))
