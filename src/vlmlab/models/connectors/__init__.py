"""Connectors (projectors): patch features [B, N, d_vis] -> image tokens [B, M, d_llm]."""

from vlmlab.models.connectors.base import Connector
from vlmlab.models.connectors.identity import IdentityConnector
from vlmlab.models.connectors.linear import LinearConnector
from vlmlab.models.connectors.mlp import MLPConnector
from vlmlab.models.connectors.pixel_shuffle import PixelShuffleConnector
from vlmlab.models.connectors.pooling import AvgPoolConnector, CAbstractorConnector
from vlmlab.models.connectors.resampler import PerceiverResamplerConnector, QFormerConnector

__all__ = [
    "AvgPoolConnector",
    "CAbstractorConnector",
    "Connector",
    "IdentityConnector",
    "LinearConnector",
    "MLPConnector",
    "PerceiverResamplerConnector",
    "PixelShuffleConnector",
    "QFormerConnector",
]
