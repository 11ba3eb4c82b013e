"""Typed schemas of the `data` config: each field's type, checked before anything loads (see
`vlmlab.errors.check_types`). Types only: each field's meaning and default value are written once, in
conf/data/loading/default.yaml (the options every data preset starts from), conf/data/synthetic.yaml
(`data.synthetic`) and conf/data/source/ (a source's fields)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from vlmlab.data.synthetic import SynthConfig


@dataclass
class FeatureCacheSchema:
    enabled: bool
    dir: str | None
    dtype: str
    batch_size: int


@dataclass
class AnyresSchema:
    grid_pinpoints: list[list[int]]
    max_tiles: int | None


@dataclass
class StreamingSchema:
    shuffle_buffer: int
    cache_dir: str | None
    max_cache_size: str | None


@dataclass
class SourceSchema:
    task: str
    format: str
    metrics: list[str]
    prompt: str | None
    image_root: str | None
    train: Any
    val: Any
    test: Any


@dataclass
class DataSchema:
    sources: dict[str, Any]
    mixtures: dict[str, dict[str, Any]]  # weights: checked to be positive numbers
    root: str | None
    synthetic: SynthConfig | None
    on_bad_record: str
    max_length: int
    max_image_pixels: int
    allow_outside_images: bool
    image_resize: str
    anyres: AnyresSchema
    group_by_length: bool
    length_group_batches: int
    packing: bool
    pack_length: int | None
    feature_cache: FeatureCacheSchema
    shards: str | None
    streaming: StreamingSchema
    num_workers: int | None
    eval_batch_size: int
