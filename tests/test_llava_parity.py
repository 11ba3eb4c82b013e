"""LLaVA parity: a transformers LLaVA's weights in vlmlab's model give the same logits."""

from __future__ import annotations

import copy

import torch
from transformers import CLIPVisionConfig, LlamaForCausalLM, LlavaConfig, LlavaForConditionalGeneration

from tests.tiny_models import tiny_llama_config
from vlmlab.interop.llava_weights import llava_to_vlmlab
from vlmlab.models.connectors import MLPConnector
from vlmlab.models.encoders import HFVisionEncoder
from vlmlab.models.llms import LanguageModel
from vlmlab.models.vlm import VisionLanguageModel

VISION = dict(
    image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=3, num_attention_heads=4
)


def test_vlmlab_reproduces_llava_logits(tokenizer) -> None:
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    image_id = tokenizer.convert_tokens_to_ids("<image>")
    text = tiny_llama_config(tokenizer)
    torch.manual_seed(0)
    llava = LlavaForConditionalGeneration(
        LlavaConfig(
            vision_config=CLIPVisionConfig(**VISION),
            text_config=text,
            image_token_index=image_id,
            projector_hidden_act="gelu",
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
        )
    ).eval()

    encoder = HFVisionEncoder("clip", config=VISION, feature_layer=-2, feature_select="default")
    llm = LanguageModel(LlamaForCausalLM(text), tokenizer, chat_template="simple")
    ours = VisionLanguageModel(encoder, MLPConnector(32, 48, encoder.num_patches, depth=2), llm).eval()
    missing, unexpected = ours.load_state_dict(llava_to_vlmlab(llava.state_dict()), strict=True)
    assert not missing and not unexpected

    n = ours.num_image_tokens  # 16 patches, CLS dropped
    pad = tokenizer.pad_token_id
    input_ids = torch.tensor(
        [
            [5, *[image_id] * n, 9, 10, 11, 12, *[image_id] * n, 13],  # two images
            [7, 8, *[image_id] * n, 20, 21, 22, 23, *[pad] * n],  # one image, right padding
        ]
    )
    attention_mask = (input_ids != pad).long()
    pixel_values = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = llava(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask).logits
        actual = ours(input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask).logits
    keep = attention_mask.bool()
    assert (actual[keep] - expected[keep]).abs().max() <= 1e-4
