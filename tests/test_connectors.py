"""Connectors: shapes, token counts, and dimensions injected by the builder."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from vlmlab.models.builder import build_connector
from vlmlab.models.connectors import Connector, LinearConnector, MLPConnector
from vlmlab.models.encoders import TimmVisionEncoder
from vlmlab.models.llms import LanguageModel

LLAMA = dict(model_type="llama", hidden_size=48, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4)


@pytest.mark.parametrize("connector_cls", [LinearConnector, MLPConnector])
def test_connector_shapes(connector_cls: type[Connector]) -> None:
    connector = connector_cls(in_dim=32, out_dim=48, num_in_tokens=16)
    assert connector.num_out_tokens == 16
    assert connector(torch.randn(2, 16, 32)).shape == (2, 16, 48)


def test_mlp2x_gelu_is_llava_projector() -> None:
    connector = MLPConnector(in_dim=8, out_dim=12, num_in_tokens=4, depth=2)
    kinds = [type(m) for m in connector.layers]
    assert kinds == [nn.Linear, nn.GELU, nn.Linear]
    assert connector.layers[0].in_features == 8 and connector.layers[2].out_features == 12


def test_builder_injects_dims(tokenizer) -> None:
    encoder = TimmVisionEncoder(
        "vit_tiny_patch16_224", image_size=32, model_kwargs=dict(patch_size=8, embed_dim=40, depth=2, num_heads=2)
    )
    llm = LanguageModel.from_config(LLAMA, tokenizer, chat_template="simple")
    connector = build_connector(partial(MLPConnector, depth=2), encoder, llm)
    assert (connector.in_dim, connector.out_dim, connector.num_in_tokens) == (40, 48, 16)


class NoDims(nn.Module):
    def __init__(self, hidden: int = 4) -> None:
        super().__init__()


class NotAConnector(nn.Module):
    def __init__(self, in_dim: int, out_dim: int, num_in_tokens: int) -> None:
        super().__init__()


def test_builder_explains_the_contract(tokenizer) -> None:
    encoder = TimmVisionEncoder(
        "vit_tiny_patch16_224", image_size=32, model_kwargs=dict(patch_size=8, embed_dim=40, depth=2, num_heads=2)
    )
    llm = LanguageModel.from_config(LLAMA, tokenizer, chat_template="simple")
    with pytest.raises(TypeError, match="must accept these three"):
        build_connector(NoDims, encoder, llm)
    with pytest.raises(TypeError, match="must subclass vlmlab.models.connectors.Connector"):
        build_connector(NotAConnector, encoder, llm)
