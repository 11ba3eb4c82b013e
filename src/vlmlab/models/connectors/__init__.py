"""Connectors (projectors): patch features [B, N, d_vis] -> image tokens [B, M, d_llm]."""

from vlmlab.models.connectors.base import Connector
from vlmlab.models.connectors.linear import LinearConnector
from vlmlab.models.connectors.mlp import MLPConnector

__all__ = ["Connector", "LinearConnector", "MLPConnector"]
