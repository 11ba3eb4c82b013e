"""`VLMDataModule`: the `data` config's sources, mixed as one stage asks, as Lightning dataloaders.

One class serves every task family: a source's `format` picks its reader, its `task` its prompt
and metric, so a captioning, VQA or DocVQA data module is this class with one source (the
`data=coco_captions|vqav2|docvqa` presets) and a mixture is the same class with several.
"""

from __future__ import annotations

import gc
import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import lightning as L
from omegaconf import DictConfig, OmegaConf
from torch.utils.data import ConcatDataset, DataLoader, Subset

from vlmlab.data.chat_format import ChatFormatter, SampleError
from vlmlab.data.conversation_dataset import BadRecordPolicy, ConversationDataset, collate
from vlmlab.data.feature_cache import feature_store
from vlmlab.data.formats import HFRecords, Record, read_split, split_image_root, split_origin
from vlmlab.data.image_processing import (
    ImagePolicy,
    ImageProcessor,
    NativeImageProcessor,
    encoder_image_processor,
    image_size,
)
from vlmlab.data.lengths import SampleLengths, estimate_length
from vlmlab.data.packing import collate_packed
from vlmlab.data.record_store import RecordStore
from vlmlab.data.sampler import GroupedMixtureSampler, StreamingMixtureSampler
from vlmlab.data.shards import ShardRecords
from vlmlab.data.synthetic import SynthConfig, write_synthetic_dataset
from vlmlab.errors import UsageError
from vlmlab.models.encoders.base import VisionEncoder
from vlmlab.models.encoders.native_resolution import NativeResolutionEncoder
from vlmlab.models.image_layout import ImageTokenLayout, NativeTokenLayout, tokens_side
from vlmlab.models.vlm import VisionLanguageModel
from vlmlab.presets import preset_values


class SharingDataLoader(DataLoader):
    """A loader whose worker processes keep sharing the Python objects of the process that starts them.

    A forked worker shares its parent's memory until it writes to a page, and the garbage collector writes to
    every object it examines: one full collection in a worker copies every page holding the parent's objects
    (the interpreter, torch, transformers, the model's modules: ~160 MB per worker at LLaVA-665K scale, issue 30,
    item 5). So the collector's objects are frozen (`gc.freeze`) while the workers are forked, and the workers
    never examine the parent's objects; in the parent they go back to the collector once the workers are started.
    Left alone when something else has frozen objects already (it manages freezing)."""

    def __iter__(self) -> Any:
        if self.num_workers == 0 or gc.get_freeze_count() > 0:
            return super().__iter__()
        gc.freeze()
        try:
            return super().__iter__()  # forks the workers (the first time, with persistent workers)
        finally:
            gc.unfreeze()


class ResumableDataLoader(SharingDataLoader):
    """The training loader, with its position in the epoch as state: Lightning saves `state_dict()` in
    every checkpoint (the loader is `_Stateful`) and hands it back to `load_state_dict` on resume, so a
    run resumed mid-epoch continues at the exact next batch instead of replaying the epoch."""

    def __init__(self, *args: Any, batches_trained: Callable[[], int], **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.batches_trained = batches_trained

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.sampler.epoch, "batches": self.batches_trained()}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.sampler.resume_at(state["epoch"], state["batches"])


MAX_DEFAULT_WORKERS = 8


def default_num_workers() -> int:
    """`data.num_workers: null`: one loader worker per CPU this process may use, at most 8 (PyTorch warns
    when a loader starts more workers than there are CPUs)."""
    return min(
        MAX_DEFAULT_WORKERS, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    )


LOADING_KEYWORDS = (  # the `data` options a VLMDataModule takes as they are (conf/data/loading/default.yaml)
    "eval_batch_size", "num_workers", "on_bad_record", "group_by_length", "length_group_batches", "packing",
    "pack_length", "feature_cache", "streaming", "max_image_pixels", "allow_outside_images",
)  # fmt: skip


def loading_keywords(data_cfg: DictConfig) -> dict[str, Any]:
    """`VLMDataModule`'s loading keywords from a `data` config (`num_workers: null`: one per CPU, at most 8)."""
    values = {key: data_cfg[key] for key in LOADING_KEYWORDS}
    values = {k: OmegaConf.to_container(v, resolve=True) if isinstance(v, DictConfig) else v for k, v in values.items()}
    if values["num_workers"] is None:
        values["num_workers"] = default_num_workers()
    return values


def loading_options(**changes: Any) -> dict[str, Any]:
    """The loading keywords at their defaults (conf/data/loading/default.yaml), with `changes`: for code that
    builds a `VLMDataModule` without Hydra (benchmarks, tests)."""
    defaults = preset_values("data/loading/default")
    composed = OmegaConf.create({"data": defaults, "paths": {"data_dir": "data"}})  # what its ${...} refer to
    return {**loading_keywords(composed.data), **changes}


class VLMDataModule(L.LightningDataModule):
    """Args:
    sources: name -> {task, format, prompt, train, val, test} (see `formats`; val/test may be null).
    mixture: name -> weight for this stage's training data (see `GroupedMixtureSampler`).
    micro_batch_size: training samples per process and forward pass.
    batch_size: the global batch of one optimizer step (None: micro_batch_size x processes); an epoch is
        a whole number of global batches on any number of processes.
    formatter, image_processor: built from the model (tokenizer, image tokens, encoder size).
    image_layout: the model's image-token layout, for per-image token counts (tiled images); None: every
        image takes the formatter's `num_image_tokens`.
    synthetic: generator settings; when set, the synthetic dataset is written to `root` if missing.
    on_bad_record: `skip` (drop, count and log records that cannot become samples) or `raise`.
    group_by_length: batch samples of similar length and one modality together (longest batch first),
        sorting pools of `length_group_batches` global batches by length.
    packing: lay each training micro-batch's samples end to end in rows of at most `pack_length` tokens
        (`None`: one row, for flash_attention_2) instead of padding each (see `vlmlab.data.packing`).
    feature_cache, encoder: with `feature_cache.enabled` and a (frozen) `encoder`, training reads each
        source's stored encoder features instead of its images (see `vlmlab.data.feature_cache`).
    The loading keywords (LOADING_KEYWORDS) have no defaults here: conf/data/loading/default.yaml holds and
    documents them, `from_config` reads them from a composed config, `loading_options()` from that file.
    """

    def __init__(
        self,
        sources: dict[str, dict[str, Any]],
        mixture: dict[str, float],
        formatter: ChatFormatter,
        image_processor: ImageProcessor | NativeImageProcessor,
        micro_batch_size: int,
        *,
        seed: int,
        eval_batch_size: int,
        num_workers: int,
        on_bad_record: BadRecordPolicy,
        group_by_length: bool,
        length_group_batches: int,
        packing: bool,
        pack_length: int | None,
        feature_cache: dict[str, Any] | None,
        streaming: dict[str, Any],
        max_image_pixels: int,
        allow_outside_images: bool,
        batch_size: int | None = None,
        root: str | None = None,
        synthetic: dict[str, Any] | None = None,
        encoder: VisionEncoder | NativeResolutionEncoder | None = None,
        image_layout: ImageTokenLayout | NativeTokenLayout | None = None,
    ) -> None:
        super().__init__()
        self.max_image_pixels = max_image_pixels
        self.allow_outside_images = allow_outside_images
        self.streaming = streaming
        self.image_layout = image_layout
        self.sources = sources
        self.mixture = mixture
        self.formatter = formatter
        self.image_processor = image_processor
        self.micro_batch_size = micro_batch_size
        self.batch_size = batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.root = root
        self.synthetic = synthetic
        self.on_bad_record = on_bad_record
        self.group_by_length = group_by_length
        self.length_group_batches = length_group_batches
        if packing and pack_length is not None and pack_length < formatter.max_length:
            raise ValueError(
                f"data.pack_length={pack_length} is shorter than data.max_length={formatter.max_length}: a sample "
                "must fit in one packed row; raise pack_length (or null: one row per micro-batch)"
            )
        self.packing = packing
        self.pack_length = pack_length
        self.feature_cache = feature_cache if feature_cache and feature_cache.get("enabled") else None
        if self.feature_cache is not None and isinstance(encoder, NativeResolutionEncoder):
            raise UsageError(
                "data.feature_cache stores features of one shape per image; a native-resolution encoder's differ in "
                "length: set data.feature_cache.enabled=false"
            )
        self.encoder = encoder
        self._records: dict[tuple[str, str], Sequence[Record]] = {}

    @classmethod
    def from_config(
        cls,
        data_cfg: DictConfig,
        model: VisionLanguageModel,
        seed: int,
        mixture: dict[str, float] | None = None,
        micro_batch_size: int = 1,
        batch_size: int | None = None,
        encoder_frozen: bool = False,
    ) -> VLMDataModule:
        """The data module a `data` config describes, for `model` (its tokenizer, image tokens and image
        preprocessing); `mixture` and the batch sizes are a stage's (none for evaluation), and
        `encoder_frozen` lets it use `data.feature_cache` (when enabled)."""
        synthetic = data_cfg.get("synthetic")
        try:
            image_processor = encoder_image_processor(model.encoder, data_cfg.image_resize, data_cfg.get("anyres"))
        except ValueError as err:
            raise UsageError(str(err)) from err
        if data_cfg.image_resize == "anyres":
            try:
                tokens_side(model.connector.num_out_tokens)
            except ValueError as err:
                raise UsageError(f"{err} (model.connector={type(model.connector).__name__})") from err
        llm = model.llm
        formatter = ChatFormatter(
            llm.tokenizer, llm.image_token, model.num_image_tokens, data_cfg.max_length, llm.template_image_token
        )
        return cls(
            sources=OmegaConf.to_container(data_cfg.sources, resolve=True),
            mixture=mixture or {},
            formatter=formatter,
            image_processor=image_processor,
            micro_batch_size=micro_batch_size,
            batch_size=batch_size,
            seed=seed,
            root=data_cfg.get("root"),
            synthetic=None if synthetic is None else OmegaConf.to_container(synthetic, resolve=True),
            encoder=model.encoder if encoder_frozen else None,
            image_layout=model.image_layout,
            **loading_keywords(data_cfg),
        )

    def prepare_data(self) -> None:
        if self.synthetic is not None:
            if self.root is None:
                raise ValueError("data.synthetic is set but data.root is not: say where to write the synthetic data")
            write_synthetic_dataset(self.root, SynthConfig.demo(**self.synthetic))  # unset fields: the demo's

    def image_policy(self, source: str, split: str) -> ImagePolicy:
        """What a split's records may read: images inside its image folder (unless allowed anywhere), of at most
        `max_image_pixels` pixels."""
        root = None if self.allow_outside_images else split_image_root(source, self.sources[source], split)
        return ImagePolicy(self.max_image_pixels, root)

    def records(self, source: str, split: str) -> Sequence[Record]:
        """A split's records, read once per data module."""
        if (source, split) not in self._records:
            self._records[source, split] = read_split(source, self.sources[source], split, self.streaming)
        return self._records[source, split]

    def dataset(
        self, source: str, split: str, prompt_only: bool = False, blank_images: bool = False, cached: bool = False
    ) -> ConversationDataset:
        """`cached`: the images' encoder features from the feature cache (built on first use) instead of the images."""
        dataset = ConversationDataset(
            self.records(source, split),
            formatter=self.formatter,
            image_processor=self.image_processor,
            task=self.sources[source]["task"],
            source=source,
            prompt_only=prompt_only,
            blank_images=blank_images,
            on_bad_record=self.on_bad_record,
            origin=split_origin(source, self.sources[source], split),
            image_layout=self.image_layout,
            image_policy=self.image_policy(source, split),
        )
        if cached:
            trainer = self.trainer
            features = feature_store(
                self.feature_cache["dir"],
                source,
                split,
                self.encoder,
                dataset,
                self.feature_cache,
                is_main=trainer is None or trainer.global_rank == 0,
                barrier=trainer.strategy.barrier if trainer else lambda: None,
            )
            dataset = dataset.with_features(features)
        return dataset

    def _loader(
        self,
        dataset: Any,
        batch_size: int,
        padding_side: str = "right",
        loader: type[DataLoader] = SharingDataLoader,
        packed: bool = False,
        **kwargs: Any,
    ) -> DataLoader:
        pad_token_id = self.formatter.tokenizer.pad_token_id
        if packed:
            collate_fn = partial(collate_packed, pad_token_id=pad_token_id, pack_length=self.pack_length)
        else:
            collate_fn = partial(collate, pad_token_id=pad_token_id, padding_side=padding_side)
        return loader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=collate_fn,
            **kwargs,
        )

    def lengths(self, source: str, split: str) -> SampleLengths:
        """Estimated sample lengths and modalities, for grouping batches. Tiled images (and a native-resolution
        encoder's) count their own tokens, from the size in each image's header (read once per record, not
        decoded)."""
        records = self.records(source, split)
        tiled = self.image_processor.size_sets_tokens and self.image_layout is not None
        if isinstance(records, ShardRecords):
            tokens = self.formatter.num_image_tokens
            return records.estimated_lengths(self._tiled_count_of_size if tiled else tokens)
        if not tiled:
            if isinstance(records, RecordStore):
                return records.estimated_lengths(self.formatter.num_image_tokens)
            if isinstance(records, HFRecords):
                records = records.text_records()
            return SampleLengths.of(estimate_length(r, self.formatter.num_image_tokens) for r in records)
        count = partial(self.tiled_image_tokens, policy=self.image_policy(source, split))
        return SampleLengths.of(estimate_length(r, count) for r in records)

    def tiled_image_tokens(self, image: Any, policy: ImagePolicy) -> int:
        """Tokens of one (tiled or native-resolution) image; an unreadable image (or one `policy` refuses) counts as
        an untiled one, or as the most a native-resolution image takes (its record is skipped later)."""
        try:
            size = image_size(image, policy=policy)
        except (SampleError, OSError):
            return self.formatter.num_image_tokens
        return self._tiled_count_of_size(size)

    def _tiled_count_of_size(self, size: tuple[int, int]) -> int:
        return self.image_layout.count(self.image_processor.grid(size))

    def train_sampler(self) -> GroupedMixtureSampler:
        """Over the mixture's records in one epoch-wide order; chunk by chunk when a source streams from shards."""
        trainer = self.trainer
        world_size = trainer.world_size if trainer else 1
        common = dict(
            lengths=[self.lengths(name, "train") for name in self.mixture],
            weights=list(self.mixture.values()),
            batch_size=self.batch_size or self.micro_batch_size * world_size,
            micro_batch_size=self.micro_batch_size,
            num_replicas=world_size,
            rank=trainer.global_rank if trainer else 0,
            seed=self.seed,
            group_by_length=self.group_by_length,
        )
        records = [self.records(name, "train") for name in self.mixture]
        if any(isinstance(r, ShardRecords) for r in records):
            return StreamingMixtureSampler(
                **common,
                chunk_sizes=[r.chunk_sizes if isinstance(r, ShardRecords) else [1] * len(r) for r in records],
                shuffle_buffer=self.streaming["shuffle_buffer"],
            )
        return GroupedMixtureSampler(**common, length_group_batches=self.length_group_batches)

    def train_dataloader(self) -> DataLoader:
        cached = self.feature_cache is not None and self.encoder is not None
        parts = [self.dataset(name, "train", cached=cached) for name in self.mixture]
        return self._loader(
            ConcatDataset(parts),
            self.micro_batch_size,
            sampler=self.train_sampler(),
            loader=ResumableDataLoader,
            packed=self.packing,
            batches_trained=self._batches_trained,
        )

    def _batches_trained(self) -> int:
        """Batches of the current epoch whose step has run (the one being saved included)."""
        return self.trainer.fit_loop.epoch_loop.batch_progress.current.processed if self.trainer else 0

    def val_dataloader(self) -> DataLoader | list:
        parts = [self.dataset(name, "val") for name in self.mixture if self.sources[name].get("val")]
        return self._loader(ConcatDataset(parts), self.eval_batch_size) if parts else []

    def prompt_dataloader(
        self,
        source: str,
        split: str = "test",
        blank_images: bool = False,
        limit: int | None = None,
        shard: tuple[int, int] = (0, 1),
    ) -> DataLoader:
        """Left-padded prompts with reference answers, for generation-based evaluation: the first `limit`
        records, of which process `shard[0]` of `shard[1]` takes every shard[1]-th."""
        dataset = self.dataset(source, split, prompt_only=True, blank_images=blank_images)
        count = len(dataset) if limit is None else min(limit, len(dataset))
        rank, world_size = shard
        return self._loader(Subset(dataset, range(rank, count, world_size)), self.eval_batch_size, padding_side="left")
