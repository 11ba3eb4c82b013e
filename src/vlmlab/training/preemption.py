"""SIGTERM (a scheduler pre-empting the job, `timeout`, `kill`) stops a stage at its next optimizer step with a
checkpoint, and `vlmlab-train` exits with `PREEMPTED_EXIT_CODE` after printing the command that resumes it.

Lightning's own handling of SIGTERM raises at the next micro-batch, which can fall inside a gradient
accumulation (a checkpoint there would lose the accumulated gradients), saves nothing, and exits with code 0,
so a scheduler takes the pre-empted job for a finished one. Here the signal only sets a flag; at the end of the
next optimizer step every process agrees to stop (one reduction, with several processes), `last.ckpt` is written
as an every-N-steps checkpoint would be, and `Preempted` ends the stage.
"""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

import lightning as L

PREEMPTED_EXIT_CODE = 143  # 128 + SIGTERM, what a shell reports for a process ended by SIGTERM


class Preempted(BaseException):  # noqa: N818 - not an error: the run stopped where it was asked to
    """A stage stopped by SIGTERM after saving `checkpoint` at optimizer step `step`."""

    def __init__(self, step: int, checkpoint: Path) -> None:
        super().__init__(f"stopped by SIGTERM at step {step}; checkpoint {checkpoint}")
        self.step = step
        self.checkpoint = checkpoint


class CheckpointOnSigterm(L.Callback):
    """On SIGTERM, checkpoint at the end of the next optimizer step and stop the stage (`Preempted`)."""

    def __init__(self) -> None:
        self.requested = False
        self.last_step = -1
        self.previous: Any = None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # Replaces the handler Lightning installed for this fit; Lightning puts back the one from before the fit
        self.requested, self.last_step = False, trainer.global_step
        self.previous = signal.signal(signal.SIGTERM, self._request)

    def _request(self, signum: int, frame: Any) -> None:
        self.requested = True

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if trainer.global_step == self.last_step:  # inside a gradient accumulation: not a place to stop
            return
        self.last_step = trainer.global_step
        if not trainer.strategy.reduce_boolean_decision(self.requested, all=False):
            return
        checkpoint = trainer.checkpoint_callback
        folder = Path(checkpoint.dirpath) if checkpoint and checkpoint.dirpath else Path(trainer.default_root_dir)
        path = folder / "last.ckpt"
        trainer.save_checkpoint(path)
        raise Preempted(trainer.global_step, path)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.previous is not None:
            signal.signal(signal.SIGTERM, self.previous)
            self.previous = None
