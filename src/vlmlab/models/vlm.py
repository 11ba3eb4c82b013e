"""`VisionLanguageModel`: encoder -> connector -> image tokens merged into the LLM's input."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers.modeling_outputs import CausalLMOutputWithPast

from vlmlab.models.batch import Batch
from vlmlab.models.connectors.base import Connector
from vlmlab.models.encoders.base import VisionEncoder
from vlmlab.models.encoders.native_resolution import NativeResolutionEncoder
from vlmlab.models.image_layout import ImageTokenLayout, NativeTokenLayout, arrange_image_tokens
from vlmlab.models.llms.language_model import LanguageModel
from vlmlab.models.llms.qwen2_vl_text import mrope_positions


class VisionLanguageModel(nn.Module):
    """LLaVA's composition.

    The data pipeline has already expanded every `<image>` placeholder into its image's count of
    image token ids (`image_layout`), so the merge is one scatter: the k-th image's tokens replace the
    k-th run of placeholders in row-major order. `pixel_values` holds the tiles of all images of the
    batch in that order ([num_tiles, C, H, W]; one tile per image unless tiled) and `image_grids` says
    which tiles form which image and how (`vlmlab.models.image_layout`; None: one tile each); text-only
    rows contribute none. The encoder runs on all tiles of the batch at once. With a native-resolution encoder,
    `pixel_values` are the packed patches of every image ([sum of patches, patch_dim]) and `image_grids` their
    (frames, rows, columns): the encoder runs on them as one sequence and the connector on each token.
    """

    def __init__(
        self, encoder: VisionEncoder | NativeResolutionEncoder, connector: Connector, llm: LanguageModel
    ) -> None:
        super().__init__()
        self.encoder = encoder
        self.connector = connector
        self.llm = llm

    @property
    def image_newline(self) -> torch.Tensor | None:
        """LLaVA-NeXT's learned row-end token, when the model has one (`model.image_newline`); it lives in
        the connector, so it trains and freezes with it."""
        return getattr(self.connector, "image_newline", None)

    @property
    def native_resolution(self) -> bool:
        """Whether the encoder takes each image at its own shape (packed patches and their grids)."""
        return isinstance(self.encoder, NativeResolutionEncoder)

    @property
    def image_layout(self) -> ImageTokenLayout | NativeTokenLayout:
        if isinstance(self.encoder, NativeResolutionEncoder):
            return self.encoder.token_layout
        return ImageTokenLayout(self.connector.num_out_tokens, self.image_newline is not None)

    @property
    def num_image_tokens(self) -> int:
        """Tokens of an untiled image (a native-resolution encoder's: the most an image takes)."""
        layout = self.image_layout
        return layout.max_tokens if isinstance(layout, NativeTokenLayout) else layout.count((0, 0, 0, 0))

    @property
    def image_token_id(self) -> int:
        return self.llm.image_token_id

    def encode_images(self, pixel_values: torch.Tensor, image_grids: torch.Tensor | None = None) -> torch.Tensor:
        """Image tokens: (num_tiles, M, d_llm); a native-resolution encoder's, of the packed patches
        `pixel_values` and their `image_grids`: (1, sum of tokens, d_llm)."""
        if isinstance(self.encoder, NativeResolutionEncoder):
            return self.connector(self.encoder(pixel_values, image_grids)[None])
        features = self.encoder(pixel_values)  # (num_tiles, N, d_vis)
        return self.connector(features)  # (num_tiles, M, d_llm)

    def mrope_position_ids(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None,
        image_grids: torch.Tensor | None,
        packed_positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The M-RoPE positions of a batch for an LLM that takes them (`LanguageModel.uses_mrope`): each image's
        tokens on its merged grid (`vlmlab.models.llms.qwen2_vl_text.mrope_positions`)."""
        layout = self.image_layout  # a native-resolution encoder's (the builder refuses any other with M-RoPE)
        grids = None if image_grids is None else layout.token_grids(image_grids)
        return mrope_positions(input_ids, self.image_token_id, grids, attention_mask, packed_positions)

    def embed_inputs(
        self,
        input_ids: torch.Tensor,
        pixel_values: torch.Tensor | None,
        image_features: torch.Tensor | None = None,
        image_grids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """LLM input embeddings with each image's tokens written over its placeholders.

        `image_features` ([num_tiles, N, d_vis], the encoder's output, e.g. from the frozen-encoder
        feature cache) replace `pixel_values`: the encoder is skipped and only the connector runs.
        """
        is_image_token = input_ids == self.image_token_id  # (B, T)
        embeds = self.llm.embed(input_ids)  # (B, T, d_llm); placeholder rows are overwritten below
        num_placeholders = int(is_image_token.sum())
        tiles = image_features if image_features is not None else pixel_values
        num_tiles = 0 if tiles is None else tiles.shape[0]
        layout = self.image_layout
        if image_grids is not None and num_tiles:
            expected = sum(layout.count(grid) for grid in image_grids.tolist())
        elif not num_tiles:
            expected = 0
        elif isinstance(layout, NativeTokenLayout):
            raise ValueError("a native-resolution encoder's patches come with their image_grids; the batch has none")
        else:
            expected = num_tiles * layout.count((0, 0, 0, 0))
        if num_placeholders != expected:
            raise ValueError(
                f"the batch has {num_placeholders} image placeholder tokens but its {num_tiles} image tiles take "
                f"{expected}; every <image> must be expanded by the data pipeline to its image's token count "
                "(ImageTokenLayout.count of its grid)"
            )
        if num_tiles == 0:
            return embeds
        if image_features is not None:
            tile_tokens = self.connector(image_features.to(embeds.dtype))  # (num_tiles, M, d_llm)
        else:
            tile_tokens = self.encode_images(pixel_values, image_grids).to(embeds.dtype)  # (num_tiles, M, d_llm)
        if self.native_resolution:  # already every image's tokens in order
            image_embeds = tile_tokens.flatten(0, 1)
        else:
            image_embeds = arrange_image_tokens(tile_tokens, image_grids, self.image_newline)
        return embeds.masked_scatter(is_image_token.unsqueeze(-1), image_embeds.to(embeds.dtype))

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        labels: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
        cu_seq_lens: torch.Tensor | None = None,
        max_seq_len: int | None = None,
        image_features: torch.Tensor | None = None,
        image_grids: torch.Tensor | None = None,
        loss_chunk_size: int | None = None,
        **llm_kwargs: Any,
    ) -> CausalLMOutputWithPast:
        """Logits [B, T, V]; with `labels` (-100 where masked) also the mean next-token loss.

        With `labels` and `loss_chunk_size`, the loss alone (no logits): computed at the answer positions,
        `loss_chunk_size` of them at a time, so full-vocabulary logits of the whole batch never exist
        (`vlmlab.models.loss`; the same loss and gradients).

        `position_ids` that restart at 0 mark packed rows (`vlmlab.data.packing`): the 2-D
        `attention_mask` then only marks real tokens and is not passed on, because transformers derives
        the block-diagonal mask from the restarts only without a mask and without a KV cache.
        `cu_seq_lens` / `max_seq_len` (the samples' boundaries) go to variable-length attention
        (`flash_attention_2`, `sdpa_varlen`), which then skips the attention between samples.
        An LLM with M-RoPE positions (Qwen2-VL's) gets them from the rows and their images' grids
        (`mrope_position_ids`; packed rows: each sample's own, under the restarts).
        """
        inputs_embeds = self.embed_inputs(input_ids, pixel_values, image_features, image_grids)
        packed = position_ids is not None
        if self.llm.uses_mrope:
            position_ids = self.mrope_position_ids(input_ids, attention_mask, image_grids, position_ids)
        if position_ids is not None:
            llm_kwargs.update(position_ids=position_ids)
        if packed:
            attention_mask = None
            llm_kwargs.update(use_cache=False)
            if cu_seq_lens is not None:
                bounds = dict(cu_seq_lens_q=cu_seq_lens, cu_seq_lens_k=cu_seq_lens)
                llm_kwargs.update(bounds, max_length_q=max_seq_len, max_length_k=max_seq_len)
        if labels is not None and loss_chunk_size:
            loss = self.llm.chunked_loss(inputs_embeds, attention_mask, labels, loss_chunk_size, **llm_kwargs)
            return CausalLMOutputWithPast(loss=loss)
        return self.llm.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, labels=labels, **llm_kwargs)

    def batch_loss(self, batch: Batch, loss_chunk_size: int | None = None) -> torch.Tensor:
        """The mean answer-token loss of a collated training batch: padded or packed rows (their
        `position_ids`, `cu_seq_lens`, `max_seq_len`), images or cached `image_features`."""
        return self(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            pixel_values=batch["pixel_values"],
            labels=batch["labels"],
            loss_chunk_size=loss_chunk_size,
            position_ids=batch.get("position_ids"),  # packed rows (data.packing)
            cu_seq_lens=batch.get("cu_seq_lens"),
            max_seq_len=batch.get("max_seq_len"),
            image_features=batch.get("image_features"),  # frozen-encoder feature cache (data.feature_cache)
            image_grids=batch.get("image_grids"),  # tiled images (data.image_resize=anyres)
        ).loss

    @torch.no_grad()
    def generate(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        pixel_values: torch.Tensor | None = None,
        max_new_tokens: int = 32,
        image_grids: torch.Tensor | None = None,
        **generate_kwargs: Any,
    ) -> torch.Tensor:
        """New token ids [B, <= max_new_tokens] for left-padded prompts, decoded with the LLM's KV cache.

        Greedy unless `do_sample=True` is passed; stops at the tokenizer's EOS.
        """
        inputs_embeds = self.embed_inputs(input_ids, pixel_values, image_grids=image_grids)
        tokenizer = self.llm.tokenizer
        generate_kwargs.setdefault("do_sample", False)
        if self.llm.uses_mrope:  # the prompt's; generation goes on from the last + 1
            generate_kwargs["position_ids"] = self.mrope_position_ids(input_ids, attention_mask, image_grids)
        return self.llm.model.generate(
            inputs_embeds=inputs_embeds,
            attention_mask=attention_mask,
            max_new_tokens=max_new_tokens,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            use_cache=True,
            **generate_kwargs,
        )

    def generate_from_batch(self, batch: Batch, **generate_kwargs: Any) -> torch.Tensor:
        """`generate` on a collated, left-padded prompt batch, moved to the model's device (images in the
        encoder's dtype): the one path from a batch to new token ids."""
        device = next(self.parameters()).device
        pixel_values = batch["pixel_values"]
        if pixel_values is not None:
            pixel_values = pixel_values.to(device, next(self.encoder.parameters()).dtype)
        grids = batch.get("image_grids")
        return self.generate(
            batch["input_ids"].to(device),
            batch["attention_mask"].to(device),
            pixel_values,
            image_grids=grids,
            **generate_kwargs,
        )
