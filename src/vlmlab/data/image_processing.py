"""Reading images (`read_image`, the one place an image file is opened) and turning them into the pixel
tensors an encoder expects (its recipe, `ImagePreprocessing`, carried out by `vlmlab.data.pixels`; tiles for
`anyres`)."""

from __future__ import annotations

import io
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from PIL import ExifTags, Image, ImageOps

from vlmlab.data.chat_format import SampleError
from vlmlab.data.native_resolution import image_patches
from vlmlab.data.pixels import pixel_ops
from vlmlab.data.tiling import Tiling, fitted_size, tiling_from_options
from vlmlab.models.encoders.base import ImagePreprocessing, VisionEncoder
from vlmlab.models.encoders.native_resolution import NativeResolutionEncoder
from vlmlab.models.encoders.patch_recipe import PatchRecipe

ResizeMode = Literal["resize", "letterbox", "resize_crop", "anyres"]


DEFAULT_MAX_PIXELS = 64_000_000  # 8000 x 8000: larger images are bad records (data.max_image_pixels)


class ImageLoadError(SampleError):
    """An image that does not exist (`reason` missing_image), cannot be decoded (bad_image), has more pixels than
    allowed (too_large), or lies outside its source's image folder (outside_root)."""


@dataclass(frozen=True)
class ImagePolicy:
    """What may be read: images of at most `max_pixels` pixels, from inside `root` (symbolic links resolved;
    None: anywhere). Both are checked before a pixel is decoded."""

    max_pixels: int = DEFAULT_MAX_PIXELS
    root: str | None = None


ANY_FOLDER = ImagePolicy()  # the default cap, from any folder (images the user names on the command line)


def _inside(path: Path, root: str, where: str) -> None:
    resolved, folder = path.resolve(), Path(root).resolve()
    if not resolved.is_relative_to(folder):
        raise ImageLoadError(
            "outside_root",
            f"{where} resolves to {resolved}, outside its source's image folder {folder}; move it there, or set "
            "data.allow_outside_images=true if the data's author meant it",
        )


def _open(image: str | Path | dict[str, Any], missing_hint: str, bad_hint: str, read: Any, policy: ImagePolicy) -> Any:
    """`read(opened)` of the image at a path, or stored in a Hugging Face `datasets` image dict ({"bytes",
    "path"}), within `policy`; an `ImageLoadError` naming it (and ending with the hint, if given) otherwise."""
    stored = isinstance(image, dict)
    where = f"the image stored for {image.get('path') or 'this row'}" if stored else f"image {image}"
    if not stored and not Path(image).is_file():
        hint = f"; {missing_hint}" if missing_hint else ""
        raise ImageLoadError("missing_image", f"{where} does not exist{hint}")
    if not stored and policy.root is not None:
        _inside(Path(image), policy.root, where)
    try:
        with warnings.catch_warnings():  # Pillow warns above 89M pixels; the cap below is the policy
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            opened = Image.open(io.BytesIO(image["bytes"]) if stored else image)
        with opened:
            pixels = opened.width * opened.height
            if pixels > policy.max_pixels:
                raise ImageLoadError(
                    "too_large",
                    f"{where} is {opened.width}x{opened.height} = {pixels:,} pixels, more than "
                    f"data.max_image_pixels={policy.max_pixels:,}; shrink it, or raise the limit",
                )
            return read(opened)
    except ImageLoadError:
        raise
    except Image.DecompressionBombError as err:  # Pillow's own refusal, above twice its MAX_IMAGE_PIXELS
        raise ImageLoadError("too_large", f"{where} is more than Pillow decodes ({err})") from err
    except Exception as err:  # Pillow's decoders raise many types (OSError, SyntaxError, struct.error, ...)
        hint = f"; {bad_hint}" if bad_hint else ""
        raise ImageLoadError("bad_image", f"{where} cannot be read ({type(err).__name__}: {err}){hint}") from err


# EXIF orientations that turn the image a quarter: its upright height is the stored width
QUARTER_TURNS = (5, 6, 7, 8)


def upright_rgb(image: Image.Image) -> Image.Image:
    """The image as transformers' processors load an image file (`load_image`, `load_image_as_tensor`): turned
    upright by its EXIF orientation, then RGB, any alpha channel dropped."""
    return ImageOps.exif_transpose(image).convert("RGB")


def read_image(
    image: str | Path | dict[str, Any], missing_hint: str = "", bad_hint: str = "", policy: ImagePolicy = ANY_FOLDER
) -> Image.Image:
    """The RGB image at a path or in an HF image dict (`upright_rgb`); an `ImageLoadError` naming it otherwise."""
    return _open(image, missing_hint, bad_hint, upright_rgb, policy)


def image_size(
    image: str | Path | dict[str, Any], missing_hint: str = "", bad_hint: str = "", policy: ImagePolicy = ANY_FOLDER
) -> tuple[int, int]:
    """(height, width) of an image file or stored image, upright as `read_image` gives it, from its header (the
    pixels are not decoded); an `ImageLoadError` as `read_image` raises otherwise."""

    def upright_size(opened: Image.Image) -> tuple[int, int]:
        turned = opened.getexif().get(ExifTags.Base.Orientation) in QUARTER_TURNS
        return (opened.width, opened.height) if turned else (opened.height, opened.width)

    return _open(image, missing_hint, bad_hint, upright_size, policy)


@dataclass
class ProcessedImage:
    """An image as the model takes it: its tiles [k, 3, H, W] (k = 1 unless tiled) and its grid row
    (tile rows, tile columns, original height, original width; 0 rows = untiled), see `vlmlab.models.image_layout`;
    for a native-resolution encoder its patches [n, patch_dim] and grid row (frames, patch rows, patch columns)."""

    pixels: torch.Tensor
    grid: tuple[int, ...]


class ImageProcessor:
    """Turns an image into the encoder's pixels by its recipe (`ImagePreprocessing`: interpolation, short side
    before the crop, normalisation, and whose operations, `vlmlab.data.pixels`) in one of four layouts:

    - `resize` stretches to the encoder's size (SigLIP's processor);
    - `resize_crop` scales the short side to `shortest_edge` and centre-crops (CLIP's, DINOv2's, LLaVA-1.5's
      llava-hf processor, timm's eval transform);
    - `letterbox` first pads to a square with the mean colour (LLaVA-1.5's `pad`, transformers'
      `LlavaImageProcessor(do_pad=True)`), then as `resize_crop`;
    - `anyres` cuts the image into encoder-sized tiles at the grid that suits it, after the whole image
      stretched to one tile, each then as `resize_crop` (LLaVA-NeXT's processor; `tiling` gives the grids).
    """

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
        self.ops = pixel_ops(preprocessing)

    def grid(self, size: tuple[int, int]) -> tuple[int, int, int, int]:
        """The grid row of an image of `size` (height, width), without reading its pixels."""
        rows, cols = self.tiling.grid(size) if self.tiling is not None else (0, 0)
        return rows, cols, size[0], size[1]

    def __call__(self, image: Image.Image) -> ProcessedImage:
        size = (image.height, image.width)
        pixels = self.ops.load(image)
        if self.tiling is not None:
            tiles, (rows, cols) = self._tiles(pixels)
            return ProcessedImage(torch.stack([self._finish(tile) for tile in tiles]), (rows, cols, *size))
        p = self.preprocessing
        if self.mode == "letterbox":
            pixels = self._pad_to_square(pixels)
        if self.mode == "resize":
            return ProcessedImage(self.ops.finish(self.ops.resize(pixels, (p.height, p.width)))[None], self.grid(size))
        return ProcessedImage(self._finish(pixels)[None], self.grid(size))

    def _finish(self, pixels: Any) -> torch.Tensor:
        """`resize_crop`'s steps: the short side to `shortest_edge` (the long side in proportion, rounded down),
        a centre crop to the encoder's size, normalisation."""
        p, ops = self.preprocessing, self.ops
        height, width = ops.size(pixels)
        short, long = sorted((height, width))
        scaled = (p.short_side, int(p.short_side * long / short))
        pixels = ops.resize(pixels, scaled if height <= width else scaled[::-1])
        return ops.finish(ops.center_crop(pixels, (p.height, p.width)))

    def _pad_to_square(self, pixels: Any) -> Any:
        """Centred on a square of the mean colour (as 8-bit values, truncated as LLaVA and transformers do)."""
        height, width = self.ops.size(pixels)
        side = max(height, width)
        left, top = (side - width) // 2, (side - height) // 2
        fill = tuple(int(m * 255) for m in self.preprocessing.mean)
        return self.ops.pad(pixels, [left, top, side - width - left, side - height - top], fill)

    def _tiles(self, pixels: Any) -> tuple[list[Any], tuple[int, int]]:
        """[base, tile (0, 0), tile (0, 1), ...] and the grid: the image fitted into the grid's resolution (aspect
        kept), padded with black (centred) and cut row by row; the base is the whole image stretched to a square
        of `shortest_edge` (LLaVA-NeXT's `_get_image_patches`)."""
        ops, t = self.ops, self.tiling.tile
        size = ops.size(pixels)
        rows, cols = self.tiling.grid(size)
        target = (rows * t, cols * t)
        new_height, new_width = fitted_size(size, target)
        resized = ops.resize(pixels, (new_height, new_width))
        left, top = (target[1] - new_width) // 2, (target[0] - new_height) // 2
        padded = ops.pad(resized, [left, top, target[1] - new_width - left, target[0] - new_height - top], 0)
        side = self.preprocessing.short_side
        base = ops.resize(pixels, (side, side))
        return [base] + [ops.crop(padded, r * t, c * t, t, t) for r in range(rows) for c in range(cols)], (rows, cols)

    @property
    def size_sets_tokens(self) -> bool:
        """Whether an image's token count depends on its size (tiled images): then a blank image stands in at
        the size of the image it replaces, and length estimates read each image's size."""
        return self.tiling is not None

    def blank(self, size: tuple[int, int] | None = None) -> ProcessedImage:
        """A blank image (the mean colour, all zeros after normalisation) for the blind baseline; tiled as
        an image of `size` (height, width) would be, so that it takes as many tokens."""
        p = self.preprocessing
        if self.tiling is None or size is None:
            return ProcessedImage(torch.zeros(1, 3, p.height, p.width), self.grid(size or (p.height, p.width)))
        fill = tuple(int(round(255 * m)) for m in p.mean)
        return self(Image.new("RGB", (size[1], size[0]), fill))


class NativeImageProcessor:
    """Turns an image into a native-resolution encoder's patches at the image's own shape, within the encoder's
    token budget (`PatchRecipe`, carried out by `vlmlab.data.native_resolution`): [n, patch_dim] and the grid row
    (frames, patch rows, patch columns)."""

    size_sets_tokens = True  # as `ImageProcessor.size_sets_tokens`: blanks and length estimates take each size

    def __init__(self, recipe: PatchRecipe) -> None:
        self.recipe = recipe

    def grid(self, size: tuple[int, int]) -> tuple[int, int, int]:
        """The grid row of an image of `size` (height, width), without reading its pixels."""
        return self.recipe.grid(*size)

    def __call__(self, image: Image.Image) -> ProcessedImage:
        patches = image_patches(image, self.recipe)
        return ProcessedImage(patches.patches, patches.grid)

    def blank(self, size: tuple[int, int]) -> ProcessedImage:
        """Zeros (the mean colour after normalisation) in the patches of an image of `size` (height, width)."""
        grid = self.grid(size)
        return ProcessedImage(torch.zeros(grid[0] * grid[1] * grid[2], self.recipe.patch_dim), grid)


def image_processor_for(
    preprocessing: ImagePreprocessing, mode: ResizeMode, anyres: Mapping[str, Any] | None = None
) -> ImageProcessor:
    """The processor of a `data` config's `image_resize` and `anyres` options (grid_pinpoints, max_tiles)."""
    tiling = tiling_from_options(anyres, preprocessing.height) if mode == "anyres" else None
    return ImageProcessor(preprocessing, mode, tiling)


def encoder_image_processor(
    encoder: VisionEncoder | NativeResolutionEncoder, mode: ResizeMode, anyres: Mapping[str, Any] | None = None
) -> ImageProcessor | NativeImageProcessor:
    """The processor of `encoder`'s images: a native-resolution encoder's own (each image at its shape; `mode`
    must not ask for tiles), else `image_processor_for` its recipe and the `data` options."""
    if isinstance(encoder, NativeResolutionEncoder):
        if mode == "anyres":
            raise ValueError(
                "data.image_resize=anyres cuts images into tiles; a native-resolution encoder takes each image whole "
                "at its own shape: leave data.image_resize at its default"
            )
        return NativeImageProcessor(encoder.recipe)
    return image_processor_for(encoder.preprocessing, mode, anyres)
