"""`VisionLanguageModel`: encoder -> connector -> image tokens merged into the LLM's input."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from vlmlab.models.connectors.base import Connector
from vlmlab.models.encoders.base import VisionEncoder
from vlmlab.models.llms.language_model import LanguageModel


class VisionLanguageModel(nn.Module):
    """LLaVA's composition.

    The data pipeline has already expanded every `<image>` placeholder into `num_image_tokens`
    copies of the image token id, so the merge is one scatter: the k-th image's tokens replace the
    k-th run of placeholders in row-major order. `pixel_values` holds all images of the batch in
    that order ([num_images, C, H, W]); text-only rows contribute none.
    """

    def __init__(self, encoder: VisionEncoder, connector: Connector, llm: LanguageModel) -> None:
        super().__init__()
        self.encoder = encoder
        self.connector = connector
        self.llm = llm

    @property
    def num_image_tokens(self) -> int:
        return self.connector.num_out_tokens

    @property
    def image_token_id(self) -> int:
        return self.llm.image_token_id

    def encode_images(self, pixel_values: torch.Tensor) -> torch.Tensor:
        features = self.encoder(pixel_values)  # (num_images, N, d_vis)
        return self.connector(features)  # (num_images, M, d_llm)

    def embed_inputs(self, input_ids: torch.Tensor, pixel_values: torch.Tensor | None) -> torch.Tensor:
        """LLM input embeddings with each image's tokens written over its placeholders."""
        is_image_token = input_ids == self.image_token_id  # (B, T)
        embeds = self.llm.embed(input_ids)  # (B, T, d_llm); placeholder rows are overwritten below
        num_placeholders = int(is_image_token.sum())
        num_images = 0 if pixel_values is None else pixel_values.shape[0]
        if num_placeholders != num_images * self.num_image_tokens:
            raise ValueError(
                f"the batch has {num_placeholders} image placeholder tokens but {num_images} images x "
                f"{self.num_image_tokens} tokens per image = {num_images * self.num_image_tokens}; every "
                "<image> must be expanded by the data pipeline to the connector's num_out_tokens"
            )
        if num_images == 0:
            return embeds
        image_embeds = self.encode_images(pixel_values).to(embeds.dtype)  # (num_images, M, d_llm)
        return embeds.masked_scatter(is_image_token.unsqueeze(-1), image_embeds)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        **llm_kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits [B, T, V]; with `labels` (-100 where masked) also the mean next-token loss."""
        inputs_embeds = self.embed_inputs(input_ids, pixel_values)
        return self.llm.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **llm_kwargs)

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """New token ids [B, <= max_new_tokens] for left-padded prompts, decoded with the LLM's KV cache.

        Greedy unless `do_sample=True` is passed; stops at the tokenizer's EOS.
        """
        inputs_embeds = self.embed_inputs(input_ids, pixel_values)
        tokenizer = self.llm.tokenizer
        generate_kwargs.setdefault("do_sample", False)
        return self.llm.model.generate(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
            **generate_kwargs,
        )
