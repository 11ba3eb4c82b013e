"""The stage progress bar counts the stage's optimizer steps across epochs, not micro-batches of one epoch."""

from __future__ import annotations

from typing import Any

import lightning as L
from lightning.pytorch.demos.boring_classes import BoringModel

from vlmlab.training.progress import StageProgressBar


class RecordingBar(StageProgressBar):
    """Keeps what the training bar showed after every step."""

    def __init__(self) -> None:
        super().__init__()
        self.shown: list[tuple[float | None, float, str]] = []

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        super().on_train_batch_end(trainer, *args)
        task = next(t for t in self.progress.tasks if t.id == self.train_progress_bar_id)
        self.shown.append((task.total, task.completed, task.description))


def test_the_bar_shows_optimizer_steps_of_the_whole_stage(tmp_path) -> None:
    bar = RecordingBar()
    trainer = L.Trainer(
        max_steps=20,  # 64 samples in batches of 1 -> 64 micro-batches, accumulated by 4: 16 steps an epoch
        max_epochs=-1,
        accumulate_grad_batches=4,
        callbacks=[bar],
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
    )
    trainer.fit(BoringModel())
    totals = {total for total, _, _ in bar.shown}
    assert totals == {20}  # the stage's steps, not the epoch's 64 micro-batches (Lightning shows `k/64`)
    completed = [done for _, done, _ in bar.shown]
    assert completed == sorted(completed) and completed[-1] == 20 and len(bar.shown) == 80  # one bar, never reset
    assert bar.shown[0][2].endswith("step (epoch 1)") and bar.shown[-1][2].endswith("step (epoch 2)")
