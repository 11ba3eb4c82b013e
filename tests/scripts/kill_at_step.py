"""A test-only Lightning callback that SIGKILLs the whole run (its process group) at a chosen optimizer step of a
chosen stage: a kill at a known point, the same on every machine, where a timed kill would land anywhere."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L


class KillAtStep(L.Callback):
    def __init__(self, stage: str, step: int) -> None:
        self.stage = stage
        self.step = step

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # Checkpoint callbacks run after this one: a checkpoint due at `step` is not written before the kill.
        if pl_module.stage.name == self.stage and trainer.global_step >= self.step:
            os.killpg(os.getpgid(0), signal.SIGKILL)
