"""Vision encoders: pixels -> patch features [B, N, d_vis]."""

from vlmlab.models.encoders.base import FusedVisionEncoder, ImagePreprocessing, VisionEncoder
from vlmlab.models.encoders.hf_encoder import HFVisionEncoder
from vlmlab.models.encoders.timm_encoder import TimmVisionEncoder

__all__ = ["FusedVisionEncoder", "HFVisionEncoder", "ImagePreprocessing", "TimmVisionEncoder", "VisionEncoder"]
