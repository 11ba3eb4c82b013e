"""A test-only Lightning callback that makes the disk too small at a chosen optimizer step of a chosen stage: from
then on no file of the run may grow beyond half the size of the stage's `last.ckpt` (RLIMIT_FSIZE), so the next
checkpoint write fails. `kill: false` lets the write fail (EFBIG, as a full disk's ENOSPC); `kill: true` keeps the
kernel's SIGXFSZ, which ends the process in the middle of that write."""

from __future__ import annotations

import resource
import signal
from pathlib import Path
from typing import Any

import lightning as L


class LimitFileSize(L.Callback):
    def __init__(self, stage: str, step: int, kill: bool = False) -> None:
        self.stage = stage
        self.step = step
        self.kill = kill

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        if pl_module.stage.name != self.stage or trainer.global_step != self.step:
            return
        last = Path(trainer.default_root_dir) / "checkpoints" / "last.ckpt"
        # Python starts with SIGXFSZ ignored: a write past the limit fails with EFBIG unless it is restored
        signal.signal(signal.SIGXFSZ, signal.SIG_DFL if self.kill else signal.SIG_IGN)
        _, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (last.stat().st_size // 2, hard))
