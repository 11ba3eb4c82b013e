"""Vision encoders: shapes, layer choice, prefix tokens, and loading from a saved folder."""

from __future__ import annotations

import pytest
import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from vlmlab.models.encoders import FusedVisionEncoder, HFVisionEncoder, TimmVisionEncoder

TINY_VIT = dict(patch_size=8, embed_dim=32, depth=3, num_heads=2)
TINY_HF = dict(
    image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
)


def test_timm_encoder_shapes_and_preprocessing() -> None:
    encoder = TimmVisionEncoder("vit_tiny_patch16_224", image_size=32, model_kwargs=TINY_VIT)
    assert (encoder.num_patches, encoder.output_dim) == (16, 32)
    p = encoder.preprocessing
    assert (p.height, p.width) == (32, 32)
    assert len(p.mean) == 3 and len(p.std) == 3
    out = encoder(torch.randn(2, 3, 32, 32))
    assert out.shape == (2, 16, 32)


def test_timm_encoder_keeps_cls_and_picks_the_block() -> None:
    torch.manual_seed(0)
    encoder = TimmVisionEncoder(
        "vit_tiny_patch16_224", image_size=32, keep_prefix_tokens=True, feature_layer=-2, model_kwargs=TINY_VIT
    )
    assert encoder.num_patches == 17  # CLS + 4x4 patches
    x = torch.randn(1, 3, 32, 32)
    vit = encoder.model
    tokens = vit.norm_pre(vit._pos_embed(vit.patch_embed(x)))
    tokens = vit.blocks[0](tokens)
    tokens = vit.blocks[1](tokens)  # block -2 of 3
    torch.testing.assert_close(encoder(x), tokens)


@pytest.mark.parametrize(
    ("family", "select", "expected_tokens"),
    [
        ("clip", "default", 16),
        ("clip", "full", 17),
        ("siglip", "full", 16),
        ("dinov2", "default", 16),
        ("dinov2", "full", 17),
    ],
)
def test_hf_encoder_token_counts(family: str, select: str, expected_tokens: int) -> None:
    encoder = HFVisionEncoder(family, config=TINY_HF, feature_select=select)
    assert (encoder.num_patches, encoder.output_dim) == (expected_tokens, 32)
    assert encoder(torch.randn(3, 3, 32, 32)).shape == (3, expected_tokens, 32)


def test_hf_encoder_uses_llava_feature_layer() -> None:
    encoder = HFVisionEncoder("clip", config=TINY_HF, feature_layer=-2)
    x = torch.randn(2, 3, 32, 32)
    hidden = encoder.model(x, output_hidden_states=True).hidden_states
    torch.testing.assert_close(encoder(x), hidden[-2][:, 1:])


def test_hf_encoder_loads_a_saved_folder(tmp_path) -> None:
    reference = CLIPVisionModel(CLIPVisionConfig(**TINY_HF)).eval()
    reference.save_pretrained(tmp_path)
    encoder = HFVisionEncoder("clip", pretrained=str(tmp_path)).eval()
    x = torch.randn(1, 3, 32, 32)
    torch.testing.assert_close(encoder(x), reference(x, output_hidden_states=True).hidden_states[-2][:, 1:])


def test_hf_encoder_rejects_unknown_family() -> None:
    with pytest.raises(ValueError, match="valid choices: clip, siglip, dinov2"):
        HFVisionEncoder("eva", config=TINY_HF)


def test_timm_encoder_rejects_a_missing_block() -> None:
    with pytest.raises(ValueError, match="feature_layer=-5 is not a valid block"):
        TimmVisionEncoder("vit_tiny_patch16_224", image_size=32, feature_layer=-5, model_kwargs=TINY_VIT)


def test_block_classes_name_the_transformer_blocks() -> None:
    timm_encoder = TimmVisionEncoder("vit_tiny_patch16_224", image_size=32, model_kwargs=TINY_VIT)
    assert {c.__name__ for c in timm_encoder.block_classes()} == {"Block"}
    expected = {"clip": "CLIPEncoderLayer", "siglip": "SiglipEncoderLayer", "dinov2": "Dinov2Layer"}
    for family, name in expected.items():
        assert {c.__name__ for c in HFVisionEncoder(family, config=TINY_HF).block_classes()} == {name}


def test_features_from_several_layers_are_concatenated_per_patch() -> None:
    torch.manual_seed(0)
    hf = HFVisionEncoder("siglip", config=TINY_HF, feature_layer=[-3, -1], feature_select="full")
    x = torch.randn(2, 3, 32, 32)
    hidden = hf.model(x, output_hidden_states=True).hidden_states
    assert hf.output_dim == 64
    torch.testing.assert_close(hf(x), torch.cat([hidden[-3], hidden[-1]], dim=-1))

    timm_encoder = TimmVisionEncoder("vit_tiny_patch16_224", image_size=32, feature_layer=[0, 2], model_kwargs=TINY_VIT)
    single = [
        TimmVisionEncoder("vit_tiny_patch16_224", image_size=32, feature_layer=i, model_kwargs=TINY_VIT) for i in (0, 2)
    ]
    weights = timm_encoder.state_dict()
    for encoder in single:  # blocks after the last one used are dropped: layer 0 keeps one block
        encoder.load_state_dict({k: v for k, v in weights.items() if k in encoder.state_dict()})
    assert len(single[0].model.blocks) == 1 and not any(".norm." in k or k.startswith("model.norm") for k in weights)
    assert (timm_encoder.num_patches, timm_encoder.output_dim) == (16, 64)
    torch.testing.assert_close(timm_encoder(x), torch.cat([e(x) for e in single], dim=-1))


def test_a_fused_encoder_concatenates_its_encoders_on_their_own_inputs() -> None:
    dinov2 = HFVisionEncoder("dinov2", config=TINY_HF)  # ImageNet normalisation, drops CLS
    siglip = HFVisionEncoder("siglip", config={**TINY_HF, "image_size": 48, "patch_size": 12}, feature_select="full")
    fused = FusedVisionEncoder({"dinov2": dinov2, "siglip": siglip})
    assert (fused.num_patches, fused.output_dim) == (16, 64)
    assert fused.preprocessing == dinov2.preprocessing  # the data pipeline prepares images for the first
    x = torch.randn(2, 3, 32, 32)  # as prepared for DINOv2
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (dinov2.preprocessing.mean, dinov2.preprocessing.std))
    raw = torch.nn.functional.interpolate(x * std + mean, size=(48, 48), mode="bicubic", align_corners=False)
    expected = torch.cat([dinov2(x), siglip((raw - 0.5) / 0.5)], dim=-1)  # SigLIP's own size and normalisation
    torch.testing.assert_close(fused(x), expected)

    other = HFVisionEncoder("siglip", config={**TINY_HF, "patch_size": 4}, feature_select="full")  # 64 patches
    with pytest.raises(ValueError, match=r"the encoders give \[16, 64\] patches; set their image sizes"):
        FusedVisionEncoder([dinov2, other])
