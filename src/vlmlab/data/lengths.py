"""Sample lengths estimated without building samples, for grouping batches: each sample's tokens (words of all
turns plus its images' tokens: cheap enough for 665K records, and the order is what matters, not the unit) and
whether it has an image (image and text-only samples are batched apart, as LLaVA's
`group_by_modality_length` does; LLaVA marks text-only samples by a negative length, vlmlab by a flag)."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import numpy as np


class SampleLength(NamedTuple):
    tokens: int
    has_image: bool


@dataclass(frozen=True)
class SampleLengths:
    """One source's samples, in index order."""

    tokens: list[int]
    has_image: list[bool]

    def __post_init__(self) -> None:
        if len(self.tokens) != len(self.has_image):
            raise ValueError(f"{len(self.tokens)} lengths but {len(self.has_image)} image flags")

    def __len__(self) -> int:
        return len(self.tokens)

    def __getitem__(self, index: int) -> SampleLength:
        return SampleLength(self.tokens[index], self.has_image[index])

    @classmethod
    def of(cls, lengths: Iterable[SampleLength]) -> SampleLengths:
        pairs = list(lengths)
        return cls([p.tokens for p in pairs], [p.has_image for p in pairs])

    def select(self, indices: Sequence[int]) -> SampleLengths:
        return SampleLengths([self.tokens[i] for i in indices], [self.has_image[i] for i in indices])


def record_words(record: Any) -> int:
    """Words of all the record's turns (the unit of length estimates)."""
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        return 0
    return sum(
        len(str(turn.get("value", turn.get("content", ""))).split())
        for turn in record["conversations"]
        if isinstance(turn, dict)
    )


def record_image_count(record: Any) -> int:
    image = record.get("image") if isinstance(record, dict) else None
    return 0 if image is None else 1 if isinstance(image, str | dict) else len(image)


def estimate_length(record: Any, image_tokens: int | Callable[[Any], int]) -> SampleLength:
    """Words of all turns plus the image tokens; a text-only record counts at least 1 (a record that is not a
    conversation: 0, text-only). `image_tokens`: tokens per image, or a function of the image (path or stored
    image) giving them."""
    if not isinstance(record, dict) or not isinstance(record.get("conversations"), list):
        return SampleLength(0, False)
    words = record_words(record)
    image = record.get("image")
    images = [] if image is None else [image] if isinstance(image, str | dict) else list(image)
    if not images:
        return SampleLength(max(1, words), False)
    if callable(image_tokens):
        return SampleLength(words + sum(image_tokens(i) for i in images), True)
    return SampleLength(words + len(images) * image_tokens, True)


def lengths_from_counts(words: np.ndarray, images: np.ndarray, image_tokens: np.ndarray) -> SampleLengths:
    """`estimate_length` of every record from per-record counts (words, images, the images' tokens)."""
    has_image = images > 0
    tokens = np.where(has_image, words.astype(np.int64) + image_tokens, np.maximum(words, 1))
    return SampleLengths(tokens.tolist(), has_image.tolist())
