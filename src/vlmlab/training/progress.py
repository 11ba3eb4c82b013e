"""The training progress bar of a stage: one bar for the whole stage, counting optimizer steps.

Lightning's bar counts micro-batches of the current epoch against the epoch's length and names the epoch
against `max_epochs` (under `max_steps` it shows `150/29` and `Epoch 2/-2`); a stage is defined by its
optimizer steps, so this bar shows `instruct · step 150/1600` across epochs, with the epoch beside it.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import RichProgressBar


class StageProgressBar(RichProgressBar):
    """RichProgressBar whose training bar is the stage's optimizer steps (`trainer.global_step`)."""

    @property
    def total_train_batches(self) -> int | float:
        if self.trainer.max_steps and self.trainer.max_steps > 0:
            return self.trainer.max_steps
        steps = self.trainer.estimated_stepping_batches
        return steps if math.isfinite(steps) else float("inf")

    def _get_train_description(self, current_epoch: int) -> str:
        spec = getattr(self.trainer.lightning_module, "stage", None)
        stage = f"{spec.name} · " if spec is not None else ""
        return f"{stage}step (epoch {current_epoch + 1})"

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.is_disabled or self.progress is None or self.train_progress_bar_id is None:
            super().on_train_epoch_start(trainer, pl_module)
            if not self.is_disabled:
                self._update(self.train_progress_bar_id, trainer.global_step)
            return
        description = self._get_train_description(trainer.current_epoch)  # the same bar goes on
        self.progress.update(self.train_progress_bar_id, description=description)
        self.refresh()

    def on_train_batch_end(
        self, trainer: L.Trainer, pl_module: L.LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if not self.is_disabled and self.train_progress_bar_id is None:
            self._initialize_train_progress_bar_id()  # resumed mid-epoch
        self._update(self.train_progress_bar_id, trainer.global_step)
        self._update_metrics(trainer, pl_module)
        self.refresh()
