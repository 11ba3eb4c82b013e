"""Vision encoders: pixels -> patch features [B, N, d_vis]; native-resolution ones: packed patches of images at
their own shapes -> packed features [sum of tokens, d_vis]."""

from vlmlab.models.encoders.base import FusedVisionEncoder, ImagePreprocessing, VisionEncoder
from vlmlab.models.encoders.hf_encoder import HFVisionEncoder
from vlmlab.models.encoders.native_resolution import (
    NativeResolutionEncoder,
    Qwen2VLVisionEncoder,
    Siglip2NaFlexEncoder,
)
from vlmlab.models.encoders.patch_recipe import PatchRecipe
from vlmlab.models.encoders.timm_encoder import TimmVisionEncoder

__all__ = [
    "FusedVisionEncoder",
    "HFVisionEncoder",
    "ImagePreprocessing",
    "NativeResolutionEncoder",
    "PatchRecipe",
    "Qwen2VLVisionEncoder",
    "Siglip2NaFlexEncoder",
    "TimmVisionEncoder",
    "VisionEncoder",
]
