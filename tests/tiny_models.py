"""The tiny models several tests build (random weights, nothing downloaded), and a batch for them."""

from __future__ import annotations

import copy
from pathlib import Path

import torch
from PIL import Image
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerBase

from vlmlab.models.connectors import MLPConnector
from vlmlab.models.encoders import HFVisionEncoder
from vlmlab.models.llms import LanguageModel
from vlmlab.models.vlm import VisionLanguageModel


def tiny_llama_config(tokenizer: PreTrainedTokenizerBase, extra_tokens: int = 0) -> LlamaConfig:
    """A 2-layer, 48-wide Llama for `tokenizer` (plus `extra_tokens` rows, e.g. an `<image>` added later)."""
    return LlamaConfig(
        vocab_size=len(tokenizer) + extra_tokens,
        hidden_size=48,
        intermediate_size=96,
        num_hidden_layers=2,
        num_attention_heads=4,
        pad_token_id=tokenizer.pad_token_id,
    )


VISION = dict(
    image_size=32, patch_size=8, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4
)


def tiny_vlm(tokenizer) -> VisionLanguageModel:
    tokenizer = copy.deepcopy(tokenizer)
    text = tiny_llama_config(tokenizer, extra_tokens=1)  # + <image>
    torch.manual_seed(0)
    encoder = HFVisionEncoder("clip", config=VISION)
    llm = LanguageModel(LlamaForCausalLM(text), tokenizer, chat_template="simple")
    return VisionLanguageModel(encoder, MLPConnector(32, 48, encoder.num_patches, depth=2), llm)


def batch_for(model: VisionLanguageModel) -> dict[str, torch.Tensor]:
    """Two rows, three images, right padding; answers in the middle and at the end of the rows."""
    n, image, pad = model.num_image_tokens, model.image_token_id, model.llm.tokenizer.pad_token_id
    input_ids = torch.tensor(
        [
            [5, *[image] * n, 9, 10, 11, 12, *[image] * n, 13, 14, 15],
            [7, 8, *[image] * n, 20, 21, 22, 23, 24, 25, *[pad] * n],
        ]
    )
    labels = torch.full_like(input_ids, -100)
    labels[0, -4:-1] = input_ids[0, -4:-1]
    labels[0, n + 2 : n + 4] = input_ids[0, n + 2 : n + 4]
    labels[1, n + 4 : n + 8] = input_ids[1, n + 4 : n + 8]
    return {
        "input_ids": input_ids,
        "attention_mask": (input_ids != pad).long(),
        "pixel_values": torch.randn(3, 3, 32, 32, generator=torch.Generator().manual_seed(1)),
        "labels": labels,
    }


def noise_pictures(folder: Path, sizes: dict[str, tuple[int, int]]) -> dict[str, Path]:
    """A PNG file of random pixels in `folder` per name of `sizes` ((height, width)), as a user would hold them."""
    paths = {}
    for name, (height, width) in sizes.items():
        generator = torch.Generator().manual_seed(height * width)
        pixels = torch.randint(0, 256, (height, width, 3), generator=generator, dtype=torch.uint8)
        paths[name] = folder / f"{name}.png"
        Image.fromarray(pixels.numpy()).save(paths[name])
    return paths
