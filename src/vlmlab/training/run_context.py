"""`RunContext`: what a stage needs of the run it belongs to (the config, the run folder and its record, the
tracker, this process's rank), handed as one value instead of loose parameters."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from vlmlab.tracking.tracker import RunTracker
from vlmlab.training.run_record import STATE_FILE, write_state


@dataclass
class RunContext:
    cfg: DictConfig
    folder: Path  # the run folder: `.hydra/`, the run record, `stages/<name>/`, the test predictions
    record: dict[str, Any]  # the run record (`vlmlab.training.run_record`): each stage's status, weights and run id
    tracker: RunTracker | None  # rank zero's, when a logger is configured
    is_rank_zero: bool  # the process that writes the record, the weights and the tracker's runs

    def stage_folder(self, stage: str) -> Path:
        return self.folder / "stages" / stage

    def stage_record(self, stage: str) -> dict[str, Any]:
        """The stage's entry in the run record (created empty for a stage not started)."""
        return self.record["stages"].setdefault(stage, {})

    def save_record(self) -> None:
        """Write the run record (rank zero only; atomically, see `write_state`)."""
        if self.is_rank_zero:
            write_state(self.folder / STATE_FILE, self.record)
