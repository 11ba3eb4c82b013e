"""`RunTracker`: what the curriculum asks of the experiment tracker that `logger._target_` names. vlmlab's
is `vlmlab.tracking.mlflow_runs.CurriculumTracker` (MLflow); another class with these members plugs in."""

from __future__ import annotations

from pathlib import Path
from typing import Protocol, runtime_checkable

import torch
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig

from vlmlab.tracking.datasets import DataSplit
from vlmlab.tracking.registry import LoggedVersion


@runtime_checkable
class RunTracker(Protocol):
    """One curriculum run: a parent run, one child run per stage (a Lightning logger), the test scores."""

    parent_run_id: str
    experiment_name: str

    def run_link(self) -> str:
        """The parent run's address in the tracker's UI."""

    def log_config(self, run_id: str, cfg: DictConfig) -> None:
        """The resolved config, as the run's parameters."""

    def log_model_facts(self, parts: dict[str, torch.nn.Module], image_tokens: int) -> None:
        """Parameter counts per model part and the image tokens per image, on the parent run."""

    def stage_logger(self, stage: str, init_from: str | None, stage_dir: Path, run_id: str | None = None) -> Logger:
        """The stage's child run as a Lightning logger; `run_id` (or the stage's run found under the parent)
        continues a resumed stage."""

    def backfill(self, stage_dir: Path, run_id: str) -> None:
        """Deliver what an ended process left unsent of a finished stage's metrics."""

    def log_datasets(self, run_id: str, splits: list[DataSplit]) -> None:
        """The data a run trained or was scored on."""

    def logs_model(self, last_stage: bool) -> bool:
        """Whether a stage's model is logged (and registered)."""

    def log_model(self, run_id: str, folder: Path, stage: str, step: int, last_stage: bool) -> LoggedVersion:
        """Log a stage's model folder to its run (and register it)."""

    def log_metrics(self, metrics: dict[str, float]) -> None:
        """Scores, on the parent run."""

    def log_artifact(self, path: str | Path) -> None:
        """A file (predictions, a score table), on the parent run."""

    def finish(self, status: str = "FINISHED") -> None:
        """End the parent run with `status` (FINISHED, FAILED, KILLED), after the stages' metrics are delivered."""


# what `isinstance(tracker, RunTracker)` checks, named in the error for a class that lacks some
RUN_TRACKER_MEMBERS = (
    *RunTracker.__annotations__,
    *(name for name, member in vars(RunTracker).items() if callable(member) and not name.startswith("_")),
)
