"""A test-only Lightning callback that SIGKILLs the whole run (its process group) at a chosen optimizer step of a
chosen stage: a kill at a known point, the same on every machine, where a timed kill would land anywhere. With
`interrupt: true` it presses Ctrl-C instead (SIGINT to the main process, as a terminal sends it)."""

from __future__ import annotations

import os
import signal
from typing import Any

import lightning as L


class KillAtStep(L.Callback):
    def __init__(self, stage: str, step: int, interrupt: bool = False) -> None:
        self.stage = stage
        self.step = step
        self.interrupt = interrupt
        self.sent = False

    def on_train_batch_end(self, trainer: L.Trainer, pl_module: L.LightningModule, *args: Any) -> None:
        # Checkpoint callbacks run after this one: a checkpoint due at `step` is not written before the kill.
        if pl_module.stage.name == self.stage and trainer.global_step >= self.step and not self.sent:
            self.sent = True
            if self.interrupt:
                # As at a terminal, SIGINT raises KeyboardInterrupt (a run started in the background by a
                # non-interactive shell inherits SIGINT ignored).
                signal.signal(signal.SIGINT, signal.default_int_handler)
                os.kill(os.getpid(), signal.SIGINT)
            else:
                os.killpg(os.getpgid(0), signal.SIGKILL)
