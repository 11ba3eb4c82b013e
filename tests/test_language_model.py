"""LanguageModel: image token, embedding resize, pad token, chat templates, loading from a folder."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from vlmlab.data.synthetic import tokenizer_corpus
from vlmlab.models.llms import LanguageModel
from vlmlab.models.llms.tiny_tokenizer import train_tiny_tokenizer

LLAMA = dict(model_type="llama", hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4)


def fresh_tokenizer():
    return train_tiny_tokenizer(tokenizer_corpus(num_samples=50), vocab_size=280)


def test_from_config_adds_image_token_and_sizes_vocab() -> None:
    tokenizer = fresh_tokenizer()
    assert "<image>" not in tokenizer.get_vocab()
    llm = LanguageModel.from_config(LLAMA, tokenizer, chat_template="simple")
    assert llm.tokenizer.convert_ids_to_tokens(llm.image_token_id) == "<image>"
    assert llm.tokenizer.tokenize("a <image> b").count("<image>") == 1
    assert llm.model.get_input_embeddings().num_embeddings == len(llm.tokenizer)
    assert llm.hidden_size == 32
    assert {c.__name__ for c in llm.decoder_layer_classes()} == {"LlamaDecoderLayer"}

    # A config may reserve a larger (padded) embedding matrix than the tokenizer fills, as Qwen's does.
    padded = LanguageModel.from_config({**LLAMA, "vocab_size": 1024}, fresh_tokenizer(), chat_template="simple")
    assert padded.model.get_input_embeddings().num_embeddings == 1024 > len(padded.tokenizer)


def test_from_pretrained_folder_resizes_embeddings_and_sets_pad(tmp_path) -> None:
    tokenizer = fresh_tokenizer()
    tokenizer.pad_token = None
    tokenizer.chat_template = "{% for m in messages %}{{ m['content'] }}{% endfor %}"
    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1, num_attention_heads=4
        )
    )
    model.save_pretrained(tmp_path)
    tokenizer.save_pretrained(tmp_path)
    llm = LanguageModel.from_pretrained(str(tmp_path), chat_template="simple")
    assert llm.model.get_input_embeddings().num_embeddings == len(tokenizer) + 1  # grew by <image>
    assert llm.tokenizer.pad_token == "<unk>"
    assert llm.tokenizer.chat_template == tokenizer.chat_template  # the model's own template wins
    out = llm.model(input_ids=torch.tensor([[llm.image_token_id, 5]]))
    assert out.logits.shape == (1, 2, len(tokenizer) + 1)


def test_missing_chat_template_is_an_error(tmp_path) -> None:
    tokenizer = fresh_tokenizer()
    with pytest.raises(ValueError, match="has no chat template: set model.llm.chat_template"):
        LanguageModel.from_config(LLAMA, tokenizer)


def test_unknown_chat_template_name_is_an_error() -> None:
    with pytest.raises(ValueError, match="neither a known name"):
        LanguageModel.from_config(LLAMA, fresh_tokenizer(), chat_template="vicuna")


def test_tiny_tokenizer_is_deterministic_and_round_trips(tmp_path) -> None:
    first, second = fresh_tokenizer(), fresh_tokenizer()
    assert first.get_vocab() == second.get_vocab()
    text = "What color is the shape in the top left? 42 unseen-wörd"
    assert first.decode(first(text)["input_ids"]) == text
    first.save_pretrained(tmp_path)
    assert AutoTokenizer.from_pretrained(tmp_path)(text)["input_ids"] == first(text)["input_ids"]
