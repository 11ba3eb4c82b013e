"""Datasets of records (`id`, `image`, `conversations`, `answers`; see `formats`) and their collation."""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from typing import Any, Literal, Protocol, TypedDict

import torch
from torch.utils.data import Dataset, default_collate

from vlmlab.data.chat_format import IGNORE_INDEX, ChatFormatter, SampleError, to_messages
from vlmlab.data.image_processing import (
    ANY_FOLDER,
    ImagePolicy,
    ImageProcessor,
    NativeImageProcessor,
    ProcessedImage,
    image_size,
    read_image,
)
from vlmlab.models.batch import Batch
from vlmlab.models.image_layout import ImageTokenLayout, NativeTokenLayout

log = logging.getLogger(__name__)

BadRecordPolicy = Literal["raise", "skip"]


class Sample(TypedDict, total=False):
    """One record as the model takes it (`ConversationDataset[i]`); a record that cannot become one, under
    `on_bad_record=skip`, is only `skipped` (the reason), `id` and `message`, which `collate` counts and drops."""

    input_ids: torch.Tensor
    labels: torch.Tensor  # training samples: the answer tokens, -100 elsewhere
    answers: list[str]  # prompt-only samples: the references
    pixel_values: torch.Tensor | None  # [images or tiles, 3, H, W]
    image_features: torch.Tensor | None  # from the feature cache, in place of pixel_values
    image_grids: torch.Tensor | None  # [images, 4]
    id: Any
    index: int
    task: str
    source: str
    skipped: str
    message: str


class StoredImageFeatures(Protocol):
    """Encoder features stored per record (`vlmlab.data.feature_cache.FeatureStore`), read instead of its images."""

    def get(self, index: int) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Record `index`'s features (tiles, N, d) and image grids (k, 4), or (None, None) without images;
        raises SampleError for a record whose images could not be stored."""


MISSING_IMAGE_HINT = "check the split's image folder (`images`) and the file"
BAD_IMAGE_HINT = "replace or remove the file"


def record_images(record: dict[str, Any]) -> list[Any]:
    """The record's images: `image` is absent (text-only), one entry, or a list (paths or HF image dicts)."""
    image = record.get("image")
    if image is None:
        return []
    return [image] if isinstance(image, str | dict) else list(image)


class ConversationDataset(Dataset):
    """Encoded samples from records (image paths already resolved by the format readers).

    `prompt_only=True` encodes the conversation up to its last answer (for generation) and keeps
    the record's reference `answers`; `blank_images=True` replaces every image by a blank one.
    `on_bad_record="skip"` turns a record that cannot become a sample into a logged marker
    `{"skipped": reason, "id", "message"}` that `collate` drops and counts; `"raise"` stops with the record named.
    With `features` (a frozen encoder's `FeatureStore`), samples carry the stored `image_features` instead
    of `pixel_values`: no image is read. `origin` (the file the records come from) is named in errors.
    `image_layout` (the model's) gives each image's token count from its grid (tiled images differ);
    without it every image takes the formatter's `num_image_tokens`. `image_policy`: the folder images must lie
    in and their pixel cap (an image outside or above it is a bad record).
    Samples carry `pixel_values` (every tile of every image, in order) and `image_grids` (one row per image).
    """

    def __init__(
        self,
        records: Sequence[dict[str, Any]],
        formatter: ChatFormatter,
        image_processor: ImageProcessor | NativeImageProcessor,
        task: str,
        source: str = "",
        prompt_only: bool = False,
        blank_images: bool = False,
        on_bad_record: BadRecordPolicy = "raise",
        features: StoredImageFeatures | None = None,
        origin: str | None = None,
        image_layout: ImageTokenLayout | NativeTokenLayout | None = None,
        image_policy: ImagePolicy = ANY_FOLDER,
    ) -> None:
        self.records = records
        self.image_policy = image_policy
        self.image_layout = image_layout
        self.origin = origin
        self.formatter = formatter
        self.image_processor = image_processor
        self.task = task
        self.source = source or task
        self.prompt_only = prompt_only
        self.blank_images = blank_images
        self.on_bad_record = on_bad_record
        self.features = features

    def __len__(self) -> int:
        return len(self.records)

    def with_features(self, features: StoredImageFeatures) -> ConversationDataset:
        """This dataset reading `features` instead of its images."""
        return ConversationDataset(
            self.records,
            self.formatter,
            self.image_processor,
            self.task,
            self.source,
            self.prompt_only,
            self.blank_images,
            self.on_bad_record,
            features,
            self.origin,
            self.image_layout,
            self.image_policy,
        )

    def load_image(self, image: str | dict[str, Any]) -> ProcessedImage:
        """One of a record's images as the model takes it (blank for the blind baseline)."""
        if self.blank_images:  # tiled or native: as many tokens as the image would take, so its size is read
            sized = self.image_processor.size_sets_tokens
            size = image_size(image, MISSING_IMAGE_HINT, BAD_IMAGE_HINT, self.image_policy) if sized else None
            return self.image_processor.blank(size)
        return self.image_processor(read_image(image, MISSING_IMAGE_HINT, BAD_IMAGE_HINT, self.image_policy))

    def image_tokens(self, grids: torch.Tensor | None) -> list[int] | None:
        """Each image's token count, when the layout is known."""
        if self.image_layout is None or grids is None:
            return None
        return [self.image_layout.count(grid) for grid in grids.tolist()]

    def encode(self, record: dict[str, Any], index: int | None = None) -> Sample:
        if not isinstance(record, dict):
            raise SampleError("malformed", f"a record must be a JSON object, got {type(record).__name__}")
        if "error" in record:  # the format reader found this entry unusable
            raise SampleError(*record["error"])
        conversations = record.get("conversations")
        if not isinstance(conversations, list) or not conversations:
            raise SampleError("malformed", "the record has no 'conversations' list")
        messages = to_messages(conversations)
        paths = record_images(record)
        placeholders = sum(m["content"].count(self.formatter.image_token) for m in messages)
        if placeholders != len(paths):
            raise SampleError(
                "image_count",
                f"the conversations hold {placeholders} {self.formatter.image_token} placeholders but the record "
                f"has {len(paths)} images; each image needs exactly one placeholder",
            )
        sample: Sample = {}
        if self.features is not None and index is not None:
            sample["pixel_values"] = None
            sample["image_features"], grids = self.features.get(index)  # (tiles, N, d) and (k, 4), or None
        else:
            images = [self.load_image(p) for p in paths]
            sample["pixel_values"] = torch.cat([i.pixels for i in images]) if images else None
            grids = torch.tensor([i.grid for i in images], dtype=torch.long) if images else None
        sample["image_grids"] = grids
        image_tokens = self.image_tokens(grids)
        if self.prompt_only:
            # References: the record's `answers` (all accepted answers) or else its last answer turn.
            last = messages[-1]
            answers = record.get("answers") or ([last["content"]] if last["role"] == "assistant" else [])
            sample.update(input_ids=self.formatter.encode_prompt(conversations, image_tokens), answers=answers)
        else:
            encoded = self.formatter.encode(conversations, image_tokens)
            sample.update(input_ids=encoded.input_ids, labels=encoded.labels)
        sample.update(id=record.get("id"), task=self.task, source=self.source)
        return sample

    def __getitem__(self, index: int) -> Sample:
        record = self.records[index]
        try:
            return {**self.encode(record, index), "index": index}
        except SampleError as err:
            record_id = record.get("id", f"#{index}") if isinstance(record, dict) else f"#{index}"
            where = f"source '{self.source}'" + (f" ({self.origin})" if self.origin else "")
            message = f"{where}, record {record_id!r}: {err}"
            if self.on_bad_record == "skip":
                log.warning("skipping a bad record (%s) - %s", err.reason, message)
                return {"skipped": err.reason, "id": record_id, "message": message}
            raise SampleError(err.reason, message) from err


def collate(samples: Sequence[Sample], pad_token_id: int, padding_side: str = "right") -> Batch:
    """Pad to the longest sample (right for training, left for generation) and stack all images in order.

    The images (every tile of every image, [3, H, W] each) are stacked by PyTorch's `default_collate`, which in a
    loader worker writes the batch straight into shared memory: it reaches the training process without a copy,
    and the worker never allocates a batch-sized block of its own (such blocks, ~22 MB at 16 x 336 px, left
    hundreds of MB of freed but resident heap in every worker: issue 30, item 5).

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
    images = [tile for s in samples if s["pixel_values"] is not None for tile in s["pixel_values"]]
    grids = [s["image_grids"] for s in samples if s.get("image_grids") is not None]
    batch: Batch = {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "pixel_values": default_collate(images) if images else None,  # in a loader worker: in shared memory
        "image_grids": torch.cat(grids) if grids else None,  # one row per image, in placeholder order
        "ids": [s["id"] for s in samples],
        "indices": [s.get("index") for s in samples],  # position in the dataset, where known
        "tasks": [s["task"] for s in samples],
        "sources": [s.get("source", s["task"]) for s in samples],
        "skipped": skipped,
    }
    if "labels" in samples[0]:
        batch["labels"] = labels
    if "answers" in samples[0]:
        batch["answers"] = [s["answers"] for s in samples]
    if "image_features" in samples[0]:  # from the feature cache, in the same order as pixel_values would be
        features = [s["image_features"] for s in samples if s["image_features"] is not None]
        batch["image_features"] = torch.cat(features) if features else None
    return batch
