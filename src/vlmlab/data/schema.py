"""Typed schemas of the `data` config: each field's type, checked before anything loads (see
`vlmlab.errors.check_types`). The meaning of each field is documented in conf/data/loading/default.yaml
and conf/data/source/."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class FeatureCacheSchema:
    enabled: bool = False
    dir: str | None = None
    dtype: str = "float32"
    batch_size: int = 64


@dataclass
class AnyresSchema:
    grid_pinpoints: list[list[int]] = field(default_factory=lambda: [[1, 2], [2, 1], [2, 2], [3, 1], [1, 3]])
    max_tiles: int | None = None


@dataclass
class StreamingSchema:
    shuffle_buffer: int = 4096
    cache_dir: str | None = None
    max_cache_size: str | None = None


@dataclass
class SynthSchema:
    """`data.synthetic`: the fields of `vlmlab.data.synthetic.SynthConfig`."""

    seed: int = 0
    image_size: int = 96
    num_train: int = 3000
    num_val: int = 100
    num_test: int = 300
    train_turns: int = 4
    tasks: list[str] = field(default_factory=lambda: ["caption", "vqa", "doc"])


@dataclass
class SourceSchema:
    task: str = "caption"
    format: str = "llava"
    metrics: list[str] = field(default_factory=list)
    prompt: str | None = None
    image_root: str | None = None
    train: Any = None
    val: Any = None
    test: Any = None


@dataclass
class DataSchema:
    sources: dict[str, Any] = field(default_factory=dict)
    mixtures: dict[str, dict[str, Any]] = field(default_factory=dict)  # weights: checked to be positive numbers
    root: str | None = None
    synthetic: SynthSchema | None = None
    on_bad_record: str = "skip"
    max_length: int = 2048
    max_image_pixels: int = 64_000_000
    allow_outside_images: bool = False
    image_resize: str = "letterbox"
    anyres: AnyresSchema = field(default_factory=AnyresSchema)
    group_by_length: bool = True
    length_group_batches: int = 50
    packing: bool = False
    pack_length: int | None = None
    feature_cache: FeatureCacheSchema = field(default_factory=FeatureCacheSchema)
    shards: str | None = None
    streaming: StreamingSchema = field(default_factory=StreamingSchema)
    num_workers: int | None = None
    eval_batch_size: int = 16
