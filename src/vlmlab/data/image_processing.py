"""Reading images (`read_image`, the one place an image file is opened) and turning them into the pixel
tensors an encoder expects (size and normalisation from the encoder; tiles for `anyres`)."""

from __future__ import annotations

import io
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from vlmlab.data.chat_format import SampleError
from vlmlab.data.tiling import Tiling, tiling_from_options
from vlmlab.models.encoders.base import ImagePreprocessing

ResizeMode = Literal["resize", "letterbox", "resize_crop", "anyres"]


class ImageLoadError(SampleError):
    """An image that does not exist (`reason` missing_image) or cannot be decoded (bad_image)."""


def _open(image: str | Path | dict[str, Any], missing_hint: str, bad_hint: str, read: Any) -> Any:
    """`read(opened)` of the image at a path, or stored in a Hugging Face `datasets` image dict ({"bytes",
    "path"}); an `ImageLoadError` naming it (and ending with the hint, if given) otherwise."""
    stored = isinstance(image, dict)
    where = f"the image stored for {image.get('path') or 'this row'}" if stored else f"image {image}"
    if not stored and not Path(image).is_file():
        hint = f"; {missing_hint}" if missing_hint else ""
        raise ImageLoadError("missing_image", f"{where} does not exist{hint}")
    try:
        with Image.open(io.BytesIO(image["bytes"]) if stored else image) as opened:
            return read(opened)
    except (OSError, ValueError, TypeError) as err:
        hint = f"; {bad_hint}" if bad_hint else ""
        raise ImageLoadError("bad_image", f"{where} cannot be read ({err}){hint}") from err


def read_image(image: str | Path | dict[str, Any], missing_hint: str = "", bad_hint: str = "") -> Image.Image:
    """The RGB image at a path or in an HF image dict; an `ImageLoadError` naming it otherwise."""
    return _open(image, missing_hint, bad_hint, lambda opened: opened.convert("RGB"))


def image_size(image: str | Path | dict[str, Any], missing_hint: str = "", bad_hint: str = "") -> tuple[int, int]:
    """(height, width) of an image file or stored image, from its header (the pixels are not decoded); an
    `ImageLoadError` as `read_image` raises otherwise."""
    return _open(image, missing_hint, bad_hint, lambda opened: (opened.height, opened.width))


@dataclass
class ProcessedImage:
    """An image as the model takes it: its tiles [k, 3, H, W] (k = 1 unless tiled) and its grid row
    (tile rows, tile columns, original height, original width; 0 rows = untiled), see `vlmlab.models.image_layout`."""

    pixels: torch.Tensor
    grid: tuple[int, int, int, int]


class ImageProcessor:
    """`resize` stretches to the encoder's size; `letterbox` pads to a square with the mean colour
    first (LLaVA-1.5's `pad`); `resize_crop` scales the short side and centre-crops; `anyres` cuts the
    image into encoder-sized tiles at the grid that suits it, after the whole image stretched to one tile
    (LLaVA-NeXT, `vlmlab.data.tiling`; `tiling` gives the grids)."""

    def __init__(self, preprocessing: ImagePreprocessing, mode: ResizeMode = "resize", tiling: Tiling | None = None):
        if mode not in get_args(ResizeMode):
            raise ValueError(f"image resize mode '{mode}' is not one of {', '.join(get_args(ResizeMode))}")
        if mode == "anyres" and tiling is None:
            raise ValueError("image_resize=anyres needs its tile grids (data.anyres.grid_pinpoints)")
        if mode == "anyres" and preprocessing.height != preprocessing.width:
            raise ValueError(
                f"image_resize=anyres cuts square tiles, but the encoder takes {preprocessing.height}x"
                f"{preprocessing.width} images"
            )
        self.preprocessing = preprocessing
        self.mode = mode
        self.tiling = tiling if mode == "anyres" else None

    def grid(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """The grid row of an image of `size` (height, width), without reading its pixels."""
        rows, cols = self.tiling.grid(size) if self.tiling is not None else (0, 0)
        return rows, cols, size[0], size[1]

    def __call__(self, image: Image.Image) -> ProcessedImage:
        image = image.convert("RGB")
        size = (image.height, image.width)
        if self.tiling is None:
            return ProcessedImage(self._one_tile(image)[None], self.grid(size))
        pixels = F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True)
        p = self.preprocessing
        base = F.resize(pixels, [p.height, p.width], antialias=True)
        tiles, (rows, cols) = self.tiling.tiles(pixels, base)
        return ProcessedImage(F.normalize(tiles, mean=list(p.mean), std=list(p.std)), (rows, cols, *size))

    def _one_tile(self, image: Image.Image) -> torch.Tensor:
        p = self.preprocessing
        if self.mode == "letterbox":
            side = max(image.size)
            fill = tuple(int(round(255 * m)) for m in p.mean)
            square = Image.new("RGB", (side, side), fill)
            square.paste(image, ((side - image.width) // 2, (side - image.height) // 2))
            image = square
        pixels = F.to_dtype(F.pil_to_tensor(image), torch.float32, scale=True)  # (3, h, w) in [0, 1]
        if self.mode == "resize_crop":
            pixels = F.resize(pixels, min(p.height, p.width), antialias=True)
            pixels = F.center_crop(pixels, [p.height, p.width])
        else:
            pixels = F.resize(pixels, [p.height, p.width], antialias=True)
        return F.normalize(pixels, mean=list(p.mean), std=list(p.std))

    def blank(self, size: tuple[int, int] | None = None) -> ProcessedImage:
        """A blank image (the mean colour, all zeros after normalisation) for the blind baseline; tiled as
        an image of `size` (height, width) would be, so that it takes as many tokens."""
        p = self.preprocessing
        if self.tiling is None or size is None:
            return ProcessedImage(torch.zeros(1, 3, p.height, p.width), self.grid(size or (p.height, p.width)))
        fill = tuple(int(round(255 * m)) for m in p.mean)
        return self(Image.new("RGB", (size[1], size[0]), fill))


def image_processor_for(
    preprocessing: ImagePreprocessing, mode: ResizeMode, anyres: Mapping[str, Any] | None = None
) -> ImageProcessor:
    """The processor of a `data` config's `image_resize` and `anyres` options (grid_pinpoints, max_tiles)."""
    tiling = tiling_from_options(anyres, preprocessing.height) if mode == "anyres" else None
    return ImageProcessor(preprocessing, mode, tiling)
