"""Finding the repeated transformer blocks of a transformers model (the units FSDP wraps)."""

from __future__ import annotations

from torch import nn
from transformers import PreTrainedModel


def repeated_block_classes(model: PreTrainedModel) -> set[type[nn.Module]]:
    """Classes named in `_no_split_modules` that sit in a layer list; embeddings, also named there, do not."""
    names = set(getattr(model, "_no_split_modules", None) or [])
    return {
        type(block)
        for layers in model.modules()
        if isinstance(layers, nn.ModuleList)
        for block in layers
        if type(block).__name__ in names
    }
