"""`LanguageModel`: a causal LM, its tokenizer, the image placeholder token and the chat template."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from vlmlab.models.blocks import repeated_block_classes
from vlmlab.models.llms.chat_templates import resolve_chat_template
from vlmlab.models.llms.qwen2_vl_text import uses_mrope
from vlmlab.models.loss import chunked_cross_entropy

DEFAULT_IMAGE_TOKEN = "<image>"
# Config fields of models whose forward transforms the logits after lm_head (Gemma 2/3's soft-capping,
# Cohere's and Granite's scaling); the chunked loss computes lm_head(h) alone, so it refuses them.
LOGIT_TRANSFORMS = ("final_logit_softcapping", "logit_scale", "logits_scaling")


class LanguageModel(nn.Module):
    """Wraps any `AutoModelForCausalLM` and its tokenizer.

    Handles, in one place, the traps that differ between model families:
    - the image placeholder is added as a special token, and the embedding matrix grows only when
      the tokenizer outgrows it (Qwen's matrix already has spare rows);
    - a tokenizer without a pad token pads with its UNK (LLaVA's choice for Vicuna) or EOS token;
      padded positions are masked out of attention and loss, so the id itself never matters;
    - the tokenizer's own chat template is used; `chat_template` applies only where it has none;
    - `image_token` is the placeholder that prompts and records put where an image goes (LLaVA's `<image>`);
      a model whose chat template writes its own token for an image part (Qwen2-VL's `<|image_pad|>`, between
      `<|vision_start|>` and `<|vision_end|>`) names it `template_image_token`: that token is the one expanded to
      the image's tokens and replaced by them.
    """

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        chat_template: str | None = None,
        image_token: str = DEFAULT_IMAGE_TOKEN,
        template_image_token: str | None = None,
    ) -> None:
        super().__init__()
        self.model = model
        self.tokenizer = tokenizer
        self.image_token = image_token
        self.template_image_token = template_image_token
        if tokenizer.pad_token is None:
            tokenizer.pad_token = tokenizer.unk_token or tokenizer.eos_token
        token = template_image_token or image_token
        if token not in tokenizer.get_vocab():
            tokenizer.add_special_tokens({"additional_special_tokens": [token]})
        if len(tokenizer) > model.get_input_embeddings().num_embeddings:
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        if tokenizer.chat_template is None:
            if chat_template is None:
                raise ValueError(
                    f"the tokenizer of '{model.config.name_or_path or model.config.model_type}' has no chat "
                    "template: set model.llm.chat_template to a template name (e.g. vicuna_v1, simple) or a "
                    "Jinja string"
                )
            tokenizer.chat_template = resolve_chat_template(chat_template)
        self.image_token_id: int = tokenizer.convert_tokens_to_ids(token)

    @classmethod
    def from_pretrained(
        cls,
        pretrained: str,
        tokenizer: str | PreTrainedTokenizerBase | None = None,
        chat_template: str | None = None,
        image_token: str = DEFAULT_IMAGE_TOKEN,
        dtype: str = "float32",
        attn_implementation: str = "sdpa",
        template_image_token: str | None = None,
    ) -> LanguageModel:
        """Load weights and tokenizer from a hub id or a local folder (`pretrained`, the field name that every
        model preset uses for this)."""
        model = AutoModelForCausalLM.from_pretrained(
            pretrained, dtype=getattr(torch, dtype), attn_implementation=attn_implementation
        )
        if not isinstance(tokenizer, PreTrainedTokenizerBase):
            tokenizer = AutoTokenizer.from_pretrained(tokenizer or pretrained)
        return cls(model, tokenizer, chat_template, image_token, template_image_token)

    @classmethod
    def from_config(
        cls,
        config: dict[str, Any],
        tokenizer: str | PreTrainedTokenizerBase,
        chat_template: str | None = None,
        image_token: str = DEFAULT_IMAGE_TOKEN,
        attn_implementation: str = "sdpa",
        template_image_token: str | None = None,
    ) -> LanguageModel:
        """Random weights from a config dict (`model_type` plus its fields), e.g. a tiny Llama for tests.

        The special token ids are taken from the tokenizer, so they cannot disagree; `vocab_size` is the
        tokenizer's, or the config's where that is larger (a padded embedding matrix, as Qwen's).
        """
        if not isinstance(tokenizer, PreTrainedTokenizerBase):
            tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        fields = dict(config)
        model_type = fields.pop("model_type")
        fields.update(
            vocab_size=max(len(tokenizer), int(fields.get("vocab_size") or 0)),
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
        model_config = AutoConfig.for_model(model_type, **fields)
        model = AutoModelForCausalLM.from_config(model_config, attn_implementation=attn_implementation)
        return cls(model, tokenizer, chat_template, image_token, template_image_token)

    @property
    def uses_mrope(self) -> bool:
        """Whether image tokens take M-RoPE positions (Qwen2-VL's LM), not the next 1-D positions."""
        return uses_mrope(self.model)

    @property
    def hidden_size(self) -> int:
        return self.model.get_input_embeddings().embedding_dim

    def embed(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(input_ids)

    def chunked_loss(
        self,
        inputs_embeds: torch.Tensor,
        attention_mask: torch.Tensor | None,
        labels: torch.Tensor,
        chunk_size: int,
        **kwargs: Any,
    ) -> torch.Tensor:
        """`model(inputs_embeds=..., labels=labels).loss` without full-vocabulary logits: the decoder's last
        hidden states, then `chunked_cross_entropy` on the answer positions (see vlmlab.models.loss)."""
        transforms = [f for f in LOGIT_TRANSFORMS if getattr(self.model.config, f, None) not in (None, 1, 1.0)]
        if transforms:
            raise ValueError(
                f"'{self.model.config.model_type}' transforms its logits after lm_head ({', '.join(transforms)}), "
                "which the chunked loss does not reproduce: set the stage's loss: full"
            )
        kwargs.setdefault("use_cache", False)  # a loss needs no KV cache
        decoder = self.model.get_decoder()
        hidden = decoder(inputs_embeds=inputs_embeds, attention_mask=attention_mask, **kwargs).last_hidden_state
        return chunked_cross_entropy(hidden, labels, self.model.get_output_embeddings(), chunk_size)

    def decoder_layer_classes(self) -> set[type[nn.Module]]:
        """The decoder block classes (for FSDP auto-wrap and activation checkpointing)."""
        return repeated_block_classes(self.model)
