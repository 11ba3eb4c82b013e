"""Answering prompts with a loaded model: prompts formatted exactly as in training, generation options,
stop strings, and token streaming for the chat."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from transformers import TextStreamer

from vlmlab.data.chat_format import ChatFormatter
from vlmlab.data.conversation_dataset import collate
from vlmlab.data.image_processing import ProcessedImage, ResizeMode, encoder_image_processor, read_image
from vlmlab.models.vlm import VisionLanguageModel


@dataclass(frozen=True)
class GenerationOptions:
    max_new_tokens: int = 64
    do_sample: bool = False  # greedy unless True
    temperature: float = 1.0  # sampling only
    top_p: float = 1.0  # sampling only: nucleus mass kept
    stop: Sequence[str] = field(default_factory=tuple)  # the answer ends before the first of these

    def generate_kwargs(self, tokenizer: Any) -> dict[str, Any]:
        kwargs: dict[str, Any] = {"max_new_tokens": self.max_new_tokens, "do_sample": self.do_sample}
        if self.do_sample:
            kwargs.update(temperature=self.temperature, top_p=self.top_p)
        if self.stop:  # transformers stops decoding there (it checks the generated ids, inputs_embeds or not)
            kwargs.update(stop_strings=list(self.stop), tokenizer=tokenizer)
        return kwargs


def cut_at_stop(text: str, stop: Sequence[str]) -> str:
    """`text` up to (without) the first occurrence of any stop string."""
    ends = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    return text[: min(ends)] if ends else text


class Assistant:
    """Turns prompts and images into model inputs the way training did (the LLM's chat template,
    `<image>` expanded to each image's token count, the run's image resizing and tiling) and decodes answers."""

    def __init__(
        self,
        model: VisionLanguageModel,
        image_resize: ResizeMode,
        system: str | None = None,
        anyres: Mapping[str, Any] | None = None,
    ) -> None:
        self.model = model
        self.tokenizer = model.llm.tokenizer
        self.image_token = model.llm.image_token
        max_length = int(getattr(model.llm.model.config, "max_position_embeddings", 0) or 1_000_000)
        self.formatter = ChatFormatter(
            self.tokenizer, self.image_token, model.num_image_tokens, max_length, model.llm.template_image_token
        )
        self.images = encoder_image_processor(model.encoder, image_resize, anyres)
        self.layout = model.image_layout
        self.system = system

    def load_image(self, image: str | Path | bytes) -> ProcessedImage:
        """The image at a path, or an image file's bytes, as the model takes it; an `ImageLoadError` naming it
        otherwise."""
        if isinstance(image, bytes):
            return self.images(read_image({"bytes": image, "path": None}))
        return self.images(read_image(Path(image)))

    def user_message(self, prompt: str, num_images: int) -> dict[str, str]:
        """The user turn: `prompt` with one `<image>` per image, in front of the text when it names none
        (as the training conversations put them)."""
        placed = prompt.count(self.image_token)
        if placed == 0:
            prompt = f"{self.image_token}\n" * num_images + prompt
        elif placed != num_images:
            raise ValueError(
                f"the prompt holds {placed} {self.image_token} placeholders but {num_images} images were given; "
                f"give one placeholder per image, or none to put the images first"
            )
        return {"role": "user", "content": prompt}

    def encode(self, messages: Sequence[dict[str, str]], images: Sequence[ProcessedImage]) -> dict[str, Any]:
        """A sample for `collate`: the conversation so far, ending in the generation prompt."""
        if self.system and (not messages or messages[0]["role"] != "system"):
            messages = [{"role": "system", "content": self.system}, *messages]
        grids = [image.grid for image in images]
        return {
            "input_ids": self.formatter.encode_prompt(messages, [self.layout.count(g) for g in grids]),
            "pixel_values": torch.cat([image.pixels for image in images]) if images else None,
            "image_grids": torch.tensor(grids, dtype=torch.long) if images else None,
            "id": None,
            "task": "generate",
        }

    def _generate(self, samples: Sequence[dict[str, Any]], options: GenerationOptions, **kwargs: Any) -> torch.Tensor:
        batch = collate(samples, self.tokenizer.pad_token_id, padding_side="left")
        return self.model.generate_from_batch(batch, **options.generate_kwargs(self.tokenizer), **kwargs)

    def answer(self, samples: Sequence[dict[str, Any]], options: GenerationOptions) -> list[str]:
        """One answer per sample (a left-padded batch)."""
        texts = self.tokenizer.batch_decode(self._generate(samples, options), skip_special_tokens=True)
        return [cut_at_stop(text, options.stop).strip() for text in texts]

    def stream(self, sample: dict[str, Any], options: GenerationOptions, out: TextIO) -> str:
        """Answer one sample, writing its text to `out` as the tokens arrive; returns the whole answer."""
        streamer = StopStringStreamer(self.tokenizer, options.stop, out)
        self._generate([sample], options, streamer=streamer)
        return streamer.shown


@dataclass(frozen=True)
class Request:
    """A prompt about images (paths or image files' bytes; none: text only)."""

    prompt: str
    images: Sequence[str | Path | bytes] = ()
    label: str = ""  # names the request in an error about it, e.g. "requests line 3"


def answer_batches(
    assistant: Assistant, requests: Sequence[Request], options: GenerationOptions, batch_size: int
) -> Iterator[list[str]]:
    """The answers to `requests`, `batch_size` at a time (left-padded batches), one list per batch in order: what
    `vlmlab-generate` and a model logged to MLflow answer. A request that cannot be encoded (an unreadable image,
    placeholders that do not match its images) is a ValueError led by its label."""
    for start in range(0, len(requests), batch_size):
        samples = []
        for request in requests[start : start + batch_size]:
            try:
                images = [assistant.load_image(image) for image in request.images]
                samples.append(assistant.encode([assistant.user_message(request.prompt, len(images))], images))
            except ValueError as err:
                raise ValueError(f"{request.label}: {err}" if request.label else str(err)) from err
        yield assistant.answer(samples, options)


class StopStringStreamer(TextStreamer):
    """Writes decoded text as it arrives, without leading whitespace and ending before a stop string; it
    holds back the last few characters that could still start one."""

    def __init__(self, tokenizer: Any, stop: Sequence[str], out: TextIO) -> None:
        super().__init__(tokenizer, skip_prompt=True, skip_special_tokens=True)
        self.stop, self.out = list(stop), out
        self.text, self.shown = "", ""

    def on_finalized_text(self, text: str, stream_end: bool = False) -> None:
        self.text += text
        visible = cut_at_stop(self.text.lstrip(), self.stop)
        stopped = len(visible) < len(self.text.lstrip())
        hold = 0 if stream_end or stopped else max((len(s) - 1 for s in self.stop), default=0)
        upto = max(len(self.shown), len(visible) - hold)
        if upto > len(self.shown):
            self.out.write(visible[len(self.shown) : upto])
            self.out.flush()
            self.shown = visible[:upto]
        if stream_end:
            self.shown = self.shown.rstrip()
