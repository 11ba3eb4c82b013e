"""Everything about a command line that can be checked before the model is built and before any MLflow
run is created: the config's shape and types, the files and folders it names, where the weights come from
and the connector's contract. Each problem is a `UsageError` whose message names the field and the fix, so
that a mistake costs seconds, not the minutes a 7B model takes to load.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from omegaconf import DictConfig, OmegaConf

from vlmlab.config import validate_config
from vlmlab.data.formats import missing_paths
from vlmlab.errors import UsageError
from vlmlab.models.component_check import check_model_components
from vlmlab.models.hub import check_component_weights
from vlmlab.tracking.mlflow_runs import check_registration
from vlmlab.tracking.registry import is_model_uri
from vlmlab.training.run_record import find_run_to_resume, stages_to_run
from vlmlab.training.stage import StageSpec, mixture_weights, stage_specs

# lightning.Trainer arguments that each stage sets itself: in `trainer` they would be silently replaced.
STAGE_SETS = {
    "max_steps": "max_steps",
    "max_epochs": "max_epochs",
    "precision": "precision",
    "gradient_clip_val": "gradient_clip_val",
    "accumulate_grad_batches": "batch_size (global) and micro_batch_size",
    "val_check_interval": "val_check_interval",
}
ELSEWHERE = {"strategy": "the strategy group (strategy=ddp)", "logger": "the logger group", "callbacks": "callbacks"}
SHOWN = 5


def check_trainer_keys(cfg: DictConfig) -> None:
    """Refuse `trainer.<key>` settings that would have no effect, naming the field that does."""
    stages = ", ".join(cfg.curriculum.stages)
    for key in cfg.trainer:
        if key in STAGE_SETS:
            raise UsageError(
                f"trainer.{key} has no effect: each stage sets its own. Set "
                f"curriculum.stages.<stage>.{STAGE_SETS[key]} (stages: {stages})"
            )
        if key in ELSEWHERE:
            raise UsageError(f"trainer.{key} has no effect here; use {ELSEWHERE[key]}")


def check_model_weights(model_cfg: DictConfig) -> None:
    """Each part's weights are a folder that exists, a cached hub model or one the hub serves now."""
    for part in ("encoder", "llm", "text_tower"):
        check_component_weights(model_cfg.get(part), f"model.{part}")


def data_splits_used(cfg: DictConfig, specs: list[StageSpec]) -> list[tuple[str, str]]:
    """(source, split) pairs the run reads: each stage's mixture (train, and val where configured) and,
    when the test evaluation is on, the test splits."""
    used = []
    for spec in specs:
        for source in mixture_weights(cfg, spec):
            used += [(source, "train"), (source, "val")]
    if cfg.get("eval") and cfg.eval.get("enabled"):
        used += [(source, "test") for source in cfg.data.sources]
    return list(dict.fromkeys(used))


def check_data_files(cfg: DictConfig, splits: list[tuple[str, str]]) -> None:
    """The files and image folders of the splits exist (unless the synthetic generator writes them)."""
    if cfg.data.get("synthetic") is not None:
        return
    sources = OmegaConf.to_container(cfg.data.sources, resolve=True)
    missing = [path for source, split in splits for path in missing_paths(source, sources[source], split)]
    if missing:
        more = f" (+{len(missing) - SHOWN} more)" if len(missing) > SHOWN else ""
        raise UsageError(
            f"data files not found: {'; '.join(missing[:SHOWN])}{more}. Check data.root "
            f"(now {cfg.data.get('root')}) or the sources' paths in the data config"
        )


def check_weights_file(value: str | None, field: str, model_uri_ok: bool = False) -> None:
    """`init_from` / `checkpoint`: a stage folder, a model folder or a weights file that exists (or, where
    `model_uri_ok`, a models:/ URI of MLflow, looked up when the model loads)."""
    if model_uri_ok and is_model_uri(value):
        return
    if value and not Path(str(value)).exists():
        raise UsageError(f"{field}={value}: no such file or folder; give a stage folder <run>/stages/<stage>")


def accelerator_count(accelerator: str) -> tuple[int, str]:
    """How many devices of the kind `trainer.accelerator` names this machine has, and their name."""
    gpu = accelerator in ("gpu", "cuda") or (accelerator == "auto" and torch.cuda.is_available())
    return (torch.cuda.device_count(), "GPUs") if gpu else (os.cpu_count() or 1, "CPUs")


def check_run_values(cfg: DictConfig) -> None:
    """Values of the right type that still cannot work, or not on this machine."""
    seed = cfg.get("seed")
    if isinstance(seed, bool) or not isinstance(seed, int):
        raise UsageError(f"seed={seed!r} must be a whole number")
    cpus = os.cpu_count() or 1
    workers = cfg.data.get("num_workers")
    if workers is not None and not 0 <= workers <= 4 * cpus:
        raise UsageError(
            f"data.num_workers={workers}: this machine has {cpus} CPUs; give 0 to {4 * cpus} loader processes per "
            "training process (null: one per CPU, at most 8)"
        )
    if cfg.data.max_length < 1:
        raise UsageError(f"data.max_length={cfg.data.max_length} must be a positive number of tokens")
    devices, accelerator = cfg.trainer.get("devices"), str(cfg.trainer.get("accelerator", "auto"))
    if isinstance(devices, int) and devices > 0:
        have, kind = accelerator_count(accelerator)
        if devices > have:
            raise UsageError(
                f"trainer.devices={devices}, but this machine has {have} {kind} (trainer.accelerator={accelerator}); "
                f"give at most {have}"
            )
    root = cfg.data.get("root")
    if cfg.data.get("synthetic") is not None and root and not Path(root).exists():
        inside = Path(root).resolve().is_relative_to(Path(cfg.paths.root_dir).resolve())
        if not inside:
            raise UsageError(
                f"data.root={root} does not exist and lies outside the working directory: create it first if the "
                "synthetic data should be written there (vlmlab makes new folders only under the working directory)"
            )


def check_before_training(cfg: DictConfig) -> list[StageSpec]:
    """`vlmlab-train`'s checks, in the order a user would fix them; returns the checked stages."""
    validate_config(cfg)
    check_run_values(cfg)
    specs = stage_specs(cfg)
    stages_to_run(cfg, specs)
    check_trainer_keys(cfg)
    if cfg.get("resume"):
        find_run_to_resume(cfg)
    check_weights_file(cfg.get("init_from"), "init_from")
    if cfg.get("logger"):
        check_registration(cfg.logger.get("register_model"), cfg.logger.get("registered_model_name"))
    check_data_files(cfg, data_splits_used(cfg, specs))
    check_model_components(cfg.model)
    check_model_weights(cfg.model)
    return specs
