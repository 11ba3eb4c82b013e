"""Two small callbacks the GPU check adds to the runs it starts (check.py names them in the runs' configs).

- `PeakMemory` (Lightning): each stage's peak memory, logged to the stage's MLflow run. Lightning's
  `DeviceStatsMonitor` logs the allocator's whole statistics table twice a step and never resets its peak,
  so in a sweep that runs several jobs in one process every job would report the largest peak so far.
- `JobEnd` (Hydra, on the sweep): writes a job's error where the check can read it (Hydra keeps only the
  first failure and raises it at the end of the sweep) and deletes the job's stage weights and checkpoints
  once its metrics are in MLflow (a few GB per stage at the realistic shape; the check's jobs would fill the
  GPU machine's disk), listing what was there first.
"""

from __future__ import annotations

import json
import shutil
import traceback
from pathlib import Path
from typing import Any

import lightning as L
import torch
from hydra.core.utils import JobReturn, JobStatus
from hydra.experimental.callback import Callback
from omegaconf import DictConfig

ERROR_FILE = "gpu_check_error.txt"
HEAVY_FILES = "heavy_files.json"


def _status_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise KeyError(field)


class PeakMemory(L.Callback):
    """Logs `gpu_check/peak_memory_gib` at the end of a stage's training: the CUDA allocator's peak since the
    stage's training started (`torch.cuda.max_memory_allocated`, weights and optimizer state included), or on
    the CPU the process's peak resident memory (VmHWM, reset at the start)."""

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            # what is held before the first step: the sharded weights, and anything an earlier job of a sweep left
            start = {"gpu_check/start_memory_gib": torch.cuda.memory_allocated() / 2**30}
            for logger in trainer.loggers:
                logger.log_metrics(start, step=trainer.global_step)
        else:
            Path("/proc/self/clear_refs").write_text("5")  # the peak RSS starts again from the current RSS

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if pl_module.device.type == "cuda":
            torch.cuda.synchronize()
            figures = {
                "gpu_check/peak_memory_gib": torch.cuda.max_memory_allocated() / 2**30,
                "gpu_check/peak_reserved_gib": torch.cuda.max_memory_reserved() / 2**30,
            }
        else:
            figures = {"gpu_check/peak_memory_gib": _status_kib("VmHWM") / 2**20}
        for logger in trainer.loggers:
            logger.log_metrics(figures, step=trainer.global_step)


class JobEnd(Callback):
    """After each job of a sweep: its error (if any) into `gpu_check_error.txt`, then its heavy files
    (`stages/*/model.safetensors`, `stages/*/checkpoints`) listed in `heavy_files.json` (path -> bytes) and
    deleted, except in the jobs whose `gpu_check` choice is in `keep`."""

    def __init__(self, keep: list[str] = ()) -> None:
        self.keep = set(keep)

    def on_job_end(self, config: DictConfig, job_return: JobReturn, **kwargs: Any) -> None:
        hydra = job_return.hydra_cfg.hydra
        run_dir = Path(hydra.runtime.output_dir)
        if job_return.status == JobStatus.FAILED:
            try:
                job_return.return_value  # noqa: B018 (a failed job's return_value raises its exception)
            except BaseException as error:  # noqa: BLE001 (whatever the job raised is written down)
                text = "".join(traceback.format_exception(type(error), error, error.__traceback__))
                (run_dir / ERROR_FILE).write_text(text)
        if hydra.runtime.choices.get("gpu_check") in self.keep:
            return
        heavy = [*run_dir.glob("stages/*/model.safetensors"), *run_dir.glob("stages/*/checkpoints")]
        listing = {}
        for path in heavy:
            files = [path] if path.is_file() else [f for f in path.rglob("*") if f.is_file()]
            listing.update({str(f.relative_to(run_dir)): f.stat().st_size for f in files})
            shutil.rmtree(path) if path.is_dir() else path.unlink()
        (run_dir / HEAVY_FILES).write_text(json.dumps(listing, indent=1))
