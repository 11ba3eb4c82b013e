"""`ChatFormatter`: a conversation -> token ids and labels, through the LLM's own chat template.

The ids are those a transformers processor gives for the same messages: a template written for content
parts (the llava-hf processors' templates: `[{"type": "image"}, {"type": "text", "text": ...}]`), or one that
writes the model's own image token for an image part (Qwen2-VL's), is given each message's `<image>`
placeholders and text as parts, and the tokenizer's own special tokens (Llama's BOS) are
added unless the rendered text already starts with BOS (`ProcessorMixin.apply_chat_template`, transformers 5.24).

Label masking works for any template: each assistant turn's text span is found by rendering the
conversation up to that turn with and without the answer; tokens that start inside a span are
trained on (the answer and the template's end-of-turn tokens), every other token gets -100.
Each `<image>` placeholder is then expanded into its image's count of image token ids: `num_image_tokens`,
or per image (tiled images differ, `vlmlab.models.image_layout`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers import PreTrainedTokenizerBase

IGNORE_INDEX = -100
ROLES = {"human": "user", "user": "user", "gpt": "assistant", "assistant": "assistant", "system": "system"}


class SampleError(ValueError):
    """A record that cannot become a training sample; `reason` is a short key for counting skips."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass
class EncodedText:
    input_ids: torch.Tensor  # (T,)
    labels: torch.Tensor  # (T,), IGNORE_INDEX outside answers


def to_messages(conversations: Sequence[dict]) -> list[dict[str, str]]:
    """LLaVA turns ({"from": "human"|"gpt", "value"}) or chat messages ({"role", "content"}) -> chat messages."""
    messages = []
    for i, turn in enumerate(conversations):
        if not isinstance(turn, dict):
            raise SampleError("malformed", f"turn {i} must be an object with 'from' and 'value', got {turn!r}")
        speaker = turn.get("from", turn.get("role"))
        text = turn.get("value", turn.get("content"))
        if speaker not in ROLES or not isinstance(text, str):
            raise SampleError(
                "malformed",
                f"turn {i} needs 'from' in {sorted(ROLES)} and a string 'value', got {dict(turn)!r}",
            )
        messages.append({"role": ROLES[speaker], "content": text})
    return messages


def content_parts(text: str, image_token: str) -> list[dict[str, str]]:
    """A message's text as chat-template content parts, images in place: `"<image>\\nWhat is it?"` ->
    `[{"type": "image"}, {"type": "text", "text": "What is it?"}]`. The text beside an image is stripped of
    its surrounding whitespace (the template spaces parts as its model expects); empty text is dropped."""
    parts: list[dict[str, str]] = []
    for k, piece in enumerate(text.split(image_token)):
        if k:
            parts.append({"type": "image"})
        if piece.strip():
            parts.append({"type": "text", "text": piece.strip()})
    return parts


def renders_image_parts(tokenizer: PreTrainedTokenizerBase, image_token: str) -> bool:
    """Whether the chat template writes `image_token` for a `{"type": "image"}` part (Qwen2-VL's template does,
    between its vision start and end tokens, and renders string contents as well)."""
    try:
        text = tokenizer.apply_chat_template([{"role": "user", "content": [{"type": "image"}]}], tokenize=False)
    except Exception:  # a template for string contents only
        return False
    return image_token in text


def takes_content_parts(tokenizer: PreTrainedTokenizerBase) -> bool:
    """Whether the tokenizer's chat template renders a message's content only from a list of parts (as the
    llava-hf templates do) rather than from a string (as LLM templates do); vLLM's `chat_template_content_format`
    tells the two apart the same way, by what the template does with each."""
    probe = "vlmlab-content-probe"

    def renders(content: Any) -> bool:
        try:
            text = tokenizer.apply_chat_template([{"role": "user", "content": content}], tokenize=False)
        except Exception:  # a template that indexes or iterates the content fails on the other form
            return False
        return probe in text

    return not renders(probe) and renders([{"type": "text", "text": probe}])


class ChatFormatter:
    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        image_token: str,
        num_image_tokens: int,
        max_length: int,
        template_image_token: str | None = None,
    ) -> None:
        """`image_token`: the placeholder of prompts and records; `template_image_token`: the token the template
        writes for an image part where it is another (`LanguageModel.template_image_token`), which is expanded."""
        self.tokenizer = tokenizer
        self.image_token = image_token
        self.template_image_token = template_image_token or image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.template_image_token)
        self.num_image_tokens = num_image_tokens
        self.max_length = max_length
        self.uses_parts = takes_content_parts(tokenizer) or (
            template_image_token is not None and renders_image_parts(tokenizer, template_image_token)
        )

    def _render(self, messages: list[dict[str, str]], add_generation_prompt: bool) -> str:
        if self.uses_parts:
            messages = [dict(m, content=content_parts(m["content"], self.image_token)) for m in messages]
        elif self.template_image_token != self.image_token:
            messages = [
                dict(m, content=m["content"].replace(self.image_token, self.template_image_token)) for m in messages
            ]
        return self.tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)

    def _tokenize(self, text: str) -> tuple[list[int], list[tuple[int, int]]]:
        # As transformers' processors: the tokenizer's special tokens unless the template put BOS first already
        # (never BOS twice). Added special tokens have empty offsets, so they never fall inside an answer span.
        bos = self.tokenizer.bos_token
        add_special_tokens = not (bos is not None and text.startswith(bos))
        enc = self.tokenizer(text, add_special_tokens=add_special_tokens, return_offsets_mapping=True)
        return enc["input_ids"], enc["offset_mapping"]

    def _expand_images(
        self, ids: list[int], labels: list[int], image_tokens: Sequence[int] | None
    ) -> tuple[list[int], list[int]]:
        """Each placeholder -> its image's tokens (`image_tokens[k]` for the k-th; `num_image_tokens` if None)."""
        counts = iter(image_tokens) if image_tokens is not None else None
        out_ids: list[int] = []
        out_labels: list[int] = []
        for token, label in zip(ids, labels):
            if token == self.image_token_id:
                count = self.num_image_tokens if counts is None else next(counts, None)
                if count is None:
                    raise SampleError(
                        "image_count", f"the text holds more {self.image_token} than the {len(image_tokens)} images"
                    )
                out_ids += [token] * count
                out_labels += [IGNORE_INDEX] * count
            else:
                out_ids.append(token)
                out_labels.append(label)
        return out_ids, out_labels

    def encode(self, conversations: Sequence[dict], image_tokens: Sequence[int] | None = None) -> EncodedText:
        """Token ids and labels of a whole conversation, for training; `image_tokens`: each image's token count."""
        messages = to_messages(conversations)
        if not any(m["role"] == "assistant" for m in messages):
            raise SampleError("no_answer", "the conversation has no assistant turn to train on")
        full = self._render(messages, add_generation_prompt=False)
        spans = []
        for i, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            prefix = self._render(messages[:i], add_generation_prompt=True)
            upto = self._render(messages[: i + 1], add_generation_prompt=False)
            if not (upto.startswith(prefix) and full.startswith(upto)):
                raise ValueError(
                    "the chat template does not render conversations incrementally (turn "
                    f"{i} changes earlier text), so answer tokens cannot be located; use a template that does"
                )
            spans.append((len(prefix), len(upto)))
        ids, offsets = self._tokenize(full)
        labels = [
            token if any(start <= begin < end for start, end in spans) else IGNORE_INDEX
            for token, (begin, _) in zip(ids, offsets)
        ]
        ids, labels = self._expand_images(ids, labels, image_tokens)
        ids, labels = self._truncate(ids, labels)
        return EncodedText(torch.tensor(ids), torch.tensor(labels))

    def encode_prompt(self, conversations: Sequence[dict], image_tokens: Sequence[int] | None = None) -> torch.Tensor:
        """Token ids of the conversation up to (without) its last answer, ending in the generation prompt."""
        messages = to_messages(conversations)
        if messages and messages[-1]["role"] == "assistant":
            messages = messages[:-1]
        ids, _ = self._tokenize(self._render(messages, add_generation_prompt=True))
        ids, _ = self._expand_images(ids, [IGNORE_INDEX] * len(ids), image_tokens)
        if len(ids) > self.max_length:
            raise SampleError("too_long", f"the prompt has {len(ids)} tokens, more than max_length={self.max_length}")
        return torch.tensor(ids)

    def _truncate(self, ids: list[int], labels: list[int]) -> tuple[list[int], list[int]]:
        if len(ids) <= self.max_length:
            return ids, labels
        # A cut through or before an image's token run would leave its features without placeholders.
        if self.image_token_id in ids[self.max_length :]:
            raise SampleError(
                "image_truncated",
                f"max_length={self.max_length} cuts off (part of) an image's tokens ({len(ids)} tokens in all); "
                "raise data.max_length",
            )
        ids, labels = ids[: self.max_length], labels[: self.max_length]
        if all(label == IGNORE_INDEX for label in labels):
            raise SampleError(
                "answer_truncated", f"max_length={self.max_length} cuts off every answer token; raise data.max_length"
            )
        return ids, labels
