"""`VLMDataModule`: the `data` config's sources, mixed as one stage asks, as Lightning dataloaders."""

from __future__ import annotations

from functools import partial
from pathlib import Path
from typing import Any

import lightning as L
from torch.utils.data import ConcatDataset, DataLoader

from vlmlab.data.chat_format import ChatFormatter
from vlmlab.data.conversation_dataset import BadRecordPolicy, ConversationDataset, collate, load_records
from vlmlab.data.image_processing import ImageProcessor
from vlmlab.data.mixture import MixtureSampler
from vlmlab.data.synthetic import SynthConfig, write_synthetic_dataset


class VLMDataModule(L.LightningDataModule):
    """Args:
    sources: name -> {task, image_root, train, val, test} (paths to LLaVA-format JSON; val/test may be null).
    mixture: name -> weight for this stage's training data (see `MixtureSampler`).
    formatter, image_processor: built from the model (tokenizer, image tokens, encoder size).
    synthetic: generator settings; when set, the synthetic dataset is written to `root` if missing.
    on_bad_record: `skip` (drop, count and log records that cannot become samples) or `raise`.
    """

    def __init__(
        self,
        sources: dict[str, dict[str, Any]],
        mixture: dict[str, float],
        formatter: ChatFormatter,
        image_processor: ImageProcessor,
        micro_batch_size: int,
        eval_batch_size: int = 64,
        num_workers: int = 0,
        seed: int = 0,
        root: str | None = None,
        synthetic: dict[str, Any] | None = None,
        on_bad_record: BadRecordPolicy = "skip",
    ) -> None:
        super().__init__()
        self.sources = sources
        self.mixture = mixture
        self.formatter = formatter
        self.image_processor = image_processor
        self.micro_batch_size = micro_batch_size
        self.eval_batch_size = eval_batch_size
        self.num_workers = num_workers
        self.seed = seed
        self.root = root
        self.synthetic = synthetic
        self.on_bad_record = on_bad_record

    def prepare_data(self) -> None:
        if self.synthetic is not None:
            if self.root is None:
                raise ValueError("data.synthetic is set but data.root is not: say where to write the synthetic data")
            write_synthetic_dataset(self.root, SynthConfig(**self.synthetic))

    def dataset(
        self, source: str, split: str, prompt_only: bool = False, blank_images: bool = False
    ) -> ConversationDataset:
        spec = self.sources[source]
        path = spec.get(split)
        if path is None:
            raise ValueError(f"data source '{source}' has no '{split}' split in the data config")
        return ConversationDataset(
            load_records(path),
            image_root=spec.get("image_root") or Path(path).parent,
            formatter=self.formatter,
            image_processor=self.image_processor,
            task=spec["task"],
            source=source,
            prompt_only=prompt_only,
            blank_images=blank_images,
            on_bad_record=self.on_bad_record,
        )

    def _loader(self, dataset: Any, batch_size: int, padding_side: str = "right", **kwargs: Any) -> DataLoader:
        return DataLoader(
            dataset,
            batch_size=batch_size,
            num_workers=self.num_workers,
            persistent_workers=self.num_workers > 0,
            collate_fn=partial(collate, pad_token_id=self.formatter.tokenizer.pad_token_id, padding_side=padding_side),
            **kwargs,
        )

    def train_dataloader(self) -> DataLoader:
        parts = [self.dataset(name, "train") for name in self.mixture]
        sampler = MixtureSampler([len(p) for p in parts], list(self.mixture.values()), seed=self.seed)
        return self._loader(ConcatDataset(parts), self.micro_batch_size, sampler=sampler, drop_last=True)

    def val_dataloader(self) -> DataLoader | list:
        parts = [self.dataset(name, "val") for name in self.mixture if self.sources[name].get("val")]
        return self._loader(ConcatDataset(parts), self.eval_batch_size) if parts else []

    def prompt_dataloader(
        self, source: str, split: str = "test", blank_images: bool = False, limit: int | None = None
    ) -> DataLoader:
        """Left-padded prompts with reference answers, for generation-based evaluation."""
        dataset = self.dataset(source, split, prompt_only=True, blank_images=blank_images)
        if limit is not None:
            dataset.records = dataset.records[:limit]
        return self._loader(dataset, self.eval_batch_size, padding_side="left")
