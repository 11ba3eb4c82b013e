"""The curriculum runner: builds the model once, trains its stages in order, then evaluates.

Stage k+1 starts from stage k's weights. The hand-off is recorded, not guessed: after each stage
its weights are saved as `stages/<name>/model.safetensors` and `curriculum_state.json` in the run
directory names that file; the next stage's MLflow run records it in its `init_from` tag.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig, OmegaConf
from rich.console import Console
from rich.table import Table
from safetensors.torch import save_model

from vlmlab.data.chat_format import ChatFormatter
from vlmlab.data.datamodule import VLMDataModule
from vlmlab.data.image_processing import ImageProcessor
from vlmlab.eval.checkpoint import load_weights
from vlmlab.eval.generation import evaluate_with_blind_baseline
from vlmlab.models.builder import build_vlm
from vlmlab.models.vlm import VisionLanguageModel
from vlmlab.training.distributed import build_strategy, full_state_dict, global_rank, is_sharded
from vlmlab.training.module import VLMTrainingModule
from vlmlab.training.stage import StageSpec

log = logging.getLogger(__name__)


def stage_specs(cfg: DictConfig) -> list[StageSpec]:
    """Every stage of `cfg.curriculum.stages`, in order, checked against the data config's mixtures."""
    mixtures = OmegaConf.to_container(cfg.data.get("mixtures") or {}, resolve=True)
    stages = cfg.curriculum.stages
    if not stages:
        raise ValueError("curriculum.stages is empty: choose a curriculum (e.g. curriculum=llava) or add a stage")
    return [StageSpec.from_config(name, stage, mixtures) for name, stage in stages.items()]


def mixture_weights(cfg: DictConfig, stage: StageSpec) -> dict[str, float]:
    return OmegaConf.to_container(cfg.data.mixtures[stage.mixture], resolve=True)


def build_datamodule(
    cfg: DictConfig,
    model: VisionLanguageModel,
    mixture: dict[str, float],
    micro_batch_size: int,
    encoder_frozen: bool = False,
    batch_size: int | None = None,
) -> VLMDataModule:
    """The data module of one stage (`batch_size`: its global batch); `encoder_frozen` lets it use
    `data.feature_cache` (when enabled)."""
    feature_cache = cfg.data.get("feature_cache")
    formatter = ChatFormatter(
        model.llm.tokenizer, model.llm.image_token, model.num_image_tokens, max_length=cfg.data.max_length
    )
    synthetic = cfg.data.get("synthetic")
    return VLMDataModule(
        sources=OmegaConf.to_container(cfg.data.sources, resolve=True),
        mixture=mixture,
        formatter=formatter,
        image_processor=ImageProcessor(model.encoder.preprocessing, cfg.data.image_resize),
        micro_batch_size=micro_batch_size,
        batch_size=batch_size,
        eval_batch_size=cfg.data.eval_batch_size,
        num_workers=cfg.data.num_workers,
        seed=cfg.seed,
        root=cfg.data.get("root"),
        synthetic=None if synthetic is None else OmegaConf.to_container(synthetic, resolve=True),
        on_bad_record=cfg.data.on_bad_record,
        group_by_length=cfg.data.group_by_length,
        length_group_batches=cfg.data.length_group_batches,
        packing=cfg.data.get("packing", False),
        pack_length=cfg.data.get("pack_length"),
        feature_cache=None if feature_cache is None else OmegaConf.to_container(feature_cache, resolve=True),
        encoder=model.encoder if encoder_frozen else None,
    )


def build_trainer(
    cfg: DictConfig, stage: StageSpec, stage_dir: Path, logger: Any, model: VisionLanguageModel
) -> L.Trainer:
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
    )
    if trainer.world_size != world_size:
        raise ValueError(
            f"trainer runs {trainer.world_size} processes but the batch size was split for {world_size}: set "
            "trainer.devices to a number"
        )
    return trainer


def source_metrics(cfg: DictConfig, source: str) -> list[str]:
    """The metrics a source is scored with (`metrics:` in its config; exact match when it names none)."""
    return list(cfg.data.sources[source].get("metrics") or ["exact_match"])


def print_results(
    metrics: dict[str, float], sources: dict[str, list[str]], split: str = "test", console: Console | None = None
) -> None:
    """One row per source and metric: the score with the images and the blind baseline without them."""
    table = Table(title=f"{split} split")
    for column in ("task", "metric", "score", "blind baseline"):
        table.add_column(column, justify="left" if column in ("task", "metric") else "right")
    for source, names in sources.items():
        keys = sorted({k.split("/")[-1] for k in metrics if k.startswith(f"{split}/{source}/") and "/blind_" not in k})
        if not keys:
            table.add_row(source, ", ".join(names), "no references", "")
        for key in keys:
            blind = metrics.get(f"{split}/{source}/blind_{key}")
            score = metrics[f"{split}/{source}/{key}"]
            table.add_row(source, key, f"{score:.3f}", "" if blind is None else f"{blind:.3f}")
    (console or Console()).print(table)


STATE_FILE = "curriculum_state.json"


def find_run_to_resume(cfg: DictConfig) -> Path:
    """The run folder that `resume` names: a folder holding curriculum_state.json, or (`resume=true`) the
    latest unfinished run of this experiment_name and run_name under the working directory's outputs/."""
    if cfg.resume is not True:
        run_dir = Path(str(cfg.resume))
        if not (run_dir / STATE_FILE).is_file():
            raise FileNotFoundError(f"resume={cfg.resume}: no {STATE_FILE} there; give the run folder to resume")
        return run_dir
    candidates = []
    for state_file in (Path(cfg.paths.root_dir) / "outputs").glob(f"**/{STATE_FILE}"):
        state = json.loads(state_file.read_text())
        same = state.get("experiment_name") == cfg.experiment_name and state.get("run_name") == cfg.run_name
        if same and not state.get("finished"):
            candidates.append(state_file)
    if not candidates:
        raise FileNotFoundError(
            f"resume=true: no unfinished run of experiment '{cfg.experiment_name}' / run '{cfg.run_name}' under "
            f"{Path(cfg.paths.root_dir) / 'outputs'}; give the run folder: resume=outputs/<date>/<time>"
        )
    return max(candidates, key=lambda f: f.stat().st_mtime).parent


def write_state(state_file: Path, state: dict[str, Any]) -> None:
    """Replace the state file atomically: a run killed while writing it keeps the previous record."""
    partial = state_file.with_suffix(".json.partial")
    partial.write_text(json.dumps(state, indent=2))
    os.replace(partial, state_file)


RESUME_MUST_MATCH = ("model", "data", "curriculum", "seed")


def check_resumed_config(cfg: DictConfig, run_dir: Path) -> None:
    """A resumed run must train what the interrupted one trained: its model, data, curriculum and seed
    (from the run's `.hydra/config.yaml`) must equal this command's."""
    saved_file = run_dir / ".hydra" / "config.yaml"
    if not saved_file.is_file():
        return
    saved = OmegaConf.load(saved_file)
    differ = []
    for key in RESUME_MUST_MATCH:
        before, now = saved.get(key), cfg.get(key)
        if isinstance(now, DictConfig):
            before = OmegaConf.to_container(before, resolve=False) if before is not None else None
            now = OmegaConf.to_container(now, resolve=False)
        if before != now:
            differ.append(key)
    if differ:
        overrides = run_dir / ".hydra" / "overrides.yaml"
        raise ValueError(
            f"resume: this command's {', '.join(differ)} config differs from the run in {run_dir}; resume with "
            f"the overrides it was started with (listed in {overrides}) plus resume=..."
        )


def load_state(cfg: DictConfig) -> tuple[Path, dict[str, Any]]:
    """The run folder and its recorded state: a new one, or the one being resumed."""
    if cfg.get("resume"):
        run_dir = find_run_to_resume(cfg)
        check_resumed_config(cfg, run_dir)
        log.info("resuming the curriculum in %s", run_dir)
        return run_dir, json.loads((run_dir / STATE_FILE).read_text())
    run_dir = Path(cfg.paths.output_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, {"experiment_name": cfg.experiment_name, "run_name": cfg.run_name, "finished": False, "stages": {}}


def stages_to_run(cfg: DictConfig, specs: list[StageSpec]) -> list[StageSpec]:
    """The stages from `curriculum.start_stage` on (all of them by default)."""
    start = cfg.curriculum.get("start_stage")
    names = [s.name for s in specs]
    if start is None:
        return specs
    if start not in names:
        raise ValueError(f"curriculum.start_stage={start!r} is not a stage of this curriculum ({', '.join(names)})")
    if names.index(start) > 0 and not cfg.get("init_from"):
        raise ValueError(
            f"curriculum.start_stage={start} skips earlier stages: say which weights to start from with "
            "init_from=<run>/stages/<stage> (or a model.safetensors)"
        )
    return specs[names.index(start) :]


def save_stage_weights(
    cfg: DictConfig, spec: StageSpec, trainer: L.Trainer, module: VLMTrainingModule, stage_dir: Path
) -> VisionLanguageModel | None:
    """Write the stage's `model.safetensors` (LoRA adapters saved and merged first).

    Sharded weights (FSDP, FSDP2) are gathered to rank 0 and loaded into a plain model built there.
    Every rank calls this; rank 0 writes and returns the plain trained model, the others return None.
    """
    sharded = is_sharded(trainer.strategy)
    full = full_state_dict(trainer.strategy.model) if sharded else {}
    model = module.model
    if trainer.global_rank == 0:
        if sharded:
            model = build_vlm(cfg.model)
            module = VLMTrainingModule(model, spec)  # the same adapters, into which the gathered weights load
            module.load_state_dict(full)
        module.save_and_merge_adapters(stage_dir / "adapters")
        save_model(model, str(stage_dir / "model.safetensors"))
    trainer.strategy.barrier("stage weights saved")
    return model if trainer.global_rank == 0 else None


def run_curriculum(cfg: DictConfig) -> dict[str, float]:
    """Train every stage of `cfg.curriculum` (or resume an interrupted run), evaluate on the test splits,
    return all final metrics.

    The hand-off is explicit: each stage's weights are saved as `stages/<name>/model.safetensors` and
    recorded in `curriculum_state.json`, whose record (never a guessed directory name) tells the next
    stage, and a resumed run, where to start from. A resumed run skips finished stages, continues the
    interrupted one from its `last.ckpt` (weights, optimizer, scheduler, loops and the data position)
    and logs to the same MLflow runs.

    With several processes every rank runs this function; rank 0 alone writes the record, the weights
    and the MLflow runs, and evaluates at the end.
    """
    all_specs = stage_specs(cfg)
    positions = {spec.name: i for i, spec in enumerate(all_specs)}
    specs = stages_to_run(cfg, all_specs)
    L.seed_everything(cfg.seed, workers=True)
    devices = cfg.trainer.devices if isinstance(cfg.trainer.devices, int) else 1
    main = global_rank(devices) == 0
    run_dir, state = load_state(cfg)
    state_file = run_dir / STATE_FILE
    if state.get("finished"):
        results = run_dir / "test_metrics.json"
        print(f"The curriculum in {run_dir} is finished: nothing to resume (its results: {results})")
        return json.loads(results.read_text()) if results.is_file() else {}
    init_from: str | None = cfg.get("init_from")
    done = [s for s in specs if state["stages"].get(s.name, {}).get("status") == "done"]
    if done:
        init_from = state["stages"][done[-1].name]["weights"]
    model = build_vlm(cfg.model)
    if init_from:
        init_from = str(load_weights(model, init_from))
        log.info("starting from %s", init_from)
    tracker = None
    if main and cfg.get("logger"):
        tracker = instantiate(cfg.logger, parent_run_id=state.get("parent_run_id"))
        if "parent_run_id" not in state:
            state["parent_run_id"] = tracker.parent_run_id
            tracker.log_config(tracker.parent_run_id, cfg)
            parts = {"encoder": model.encoder, "connector": model.connector, "llm": model.llm}
            tracker.log_model_facts(parts, model.num_image_tokens)
            write_state(state_file, state)  # at once: a run killed now resumes into this parent run
    metrics: dict[str, float] = {}
    datamodule = None
    try:
        for spec in specs:
            record = state["stages"].setdefault(spec.name, {})
            mixture = mixture_weights(cfg, spec)
            frozen = spec.train["encoder"] == "frozen"
            datamodule = build_datamodule(
                cfg, model, mixture, spec.micro_batch_size, encoder_frozen=frozen, batch_size=spec.batch_size
            )
            if record.get("status") == "done":
                log.info("stage '%s' is done (%s)", spec.name, record["weights"])
                continue
            stage_dir = run_dir / "stages" / spec.name
            last = stage_dir / "checkpoints" / "last.ckpt"
            resume_from = str(last) if record.get("status") == "running" and last.exists() else None
            log.info(
                "stage '%s': train %s on %s%s",
                spec.name,
                spec.train,
                mixture,
                f", resuming {last}" if resume_from else "",
            )
            logger = None
            if tracker is not None:
                logger = tracker.stage_logger(spec.name, init_from, run_id=record.get("run_id"))
                if "run_id" not in record:
                    tracker.log_config(logger.run_id, cfg)
                record["run_id"] = logger.run_id
            record.update(status="running", init_from=init_from or "config")
            if main:
                write_state(state_file, state)
                model.llm.tokenizer.save_pretrained(str(stage_dir / "tokenizer"))  # for its checkpoints too
            trainer = build_trainer(cfg, spec, stage_dir, logger, model)
            # Each stage draws from its own seed (new LoRA adapters, dropout), whatever ran before it: the
            # same in a resumed run, on every process, and under every strategy.
            L.seed_everything(cfg.seed + positions[spec.name], workers=True, verbose=False)
            module = VLMTrainingModule(model, spec, nan_policy=cfg.nan_policy)
            trainer.fit(module, datamodule=datamodule, ckpt_path=resume_from, weights_only=True)
            metrics.update({f"{spec.name}/{k}": float(v) for k, v in trainer.callback_metrics.items()})
            trained = save_stage_weights(cfg, spec, trainer, module, stage_dir)
            init_from = str(stage_dir / "model.safetensors")
            record.update(status="done", weights=init_from, global_step=trainer.global_step)
            if main:
                write_state(state_file, state)
            if is_sharded(trainer.strategy):  # the trained model is sharded: continue from the saved file
                model = trained if main else build_vlm(cfg.model)
                if not main:
                    load_weights(model, init_from)
        test_sources = [name for name, source in cfg.data.sources.items() if source.get("test")]
        if main and test_sources and cfg.eval.enabled and datamodule is not None:
            metrics.update(evaluate_on_test_splits(cfg, model, datamodule, test_sources, run_dir, tracker))
    except BaseException as err:  # Ctrl-C reaches here as SystemExit from Lightning: resumable, marked KILLED
        if tracker is not None:
            tracker.finish("KILLED" if isinstance(err, KeyboardInterrupt | SystemExit) else "FAILED")
        raise
    state["finished"] = True
    if main:
        write_state(state_file, state)
    if tracker is not None:
        tracker.finish()
    return metrics


def evaluate_on_test_splits(
    cfg: DictConfig,
    model: VisionLanguageModel,
    datamodule: VLMDataModule,
    sources: list[str],
    run_dir: Path,
    tracker: Any,
) -> dict[str, float]:
    """Generate on every test split with and without images, score, print the table, log to MLflow."""
    loaders = {
        name: (
            datamodule.prompt_dataloader(name, "test", limit=cfg.eval.limit),
            datamodule.prompt_dataloader(name, "test", blank_images=True, limit=cfg.eval.limit),
        )
        for name in sources
    }
    metric_names = {name: source_metrics(cfg, name) for name in sources}
    test_metrics, predictions = evaluate_with_blind_baseline(model, loaders, metric_names, cfg.eval.max_new_tokens)
    (run_dir / "test_metrics.json").write_text(json.dumps(test_metrics, indent=2))
    (run_dir / "test_predictions.json").write_text(json.dumps(predictions, indent=1))
    print_results(test_metrics, metric_names)
    if tracker is not None:
        tracker.log_metrics(test_metrics)
        tracker.log_artifact(run_dir / "test_predictions.json")
    return test_metrics
