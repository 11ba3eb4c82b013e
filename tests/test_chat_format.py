"""ChatFormatter: answer-only labels through real chat templates, image expansion, truncation."""

from __future__ import annotations

import copy

import pytest
import torch
from tokenizers import processors
from transformers import PreTrainedTokenizerFast

from vlmlab.data.chat_format import IGNORE_INDEX, ChatFormatter, SampleError, content_parts
from vlmlab.models.llms.chat_templates import CHAT_TEMPLATES

CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
CONVERSATION = [
    {"from": "human", "value": "<image>\nWhat color is the shape in the top left?"},
    {"from": "gpt", "value": "red"},
    {"from": "human", "value": "How many shapes are there?"},
    {"from": "gpt", "value": "2"},
]


@pytest.fixture
def chat_tokenizer(tokenizer):
    """A copy of the session tokenizer with the image token and ChatML's turn markers."""
    tokenizer = copy.deepcopy(tokenizer)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>", "<|im_start|>", "<|im_end|>"]})
    return tokenizer


@pytest.mark.parametrize("template", ["simple", "vicuna_v1", "chatml"])
def test_only_answers_and_end_of_turn_are_labelled(chat_tokenizer, template: str) -> None:
    chat_tokenizer.chat_template = CHATML if template == "chatml" else CHAT_TEMPLATES[template]
    formatter = ChatFormatter(chat_tokenizer, "<image>", num_image_tokens=5, max_length=512)
    encoded = formatter.encode(CONVERSATION)
    labelled = encoded.labels != IGNORE_INDEX
    assert torch.equal(encoded.input_ids[labelled], encoded.labels[labelled])
    text = chat_tokenizer.decode(encoded.labels[labelled])
    end = "<|im_end|>" if template == "chatml" else "</s>"
    assert text.replace(" ", "").replace("\n", "") == f"red{end}2{end}"
    # Everything up to the first answer (template, question, image, generation prompt) is masked.
    first = int(labelled.nonzero()[0])
    generation_prompt = "<|im_start|>assistant\n" if template == "chatml" else "ASSISTANT:"
    assert chat_tokenizer.decode(encoded.input_ids[:first]).endswith(generation_prompt)


def test_image_placeholder_expands_to_image_tokens(chat_tokenizer) -> None:
    chat_tokenizer.chat_template = CHAT_TEMPLATES["simple"]
    formatter = ChatFormatter(chat_tokenizer, "<image>", num_image_tokens=7, max_length=512)
    image_id = chat_tokenizer.convert_tokens_to_ids("<image>")
    encoded = formatter.encode(CONVERSATION)
    positions = (encoded.input_ids == image_id).nonzero().flatten()
    assert len(positions) == 7 and torch.equal(positions, torch.arange(positions[0], positions[0] + 7))
    assert (encoded.labels[positions] == IGNORE_INDEX).all()
    prompt = formatter.encode_prompt(CONVERSATION[:1])
    assert int((prompt == image_id).sum()) == 7
    assert chat_tokenizer.decode(prompt).endswith("ASSISTANT:")


def test_prompt_is_the_training_prefix(chat_tokenizer) -> None:
    chat_tokenizer.chat_template = CHAT_TEMPLATES["simple"]
    formatter = ChatFormatter(chat_tokenizer, "<image>", num_image_tokens=3, max_length=512)
    full = formatter.encode(CONVERSATION[:2])
    prompt = formatter.encode_prompt(CONVERSATION[:2])
    assert torch.equal(full.input_ids[: len(prompt)], prompt)
    assert (full.labels[: len(prompt)] == IGNORE_INDEX).all() and full.labels[len(prompt)] != IGNORE_INDEX


def test_truncation_errors_name_the_fix(chat_tokenizer) -> None:
    chat_tokenizer.chat_template = CHAT_TEMPLATES["simple"]
    with pytest.raises(SampleError, match=r"cuts off \(part of\) an image") as err:
        ChatFormatter(chat_tokenizer, "<image>", num_image_tokens=50, max_length=20).encode(CONVERSATION)
    assert err.value.reason == "image_truncated"
    with pytest.raises(SampleError, match="cuts off every answer token") as err:
        ChatFormatter(chat_tokenizer, "<image>", num_image_tokens=2, max_length=12).encode(CONVERSATION)
    assert err.value.reason == "answer_truncated"


def test_malformed_turns_are_rejected(chat_tokenizer) -> None:
    chat_tokenizer.chat_template = CHAT_TEMPLATES["simple"]
    formatter = ChatFormatter(chat_tokenizer, "<image>", num_image_tokens=2, max_length=64)
    with pytest.raises(SampleError, match="turn 1 needs 'from'"):
        formatter.encode([{"from": "human", "value": "hi"}, {"from": "robot", "value": "x"}])
    with pytest.raises(SampleError, match="no assistant turn"):
        formatter.encode([{"from": "human", "value": "hi"}])


@pytest.mark.parametrize("template", ["vicuna_v1", "chatml"])
def test_a_tokenizer_that_adds_bos_gets_exactly_one(chat_tokenizer, template: str) -> None:
    """Llama-style tokenizers add BOS themselves: vlmlab adds it where the template has none (ChatML) and not
    again where it has one (vicuna_v1 starts with it), as transformers' processors do."""
    backend = chat_tokenizer.backend_tokenizer
    bos = [(chat_tokenizer.bos_token, chat_tokenizer.bos_token_id)]
    backend.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B", special_tokens=bos)
    llama_like = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    llama_like.chat_template = CHATML if template == "chatml" else CHAT_TEMPLATES[template]
    formatter = ChatFormatter(llama_like, "<image>", num_image_tokens=2, max_length=512)
    for ids in (formatter.encode(CONVERSATION).input_ids, formatter.encode_prompt(CONVERSATION[:1])):
        assert ids[0] == llama_like.bos_token_id and int((ids == llama_like.bos_token_id).sum()) == 1
    assert formatter.encode(CONVERSATION).labels[0] == IGNORE_INDEX


def test_a_template_of_content_parts_gets_the_placeholders_as_parts(chat_tokenizer) -> None:
    parts_template = (
        "{% for m in messages %}{{ m['role'] }}:{% for p in m['content'] %}"
        "{% if p['type'] == 'image' %}[<image>]{% else %} {{ p['text'] }}{% endif %}{% endfor %}\n{% endfor %}"
    )
    chat_tokenizer.chat_template = parts_template
    formatter = ChatFormatter(chat_tokenizer, "<image>", num_image_tokens=1, max_length=512)
    assert formatter.uses_parts
    ids = formatter.encode_prompt([{"from": "human", "value": "Compare <image>\nwith <image> please"}])
    assert chat_tokenizer.decode(ids).strip() == "user: Compare[<image>] with[<image>] please"
    assert content_parts("<image>\n  <image>x ", "<image>") == [{"type": "image"}] * 2 + [{"type": "text", "text": "x"}]
    chat_tokenizer.chat_template = CHATML  # a template of strings gets the text as it is
    assert not ChatFormatter(chat_tokenizer, "<image>", num_image_tokens=1, max_length=512).uses_parts
