"""Run by test_distributed_sampling: one epoch under Lightning DDP (2 CPU processes, gloo) over a LLaVA
file; every rank writes the record ids of each of its batches to <out>/rank<N>.json."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import lightning as L
import torch

from vlmlab.data.chat_format import ChatFormatter
from vlmlab.data.datamodule import VLMDataModule, loading_options
from vlmlab.data.image_processing import ImageProcessor
from vlmlab.data.synthetic import tokenizer_corpus
from vlmlab.models.encoders.base import ImagePreprocessing
from vlmlab.models.llms.chat_templates import CHAT_TEMPLATES
from vlmlab.models.llms.tiny_tokenizer import train_tiny_tokenizer


class RecordBatches(L.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.zeros(1))
        self.batches: list[list] = []

    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        self.batches.append(batch["ids"])
        return (self.weight - 1).pow(2).sum()

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=0.1)


def main(data: Path, out: Path) -> None:
    tokenizer = train_tiny_tokenizer(tokenizer_corpus(num_samples=50), vocab_size=300)
    tokenizer.add_special_tokens({"additional_special_tokens": ["<image>"]})
    tokenizer.chat_template = CHAT_TEMPLATES["simple"]
    datamodule = VLMDataModule(
        sources={"mine": {"task": "vqa", "format": "llava", "train": {"file": str(data), "images": str(data.parent)}}},
        mixture={"mine": 1.0},
        formatter=ChatFormatter(tokenizer, "<image>", num_image_tokens=4, max_length=512),
        image_processor=ImageProcessor(ImagePreprocessing(16, 16, (0.5,) * 3, (0.5,) * 3)),
        micro_batch_size=3,
        seed=0,
        **loading_options(num_workers=0, group_by_length=True, length_group_batches=2),
    )
    module = RecordBatches()
    trainer = L.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    trainer.fit(module, datamodule=datamodule)
    (out / f"rank{trainer.global_rank}.json").write_text(json.dumps(module.batches))


if __name__ == "__main__":
    main(Path(sys.argv[1]), Path(sys.argv[2]))
