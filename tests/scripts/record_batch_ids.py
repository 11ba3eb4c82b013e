"""A test-only Lightning callback: every process appends the record ids of each training micro-batch it runs,
with the optimizer step, to <out>/rank<N>.jsonl (which samples each process trained on, and when)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import lightning as L


class RecordBatchIds(L.Callback):
    def __init__(self, out: str) -> None:
        self.out = Path(out)

    def on_train_batch_start(self, trainer: L.Trainer, module: L.LightningModule, batch: Any, batch_idx: int) -> None:
        self.out.mkdir(parents=True, exist_ok=True)
        line = json.dumps({"step": trainer.global_step, "ids": list(batch["ids"])})
        with open(self.out / f"rank{trainer.global_rank}.jsonl", "a") as f:
            f.write(line + "\n")
