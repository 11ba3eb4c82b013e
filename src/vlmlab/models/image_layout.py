"""Where each image's tokens go: one image = one tile, or LLaVA-NeXT's AnyRes tiles arranged in a grid.

An image's grid is a row of `image_grids` ([num_images, 4] long: tile rows, tile columns, original
height, original width; 0 rows = an untiled image). A tiled image's tiles are [base, tile(0,0), tile(0,1),
...]: the whole image resized to one tile, then the grid row by row (`vlmlab.data.tiling`). Its tokens are
LLaVA-NeXT's `spatial_unpad` layout: the base tile's tokens, then the grid's tokens laid out as one
feature map ([rows * m, cols * m], with m x m tokens per tile), cropped to the original aspect ratio
(the padding the resize added is dropped), row by row, each row followed by the learned `image_newline`
token when the model has one. An untiled image is its tile's tokens (then one `image_newline`, as
LLaVA-NeXT does for an image of one tile).

`ImageTokenLayout.count` is the one formula the data pipeline (expanding `<image>`) and the merge share;
`tile_count` the one for tiles per image. Images of a native-resolution encoder are not tiles: their grid rows and
token counts are `NativeTokenLayout`'s.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import torch


def tokens_side(tokens_per_tile: int) -> int:
    """m for m x m tokens per tile; tiled images need a connector whose output is a square grid."""
    side = math.isqrt(tokens_per_tile)
    if side * side != tokens_per_tile:
        raise ValueError(
            f"tiled images (data.image_resize=anyres) lay each tile's tokens on a square grid, but the connector "
            f"gives {tokens_per_tile} tokens per tile; use a connector whose tokens form a square (mlp, pixel "
            "shuffle, pooling) or another image_resize"
        )
    return side


def unpadded_size(rows: int, cols: int, height: int, width: int) -> tuple[int, int]:
    """The feature map of `rows` x `cols` tokens (a padded, resized image of `height` x `width` pixels)
    without the rows or columns that only cover the padding: LLaVA-NeXT's `unpad_image`, same rounding."""
    if width / height > cols / rows:  # wider than the grid: padding above and below
        new_rows = int(round(height * (cols / width), 7))
        return rows - 2 * ((rows - new_rows) // 2), cols
    new_cols = int(round(width * (rows / height), 7))
    return rows, cols - 2 * ((cols - new_cols) // 2)


@dataclass(frozen=True)
class ImageTokenLayout:
    """The model's side of the layout: tokens per tile (the connector's output) and whether a learned
    `image_newline` token ends each row."""

    tokens_per_tile: int
    newline: bool = False

    def count(self, grid: Sequence[int] | torch.Tensor) -> int:
        """Image tokens of one image with grid row (rows, cols, height, width)."""
        rows, cols, height, width = (int(v) for v in grid)
        if rows == 0:
            return self.tokens_per_tile + int(self.newline)
        side = tokens_side(self.tokens_per_tile)
        map_rows, map_cols = unpadded_size(rows * side, cols * side, height, width)
        return self.tokens_per_tile + map_rows * (map_cols + int(self.newline))


@dataclass(frozen=True)
class NativeTokenLayout:
    """A native-resolution encoder's side (`vlmlab.models.encoders.native_resolution`): an image's grid row is
    (frames, patch rows, patch columns), every `patches_per_token` patches give one token (Qwen2-VL's 2 x 2
    merger: 4), at most `max_tokens` per image (its budget: the count for length estimates before an image's size
    is known)."""

    patches_per_token: int
    max_tokens: int

    def counts(self, grids: torch.Tensor) -> torch.Tensor:
        """Image tokens of each image of grid rows [num_images, 3] (frames, rows, cols)."""
        return grids.prod(-1) // self.patches_per_token

    def count(self, grid: Sequence[int] | torch.Tensor) -> int:
        """Image tokens of one image with grid row (frames, rows, cols)."""
        return int(self.counts(torch.as_tensor(grid).view(1, 3))[0])

    def token_grids(self, grids: torch.Tensor) -> torch.Tensor:
        """The tokens' own grids [num_images, 3] (frames, rows, cols after merging, row-major as the tokens come):
        where M-RoPE places them."""
        side = math.isqrt(self.patches_per_token)
        return torch.stack([grids[:, 0], grids[:, 1] // side, grids[:, 2] // side], dim=1)


def tile_count(grid: Sequence[int] | torch.Tensor) -> int:
    """Tiles (encoder inputs) of one image with grid row (rows, cols, ...): 1 when untiled."""
    rows, cols = int(grid[0]), int(grid[1])
    return 1 if rows == 0 else 1 + rows * cols


def arrange_image_tokens(
    tile_tokens: torch.Tensor, image_grids: torch.Tensor | None, newline: torch.Tensor | None
) -> torch.Tensor:
    """The image tokens of a batch in placeholder order, [sum of counts, d].

    `tile_tokens` ([num_tiles, M, d], the connector's output for every tile, images in order) is split per
    image by `image_grids` (None: every image is one tile); `newline` ([d] or None) is `image_newline`.
    """
    if image_grids is None or not bool(image_grids[:, 0].any()):  # every image is one tile
        if newline is None:
            return tile_tokens.flatten(0, 1)
        row_end = newline.to(tile_tokens.dtype).expand(tile_tokens.shape[0], 1, -1)
        return torch.cat([tile_tokens, row_end], dim=1).flatten(0, 1)
    sizes = [tile_count(grid) for grid in image_grids.tolist()]
    if sum(sizes) != tile_tokens.shape[0]:
        raise ValueError(f"image_grids describe {sum(sizes)} tiles but the batch holds {tile_tokens.shape[0]}")
    images = []
    for tokens, grid in zip(torch.split(tile_tokens, sizes), image_grids.tolist()):
        rows, cols, height, width = grid
        base, dim = tokens[0], tokens.shape[-1]
        if rows == 0:
            images.append(base if newline is None else torch.cat([base, newline[None].to(base.dtype)]))
            continue
        side = tokens_side(tokens.shape[1])
        # [rows*cols, m*m, d] -> [rows, cols, m, m, d] -> [rows, m, cols, m, d] -> feature map [rows*m, cols*m, d]
        grid_map = tokens[1:].reshape(rows, cols, side, side, dim).permute(0, 2, 1, 3, 4)
        grid_map = grid_map.reshape(rows * side, cols * side, dim)
        keep_rows, keep_cols = unpadded_size(rows * side, cols * side, height, width)
        top, left = (rows * side - keep_rows) // 2, (cols * side - keep_cols) // 2
        grid_map = grid_map[top : top + keep_rows, left : left + keep_cols]
        if newline is not None:
            row_end = newline.to(grid_map.dtype).expand(keep_rows, 1, dim)
            grid_map = torch.cat([grid_map, row_end], dim=1)
        images.append(torch.cat([base, grid_map.reshape(-1, dim)]))
    return torch.cat(images)


def base_tile_indices(image_grids: torch.Tensor | None, num_tiles: int) -> torch.Tensor:
    """The index of each image's base tile (the whole image) among `num_tiles` tiles."""
    if image_grids is None:
        return torch.arange(num_tiles)
    sizes = torch.where(image_grids[:, 0] == 0, 1, 1 + image_grids[:, 0] * image_grids[:, 1])
    return torch.cumsum(sizes, 0) - sizes
