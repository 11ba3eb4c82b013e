"""Datasets of LLaVA-format records (`id`, `image`, `conversations`) and their collation into batches."""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from PIL import Image
from torch.utils.data import Dataset

from vlmlab.data.chat_format import IGNORE_INDEX, ChatFormatter, SampleError, to_messages
from vlmlab.data.image_processing import ImageProcessor

log = logging.getLogger(__name__)

BadRecordPolicy = Literal["raise", "skip"]


def load_records(path: str | Path) -> list[dict[str, Any]]:
    """A LLaVA JSON file: a list of records."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"dataset file {path} does not exist; check the data config's paths")
    records = json.loads(path.read_text())
    if not isinstance(records, list):
        raise ValueError(f"{path} must hold a JSON list of records (LLaVA format), found {type(records).__name__}")
    return records


def image_paths(record: dict[str, Any]) -> list[str]:
    """The record's images: LLaVA's `image` is absent (text-only), one path, or a list of paths."""
    image = record.get("image")
    if image is None:
        return []
    return [image] if isinstance(image, str) else list(image)


class ConversationDataset(Dataset):
    """Encoded samples from LLaVA-format records.

    `prompt_only=True` encodes the conversation up to its last answer (for generation) and keeps
    the record's reference `answers`; `blank_images=True` replaces every image by a blank one.
    `on_bad_record="skip"` turns a record that cannot become a sample into a logged marker
    `{"skipped": reason}` that `collate` drops and counts; `"raise"` stops with the record named.
    """

    def __init__(
        self,
        records: Sequence[dict[str, Any]],
        image_root: str | Path,
        formatter: ChatFormatter,
        image_processor: ImageProcessor,
        task: str,
        source: str = "",
        prompt_only: bool = False,
        blank_images: bool = False,
        on_bad_record: BadRecordPolicy = "raise",
    ) -> None:
        self.records = records
        self.image_root = Path(image_root)
        self.formatter = formatter
        self.image_processor = image_processor
        self.task = task
        self.source = source or task
        self.prompt_only = prompt_only
        self.blank_images = blank_images
        self.on_bad_record = on_bad_record

    def __len__(self) -> int:
        return len(self.records)

    def _load_image(self, relative: str) -> torch.Tensor:
        if self.blank_images:
            return self.image_processor.blank()
        path = self.image_root / relative
        try:
            with Image.open(path) as image:
                return self.image_processor(image)
        except (OSError, ValueError) as err:
            raise SampleError(
                "bad_image", f"image {path} cannot be read ({err}); check the source's image_root and the file"
            ) from err

    def encode(self, record: dict[str, Any]) -> dict[str, Any]:
        conversations = record.get("conversations")
        if not isinstance(conversations, list) or not conversations:
            raise SampleError("malformed", "the record has no 'conversations' list")
        messages = to_messages(conversations)
        paths = image_paths(record)
        placeholders = sum(m["content"].count(self.formatter.image_token) for m in messages)
        if placeholders != len(paths):
            raise SampleError(
                "image_count",
                f"the conversations hold {placeholders} {self.formatter.image_token} placeholders but the record "
                f"has {len(paths)} images; each image needs exactly one placeholder",
            )
        if self.prompt_only:
            # References: the record's `answers` (all accepted answers) or else its last answer turn.
            last = messages[-1]
            answers = record.get("answers") or ([last["content"]] if last["role"] == "assistant" else [])
            sample = {"input_ids": self.formatter.encode_prompt(conversations), "answers": answers}
        else:
            encoded = self.formatter.encode(conversations)
            sample = {"input_ids": encoded.input_ids, "labels": encoded.labels}
        pixels = [self._load_image(p) for p in paths]
        sample["pixel_values"] = torch.stack(pixels) if pixels else None
        sample.update(id=record.get("id"), task=self.task, source=self.source)
        return sample

    def __getitem__(self, index: int) -> dict[str, Any]:
        record = self.records[index]
        try:
            return self.encode(record)
        except SampleError as err:
            message = f"source '{self.source}', record {record.get('id', f'#{index}')!r}: {err}"
            if self.on_bad_record == "skip":
                log.warning("skipping a bad record (%s) - %s", err.reason, message)
                return {"skipped": err.reason}
            raise SampleError(err.reason, message) from err


def collate(samples: Sequence[dict[str, Any]], pad_token_id: int, padding_side: str = "right") -> dict[str, Any]:
    """Pad to the longest sample (right for training, left for generation) and stack all images in order.

    Skipped records are dropped and counted by reason under `skipped`; a batch whose records were all
    skipped holds only that count.
    """
    skipped = dict(Counter(s["skipped"] for s in samples if "skipped" in s))
    samples = [s for s in samples if "skipped" not in s]
    if not samples:
        return {"skipped": skipped}
    longest = max(len(s["input_ids"]) for s in samples)
    batch_size = len(samples)
    input_ids = torch.full((batch_size, longest), pad_token_id, dtype=torch.long)
    labels = torch.full((batch_size, longest), IGNORE_INDEX, dtype=torch.long)
    attention_mask = torch.zeros((batch_size, longest), dtype=torch.long)
    for row, sample in enumerate(samples):
        n = len(sample["input_ids"])
        span = slice(longest - n, longest) if padding_side == "left" else slice(0, n)
        input_ids[row, span] = sample["input_ids"]
        attention_mask[row, span] = 1
        if "labels" in sample:
            labels[row, span] = sample["labels"]
    images = [s["pixel_values"] for s in samples if s["pixel_values"] is not None]
    batch: dict[str, Any] = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": torch.cat(images) if images else None,
        "ids": [s["id"] for s in samples],
        "tasks": [s["task"] for s in samples],
        "skipped": skipped,
    }
    if "labels" in samples[0]:
        batch["labels"] = labels
    if "answers" in samples[0]:
        batch["answers"] = [s["answers"] for s in samples]
    return batch
