"""VisionLanguageModel: the placeholder merge, several images and text-only rows, and generation."""

from __future__ import annotations

import copy

import pytest
import torch

from vlmlab.data.chat_format import ChatFormatter
from vlmlab.data.conversation_dataset import collate
from vlmlab.models.connectors import MLPConnector
from vlmlab.models.encoders import TimmVisionEncoder
from vlmlab.models.llms import LanguageModel
from vlmlab.models.vlm import VisionLanguageModel

LLAMA = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4)


@pytest.fixture
def model(tokenizer) -> VisionLanguageModel:
    torch.manual_seed(0)
    encoder = TimmVisionEncoder(
        "vit_tiny_patch16_224", image_size=32, model_kwargs=dict(patch_size=16, embed_dim=24, depth=2, num_heads=2)
    )
    llm = LanguageModel.from_config(LLAMA, copy.deepcopy(tokenizer), chat_template="simple")
    return VisionLanguageModel(encoder, MLPConnector(24, 32, encoder.num_patches), llm).eval()


def test_image_tokens_land_exactly_on_placeholders(model: VisionLanguageModel) -> None:
    m = model.num_image_tokens  # 4 patches
    ids = torch.tensor(
        [
            [5, model.image_token_id, *[model.image_token_id] * (m - 1), 6, *[model.image_token_id] * m, 7],  # 2 images
            [8, 9, 10, 11, *[0] * (2 * m - 1)],  # text only, right-padded
        ]
    )
    pixels = torch.randn(2, 3, 32, 32)
    embeds = model.embed_inputs(ids, pixels)
    image_embeds = model.encode_images(pixels)  # (2, m, d)
    torch.testing.assert_close(embeds[0, 1 : 1 + m], image_embeds[0])
    torch.testing.assert_close(embeds[0, 2 + m : 2 + 2 * m], image_embeds[1])
    text = model.llm.embed(ids)
    for row, col in [(0, 0), (0, 1 + m), (0, 2 + 2 * m)]:
        torch.testing.assert_close(embeds[row, col], text[row, col])
    torch.testing.assert_close(embeds[1], text[1])  # the text-only row is untouched


def test_placeholder_count_must_match_images(model: VisionLanguageModel) -> None:
    ids = torch.tensor([[5, *[model.image_token_id] * model.num_image_tokens, 6]])
    with pytest.raises(ValueError, match="3 image placeholder tokens but its 1 image tiles take 4"):
        model.embed_inputs(ids[:, :-2], torch.randn(1, 3, 32, 32))
    with pytest.raises(ValueError, match="its 0 image tiles take 0"):
        model.embed_inputs(ids, None)


def test_loss_counts_only_labelled_tokens(model: VisionLanguageModel) -> None:
    ids = torch.tensor([[5, *[model.image_token_id] * 4, 6, 7, 8]])
    labels = torch.full_like(ids, -100)
    labels[0, -2:] = ids[0, -2:]
    out = model(ids, torch.ones_like(ids), torch.randn(1, 3, 32, 32), labels)
    logits = out.logits[0, -3:-1]
    expected = torch.nn.functional.cross_entropy(logits, ids[0, -2:])
    torch.testing.assert_close(out.loss, expected)


def test_batched_generation_matches_one_by_one(model: VisionLanguageModel) -> None:
    formatter = ChatFormatter(model.llm.tokenizer, "<image>", model.num_image_tokens, max_length=128)
    conversations = [
        [{"from": "human", "value": "<image>\nWhat color is the shape in the top left?"}],
        [{"from": "human", "value": "How many shapes are there in the long question here?"}],
        [{"from": "human", "value": "<image>\nDescribe <image> both."}],
    ]
    torch.manual_seed(1)
    images = [torch.randn(1, 3, 32, 32), None, torch.randn(2, 3, 32, 32)]
    samples = [
        {"input_ids": formatter.encode_prompt(c), "pixel_values": p, "id": i, "task": "t"}
        for i, (c, p) in enumerate(zip(conversations, images))
    ]
    batch = collate(samples, model.llm.tokenizer.pad_token_id, padding_side="left")
    together = model.generate(batch["input_ids"], batch["attention_mask"], batch["pixel_values"], max_new_tokens=6)
    for row, sample in enumerate(samples):
        ids = sample["input_ids"][None]
        alone = model.generate(ids, torch.ones_like(ids), sample["pixel_values"], max_new_tokens=6)
        n = alone.shape[1]
        assert torch.equal(together[row, :n], alone[0]), f"row {row}"
