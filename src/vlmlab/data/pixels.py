"""Pixel operations exactly as the library an encoder's checkpoint comes from performs them.

- `transformers` (its default image processors, the torchvision backend; transformers 5.24,
  `image_processing_backends.TorchvisionBackend`): the RGB image as a uint8 tensor, resized by torchvision
  with antialiasing (the result rounded to uint8), centre-cropped at `int((h - crop) / 2)` (padded with black
  where the crop is larger), then rescaled and normalised in one step, `(x - 255 mean) / (255 std)`.
- `timm` (its eval transform, timm 1.0.31 `transforms_imagenet_eval`): the PIL image resized by PIL's filter,
  centre-cropped by torchvision's `center_crop` (at `round((h - crop) / 2)`), turned into floats in [0, 1]
  (`to_tensor`) and normalised.

Each class calls the same functions in the same order as its library, so the pixels are the library's bit for
bit (tested against both, tests/test_preprocessing_fidelity.py); geometry (sizes, grids, padding amounts) is
decided by `vlmlab.data.image_processing` and is shared.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from PIL import Image
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as pil_ops
from torchvision.transforms.v2 import functional as tensor_ops

from vlmlab.models.encoders.base import ImagePreprocessing

# transformers' `pil_torch_interpolation_mapping` (its PIL resampling names -> torchvision modes for tensors)
TRANSFORMERS_MODES = {
    "nearest": InterpolationMode.NEAREST_EXACT,
    "box": InterpolationMode.BOX,
    "bilinear": InterpolationMode.BILINEAR,
    "hamming": InterpolationMode.HAMMING,
    "bicubic": InterpolationMode.BICUBIC,
    "lanczos": InterpolationMode.LANCZOS,
}
# timm's `str_to_interp_mode` (applied to PIL images, which torchvision hands to PIL's own filters)
TIMM_MODES = {
    "nearest": InterpolationMode.NEAREST,
    "box": InterpolationMode.BOX,
    "bilinear": InterpolationMode.BILINEAR,
    "hamming": InterpolationMode.HAMMING,
    "bicubic": InterpolationMode.BICUBIC,
    "lanczos": InterpolationMode.LANCZOS,
}


class TransformersPixels:
    """transformers' torchvision backend: images are uint8 tensors [3, H, W] until `finish`."""

    def __init__(self, preprocessing: ImagePreprocessing) -> None:
        p = preprocessing
        self.mode = TRANSFORMERS_MODES[p.interpolation]
        # `_fuse_mean_std_and_rescale_factor`: the rescale folded into the statistics, in float32
        self.mean = torch.tensor(p.mean) * (1.0 / p.rescale_factor)
        self.std = torch.tensor(p.std) * (1.0 / p.rescale_factor)

    def load(self, image: Image.Image) -> torch.Tensor:
        return torch.from_numpy(np.array(image.convert("RGB"))).permute(2, 0, 1).contiguous()

    def size(self, pixels: torch.Tensor) -> tuple[int, int]:
        return int(pixels.shape[-2]), int(pixels.shape[-1])

    def resize(self, pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        return tensor_ops.resize(pixels, list(size), interpolation=self.mode, antialias=True)

    def pad(self, pixels: torch.Tensor, ltrb: list[int], fill: Any) -> torch.Tensor:
        return tensor_ops.pad(pixels, ltrb, fill=fill)

    def crop(self, pixels: torch.Tensor, top: int, left: int, height: int, width: int) -> torch.Tensor:
        return tensor_ops.crop(pixels, top, left, height, width)

    def center_crop(self, pixels: torch.Tensor, size: tuple[int, int]) -> torch.Tensor:
        height, width = self.size(pixels)
        crop_height, crop_width = size
        if crop_width > width or crop_height > height:
            ltrb = [
                max(crop_width - width, 0) // 2,
                max(crop_height - height, 0) // 2,
                (max(crop_width - width, 0) + 1) // 2,
                (max(crop_height - height, 0) + 1) // 2,
            ]
            pixels = tensor_ops.pad(pixels, ltrb, fill=0)
            height, width = self.size(pixels)
        return tensor_ops.crop(pixels, int((height - crop_height) / 2.0), int((width - crop_width) / 2.0), *size)

    def finish(self, pixels: torch.Tensor) -> torch.Tensor:
        """Normalised float32 pixels [3, h, w]."""
        return tensor_ops.normalize(pixels.to(torch.float32), self.mean, self.std)


class TimmPixels:
    """timm's eval transform: images are PIL images until `finish`."""

    def __init__(self, preprocessing: ImagePreprocessing) -> None:
        p = preprocessing
        self.mode = TIMM_MODES[p.interpolation]
        self.mean, self.std = torch.tensor(p.mean), torch.tensor(p.std)
        self.scale = p.rescale_factor * 255  # to_tensor already divides by 255

    def load(self, image: Image.Image) -> Image.Image:
        return image.convert("RGB")

    def size(self, image: Image.Image) -> tuple[int, int]:
        return image.height, image.width

    def resize(self, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        return pil_ops.resize(image, list(size), interpolation=self.mode)

    def pad(self, image: Image.Image, ltrb: list[int], fill: Any) -> Image.Image:
        return pil_ops.pad(image, ltrb, fill=fill)

    def crop(self, image: Image.Image, top: int, left: int, height: int, width: int) -> Image.Image:
        return pil_ops.crop(image, top, left, height, width)

    def center_crop(self, image: Image.Image, size: tuple[int, int]) -> Image.Image:
        return pil_ops.center_crop(image, list(size))

    def finish(self, image: Image.Image) -> torch.Tensor:
        pixels = pil_ops.to_tensor(image)
        if self.scale != 1.0:
            pixels = pixels * self.scale
        return pil_ops.normalize(pixels, mean=self.mean, std=self.std)


def pixel_ops(preprocessing: ImagePreprocessing) -> TransformersPixels | TimmPixels:
    """The operations of the library `preprocessing.backend` names."""
    return TimmPixels(preprocessing) if preprocessing.backend == "timm" else TransformersPixels(preprocessing)
