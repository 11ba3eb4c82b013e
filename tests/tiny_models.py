"""Configs of the tiny transformers models that several tests build (random weights, nothing downloaded)."""

from __future__ import annotations

from transformers import LlamaConfig, PreTrainedTokenizerBase


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
