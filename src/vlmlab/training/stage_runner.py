"""Running one curriculum stage: its data module, trainer and MLflow run (with its data), `Trainer.fit` (continued from
the stage's `last.ckpt` when resuming), and the hand-off: the stage's weights written and recorded."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import lightning as L
from hydra.utils import instantiate
from lightning.pytorch.loggers import Logger
from omegaconf import DictConfig, OmegaConf

from vlmlab.data.datamodule import VLMDataModule
from vlmlab.errors import UsageError
from vlmlab.models.builder import build_vlm
from vlmlab.models.vlm import VisionLanguageModel
from vlmlab.models.weights import WEIGHTS_FILE, full_state_dict, load_weights, save_weights
from vlmlab.training.checkpoints import AtomicCheckpointIO, resume_checkpoint
from vlmlab.training.distributed import build_strategy, is_sharded
from vlmlab.training.module import VLMTrainingModule
from vlmlab.training.objectives import build_objective
from vlmlab.training.run_context import RunContext
from vlmlab.training.run_record import record_path
from vlmlab.training.stage import StageSpec, mixture_weights
from vlmlab.training.stage_tracking import stage_data_splits

log = logging.getLogger(__name__)

OBJECTIVE_FILE = "objective.safetensors"  # a contrastive stage's text tower and projection heads


def build_trainer(
    cfg: DictConfig, stage: StageSpec, stage_dir: Path, logger: Logger | None, model: VisionLanguageModel
) -> L.Trainer:
    """The stage's Lightning Trainer: `cfg.trainer` with the stage's steps, precision, clipping, accumulation
    (from its global batch) and validation interval (optimizer steps), the callbacks and the strategy."""
    callbacks = [instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c is not None]
    if logger is None:  # LearningRateMonitor refuses to run without a logger; with `~logger` it has nothing to do
        callbacks = [c for c in callbacks if not isinstance(c, L.pytorch.callbacks.LearningRateMonitor)]
    for callback in callbacks:
        if isinstance(callback, L.pytorch.callbacks.ModelCheckpoint) and callback.dirpath is None:
            callback.dirpath = str(stage_dir / "checkpoints")
    world_size = int(cfg.trainer.get("num_nodes", 1)) * (
        cfg.trainer.devices if isinstance(cfg.trainer.devices, int) else 1
    )
    accumulation = stage.accumulation(world_size)
    val_every = stage.val_check_interval  # optimizer steps of the stage; Lightning counts micro-batches per process
    trainer = instantiate(
        cfg.trainer,
        max_steps=stage.max_steps,
        max_epochs=stage.max_epochs if stage.max_steps <= 0 else -1,
        precision=stage.precision,
        gradient_clip_val=stage.gradient_clip_val,
        accumulate_grad_batches=accumulation,
        val_check_interval=val_every * accumulation if isinstance(val_every, int) else val_every,
        check_val_every_n_epoch=None if isinstance(val_every, int) else 1,
        default_root_dir=str(stage_dir),
        strategy=build_strategy(OmegaConf.to_container(cfg.strategy, resolve=True), model, world_size),
        logger=logger if logger is not None else False,
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO()],  # written beside the run's files and renamed into place
    )
    if trainer.world_size != world_size:
        raise ValueError(
            f"trainer runs {trainer.world_size} processes but the batch size was split for {world_size}: set "
            "trainer.devices to a number"
        )
    return trainer


def save_stage_weights(
    cfg: DictConfig, spec: StageSpec, trainer: L.Trainer, module: VLMTrainingModule, stage_dir: Path
) -> VisionLanguageModel | None:
    """Write the stage's `model.safetensors` (LoRA adapters saved and merged first) and, for an objective with
    weights of its own (a contrastive stage's text tower and heads), `objective.safetensors`.

    Sharded weights (FSDP, FSDP2) are gathered to rank 0 and loaded into a plain model built there.
    Every rank calls this; rank 0 writes and returns the plain trained model, the others return None.
    """
    sharded = is_sharded(trainer.strategy)
    full = full_state_dict(trainer.strategy.model) if sharded else {}
    model = module.model
    if trainer.global_rank == 0:
        if sharded:  # the same adapters and objective, into which the gathered weights load
            model = build_vlm(cfg.model)
            module = VLMTrainingModule(model, spec, objective=build_objective(spec, model, cfg.model))
            module.load_state_dict(full)
        module.save_and_merge_adapters(stage_dir / "adapters")
        save_weights(model, stage_dir / WEIGHTS_FILE)
        if any(True for _ in module.objective.parameters()):  # a text tower and heads: kept, not handed on
            save_weights(module.objective, stage_dir / OBJECTIVE_FILE)
    trainer.strategy.barrier("stage weights saved")
    return model if trainer.global_rank == 0 else None


@dataclass
class StageResult:
    model: VisionLanguageModel  # the trained model, to start the next stage from (plain, not sharded)
    weights: str  # the stage's saved weights file, recorded as the next stage's init_from
    datamodule: VLMDataModule
    metrics: dict[str, float]  # the trainer's final callback metrics, named `<stage>/<metric>`
    answers: bool  # the stage trained the LLM to answer (its objective generates), so test scores mean something


def run_stage(
    run: RunContext, spec: StageSpec, seed: int, model: VisionLanguageModel, init_from: str | None
) -> StageResult:
    """Train stage `spec` of the run from `model` (loaded from `init_from`), continuing its `last.ckpt` when the
    run record says the stage was running, and record it as done with its saved weights."""
    cfg = run.cfg
    record = run.stage_record(spec.name)
    stage_dir = run.stage_folder(spec.name)
    datamodule = VLMDataModule.from_config(
        cfg.data,
        model,
        cfg.seed,
        mixture_weights(cfg, spec),
        spec.micro_batch_size,
        spec.batch_size,
        encoder_frozen=spec.train["encoder"] == "frozen",
    )
    # the newest checkpoint that loads (checked before torch's own readers unpickle anything), leftovers removed
    running = record.get("status") == "running"
    resumed = resume_checkpoint(stage_dir / "checkpoints", clean=run.is_rank_zero) if running else None
    resume_from = str(resumed) if resumed else None
    resuming = f", resuming {resumed}" if resume_from else ""
    log.info("stage '%s': train %s on %s%s", spec.name, spec.train, datamodule.mixture, resuming)
    logger = None
    if run.tracker is not None:
        logger = run.tracker.stage_logger(spec.name, init_from, stage_dir, run_id=record.get("run_id"))
        if "run_id" not in record:
            run.tracker.log_config(logger.run_id, cfg)
            run.tracker.log_datasets(logger.run_id, stage_data_splits(datamodule))
        record["run_id"] = logger.run_id
    record.update(status="running", init_from=record_path(init_from, run.folder) if init_from else "config")
    run.save_record()
    if run.is_rank_zero:
        model.llm.tokenizer.save_pretrained(str(stage_dir / "tokenizer"))  # for its checkpoints too
    trainer = build_trainer(cfg, spec, stage_dir, logger, model)
    # Each stage draws from its own seed (new LoRA adapters, dropout), whatever ran before it: the same in a
    # resumed run, on every process, and under every strategy.
    L.seed_everything(seed, workers=True, verbose=False)
    module = VLMTrainingModule(model, spec, cfg.nan_policy, build_objective(spec, model, cfg.model))
    trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
    if trainer.strategy.reduce_boolean_decision(module.trained_samples == 0, all=True):
        skipped = ", ".join(f"{reason}: {count}" for reason, count in module.skipped.items()) or "none"
        raise UsageError(
            f"stage '{spec.name}' trained on no sample: every record it drew was skipped (skipped by reason: "
            f"{skipped}); `vlmlab-data check` lists them and why (data.max_length={cfg.data.max_length})"
        )
    metrics = {f"{spec.name}/{k}": float(v) for k, v in trainer.callback_metrics.items()}
    trained = save_stage_weights(cfg, spec, trainer, module, stage_dir)
    weights = str(stage_dir / WEIGHTS_FILE)
    record.update(status="done", weights=record_path(weights, run.folder), global_step=trainer.global_step)
    run.save_record()
    if is_sharded(trainer.strategy):  # the trained model is sharded: continue from the saved file
        trained = trained if run.is_rank_zero else build_vlm(cfg.model)
        if not run.is_rank_zero:
            load_weights(trained, weights)
        model = trained
    return StageResult(model, weights, datamodule, metrics, module.objective.generates)
