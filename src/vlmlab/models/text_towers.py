"""Text towers for contrastive image-text pretraining: captions -> one embedding each [B, d_text].

A `TextTower` is a transformers CLIP or SigLIP text model, pretrained (hub id or local folder, with its own
tokenizer) or built from a config (tiny test models, with a tokenizer given at build time, e.g. the LLM's),
pooled as the model defines: CLIP at the end-of-text token (the tokenizer appends it; the padding is masked),
SigLIP at the last position of a sequence padded to `max_length`, without an attention mask, as SigLIP was
trained.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn
from transformers import (
    AutoTokenizer,
    CLIPTextConfig,
    CLIPTextModel,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    SiglipTextConfig,
    SiglipTextModel,
)


@dataclass(frozen=True)
class _TextFamily:
    config_cls: type[PretrainedConfig]
    model_cls: type[PreTrainedModel]
    pad_to_max_length: bool  # SigLIP pools the last position of a fixed-length sequence
    attention_mask: bool


TEXT_FAMILIES = {
    "clip": _TextFamily(CLIPTextConfig, CLIPTextModel, pad_to_max_length=False, attention_mask=True),
    "siglip": _TextFamily(SiglipTextConfig, SiglipTextModel, pad_to_max_length=True, attention_mask=False),
}


class TextTower(nn.Module):
    """Args:
    family: `clip` or `siglip`.
    pretrained: hub id or local folder of the text model (and its tokenizer); None builds `config`.
    config: config fields of a model built from scratch (its vocabulary is the tokenizer's), or overrides.
    max_length: tokens per caption (longer ones are cut); SigLIP pads every caption to it.
    tokenizer: the tokenizer of a model built from scratch (the builder passes the LLM's when None).
    """

    def __init__(
        self,
        family: Literal["clip", "siglip"],
        pretrained: str | None = None,
        config: dict[str, Any] | None = None,
        max_length: int = 64,
        tokenizer: PreTrainedTokenizerBase | None = None,
    ) -> None:
        super().__init__()
        if family not in TEXT_FAMILIES:
            raise ValueError(f"unknown text tower family '{family}'; valid choices: {', '.join(TEXT_FAMILIES)}")
        self.family = TEXT_FAMILIES[family]
        if pretrained is not None:
            self.model = self.family.model_cls.from_pretrained(pretrained, **(config or {}))
            self.tokenizer = AutoTokenizer.from_pretrained(pretrained)
        else:
            if tokenizer is None:
                raise ValueError("a text tower built from a config needs a tokenizer (vlmlab passes the LLM's)")
            fields = {
                "vocab_size": len(tokenizer),
                "max_position_embeddings": max_length,
                "pad_token_id": tokenizer.pad_token_id,
                "eos_token_id": tokenizer.eos_token_id,
                "bos_token_id": tokenizer.bos_token_id,
                **(config or {}),
            }
            self.model = self.family.model_cls(self.family.config_cls(**fields))
            self.tokenizer = tokenizer
        self.max_length = max_length

    @property
    def output_dim(self) -> int:
        return self.model.config.hidden_size

    def tokenize(self, texts: Sequence[str]) -> dict[str, torch.Tensor]:
        """Token ids (and, for CLIP, the attention mask), with an end-of-text token ending every caption."""
        ids = [self.tokenizer(text, add_special_tokens=True)["input_ids"][: self.max_length - 1] for text in texts]
        eos = self.tokenizer.eos_token_id
        ids = [row if row and row[-1] == eos else [*row, eos] for row in ids]
        length = self.max_length if self.family.pad_to_max_length else max(len(row) for row in ids)
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else eos
        input_ids = torch.full((len(ids), length), pad, dtype=torch.long)
        mask = torch.zeros((len(ids), length), dtype=torch.long)
        for i, row in enumerate(ids):
            input_ids[i, : len(row)] = torch.tensor(row)
            mask[i, : len(row)] = 1
        return {"input_ids": input_ids, **({"attention_mask": mask} if self.family.attention_mask else {})}

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        """One pooled embedding per caption [B, d_text]."""
        device = next(self.parameters()).device
        inputs = {k: v.to(device) for k, v in self.tokenize(texts).items()}
        return self.model(**inputs).pooler_output
