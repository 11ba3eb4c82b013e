"""A test-only Lightning callback that slows training down, so that a test can kill the run mid-stage."""

from __future__ import annotations

import time
from typing import Any

import lightning as L


class SleepAfterEachBatch(L.Callback):
    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def on_train_batch_end(self, *args: Any) -> None:
        time.sleep(self.seconds)
