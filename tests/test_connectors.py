"""Connectors: shapes, token counts, and dimensions injected by the builder."""

from __future__ import annotations

from functools import partial

import pytest
import torch
from torch import nn

from vlmlab.models.builder import build_connector
from vlmlab.models.connectors import (
    AvgPoolConnector,
    CAbstractorConnector,
    Connector,
    LinearConnector,
    MLPConnector,
    PerceiverResamplerConnector,
    PixelShuffleConnector,
    QFormerConnector,
)
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


def test_pixel_shuffle_folds_each_2x2_block_of_neighbours_into_one_token() -> None:
    connector = PixelShuffleConnector(in_dim=1, out_dim=4, num_in_tokens=16, scale_factor=2)
    assert connector.num_out_tokens == 4
    with torch.no_grad():
        connector.proj[0].weight.copy_(torch.eye(4))  # show the folded channels as they are
    patches = torch.arange(16.0).view(1, 16, 1)  # a 4 x 4 grid numbered row by row
    tokens = connector(patches)[0]
    assert tokens.tolist() == [[0, 1, 4, 5], [2, 3, 6, 7], [8, 9, 12, 13], [10, 11, 14, 15]]
    assert PixelShuffleConnector(in_dim=8, out_dim=8, num_in_tokens=256, scale_factor=4).num_out_tokens == 16


@pytest.mark.parametrize(
    ("build", "message"),
    [
        (lambda: PixelShuffleConnector(8, 8, num_in_tokens=17), "needs a square grid of patch features, got 17"),
        (lambda: PixelShuffleConnector(8, 8, num_in_tokens=9, scale_factor=2), "does not split into 2x2 blocks"),
        (lambda: AvgPoolConnector(8, 8, num_in_tokens=16, out_side=5), "out_side=5 must be between 1 and"),
        (lambda: QFormerConnector(8, 8, 16, depth=2, cross_attention_every=3), "cross_attention_every=3"),
    ],
)
def test_connector_options_that_cannot_work_are_refused(build, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        build()


@pytest.mark.parametrize(
    "connector",
    [
        AvgPoolConnector(in_dim=16, out_dim=24, num_in_tokens=64, out_side=4),
        CAbstractorConnector(in_dim=16, out_dim=24, num_in_tokens=64, out_side=4, depth=1, hidden_dim=32),
        PerceiverResamplerConnector(
            in_dim=16, out_dim=24, num_in_tokens=64, num_latents=5, depth=2, heads=2, head_dim=8
        ),
        QFormerConnector(in_dim=16, out_dim=24, num_in_tokens=64, num_queries=6, depth=2, hidden_dim=32, heads=4),
    ],
    ids=["avgpool", "c_abstractor", "perceiver", "qformer"],
)
def test_reducing_connectors_give_their_token_count_and_train(connector: Connector) -> None:
    features = torch.randn(3, 64, 16, requires_grad=True)
    out = connector(features)
    assert out.shape == (3, connector.num_out_tokens, 24)
    out.square().mean().backward()
    assert all(p.grad is not None for p in connector.parameters())  # every weight is on the path
    assert features.grad.abs().sum() > 0
    if not isinstance(connector, AvgPoolConnector | CAbstractorConnector):  # learned queries: any input length
        assert connector(torch.randn(3, 10, 16)).shape == (3, connector.num_out_tokens, 24)
