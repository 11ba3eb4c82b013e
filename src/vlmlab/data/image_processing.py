"""Reading images (`read_image`, the one place an image file is opened) and turning them into the pixel
tensors an encoder expects (size and normalisation from the encoder)."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any, Literal, get_args

import torch
from PIL import Image
from torchvision.transforms.v2 import functional as F

from vlmlab.data.chat_format import SampleError
from vlmlab.models.encoders.base import ImagePreprocessing

ResizeMode = Literal["resize", "letterbox", "resize_crop"]


class ImageLoadError(SampleError):
    """An image that does not exist (`reason` missing_image) or cannot be decoded (bad_image)."""


def read_image(image: str | Path | dict[str, Any], missing_hint: str = "", bad_hint: str = "") -> Image.Image:
    """The RGB image at a path, or stored in a Hugging Face `datasets` image dict ({"bytes", "path"}); an
    `ImageLoadError` naming it (and ending with the hint, if given) otherwise."""
    stored = isinstance(image, dict)
    where = f"the image stored for {image.get('path') or 'this row'}" if stored else f"image {image}"
    if not stored and not Path(image).is_file():
        hint = f"; {missing_hint}" if missing_hint else ""
        raise ImageLoadError("missing_image", f"{where} does not exist{hint}")
    try:
        with Image.open(io.BytesIO(image["bytes"]) if stored else image) as opened:
            return opened.convert("RGB")
    except (OSError, ValueError, TypeError) as err:
        hint = f"; {bad_hint}" if bad_hint else ""
        raise ImageLoadError("bad_image", f"{where} cannot be read ({err}){hint}") from err


class ImageProcessor:
    """`resize` stretches to the encoder's size; `letterbox` pads to a square with the mean colour
    first (LLaVA-1.5's `pad`); `resize_crop` scales the short side and centre-crops."""

    def __init__(self, preprocessing: ImagePreprocessing, mode: ResizeMode = "resize") -> None:
        if mode not in get_args(ResizeMode):
            raise ValueError(f"image resize mode '{mode}' is not one of {', '.join(get_args(ResizeMode))}")
        self.preprocessing = preprocessing
        self.mode = mode

    def __call__(self, image: Image.Image) -> torch.Tensor:
        p = self.preprocessing
        image = image.convert("RGB")
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

    def blank(self) -> torch.Tensor:
        """A blank image (the mean colour, all zeros after normalisation), for the blind baseline."""
        return torch.zeros(3, self.preprocessing.height, self.preprocessing.width)
