"""The curriculum runner: builds the model once, trains its stages in order, then evaluates.

Stage k+1 starts from stage k's weights. The hand-off is recorded, not guessed: after each stage its
weights are saved as `stages/<name>/model.safetensors` and the run record (`training.run_record`) names
that file; the next stage's MLflow run records it in its `init_from` tag. With `logger.register_model`, the
last stage's model (or every stage's) is logged to its MLflow run and registered.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
from hydra.utils import instantiate
from omegaconf import DictConfig

from vlmlab.data.datamodule import VLMDataModule
from vlmlab.errors import UsageError
from vlmlab.eval.scoring import score_splits
from vlmlab.models.builder import build_vlm
from vlmlab.models.vlm import VisionLanguageModel
from vlmlab.models.weights import load_weights
from vlmlab.tracking.mlflow_runs import undelivered
from vlmlab.tracking.tracker import RUN_TRACKER_MEMBERS, RunTracker
from vlmlab.training.distributed import global_rank
from vlmlab.training.preemption import Preempted
from vlmlab.training.run_context import RunContext
from vlmlab.training.run_naming import name_run
from vlmlab.training.run_record import STATE_FILE, load_state, resolve_record_path, stages_to_run, write_state
from vlmlab.training.stage import stage_specs
from vlmlab.training.stage_runner import run_stage
from vlmlab.training.stage_tracking import data_splits, log_stage_model

log = logging.getLogger(__name__)


@dataclass
class CurriculumOutcome:
    metrics: dict[str, float] = field(default_factory=dict)  # every stage's final metrics and the test scores
    model: VisionLanguageModel | None = None  # as the last stage left it (None: the run was finished before)
    run_link: str | None = None  # the parent run's page in the MLflow UI (None without tracking)


def run_curriculum(cfg: DictConfig) -> CurriculumOutcome:
    """Train every stage of `cfg.curriculum` (or resume an interrupted run), evaluate on the test splits,
    return all final metrics with the trained model.

    A resumed run skips finished stages, continues the interrupted one from its `last.ckpt` (weights,
    optimizer, scheduler, loops and the data position) and logs to the same MLflow runs. With several
    processes every rank runs this function; rank 0 alone writes the record, the weights and the MLflow
    runs, and evaluates at the end.
    """
    name_run(cfg)
    all_specs = stage_specs(cfg)
    specs = stages_to_run(cfg, all_specs)
    L.seed_everything(cfg.seed, workers=True)
    devices = cfg.trainer.devices if isinstance(cfg.trainer.devices, int) else 1
    is_rank_zero = global_rank(devices) == 0
    run_dir, state = load_state(cfg)
    if state.get("finished"):
        return finished_run(cfg, run_dir, state, is_rank_zero)
    done = [s for s in specs if state["stages"].get(s.name, {}).get("status") == "done"]
    init_from = (
        resolve_record_path(state["stages"][done[-1].name]["weights"], run_dir) if done else cfg.get("init_from")
    )
    model = build_vlm(cfg.model)
    if init_from:
        init_from = str(load_weights(model, init_from))
        log.info("starting from %s", init_from)
    tracker = start_tracking(cfg, model, state, run_dir) if is_rank_zero and cfg.get("logger") else None
    run = RunContext(cfg, run_dir, state, tracker, is_rank_zero)
    metrics: dict[str, float] = {}
    datamodule = None
    answers = True  # whether the last stage trained the LLM to answer
    try:
        for spec in specs:
            record = run.stage_record(spec.name)
            if record.get("status") == "done":
                log.info("stage '%s' is done (%s)", spec.name, record["weights"])
                if tracker is not None and record.get("run_id"):
                    tracker.backfill(run.stage_folder(spec.name), record["run_id"])
                continue
            seed = cfg.seed + [s.name for s in all_specs].index(spec.name)
            stage = run_stage(run, spec, seed, model, init_from)
            model, init_from, datamodule, answers = stage.model, stage.weights, stage.datamodule, stage.answers
            metrics.update(stage.metrics)
            last = spec.name == all_specs[-1].name
            if tracker is not None and tracker.logs_model(last):
                stage_dir = Path(stage.weights).parent
                log_stage_model(cfg, tracker, spec.name, record["run_id"], stage_dir, record["global_step"], last)
        if is_rank_zero and cfg.eval.enabled and answers:
            metrics.update(evaluate_test_splits(run, model, datamodule))
        elif is_rank_zero and cfg.eval.enabled:
            log.info("the last stage did not train the LLM to answer: no test scores (its validation metrics hold it)")
    except BaseException as err:  # Ctrl-C reaches here as SystemExit from Lightning: resumable, marked KILLED
        if tracker is not None:
            stopped = isinstance(err, KeyboardInterrupt | SystemExit | Preempted)
            tracker.finish("KILLED" if stopped else "FAILED")
        raise
    state["finished"] = True
    run.save_record()
    if tracker is not None:
        tracker.finish()
    return CurriculumOutcome(metrics, model, tracker.run_link() if tracker is not None else None)


def finished_run(cfg: DictConfig, run_dir: Path, state: dict[str, Any], is_rank_zero: bool) -> CurriculumOutcome:
    """A run asked to resume that had finished: only what an ended process left unsent to the tracker is sent."""
    if is_rank_zero and cfg.get("logger") and any(undelivered(run_dir / "stages" / name) for name in state["stages"]):
        tracker = instantiate(cfg.logger, parent_run_id=state.get("parent_run_id"))
        for name, record in state["stages"].items():
            if record.get("run_id"):
                tracker.backfill(run_dir / "stages" / name, record["run_id"])
        tracker.finish()
    results = run_dir / "test_metrics.json"
    print(f"The curriculum in {run_dir} is finished: nothing to resume (its results: {results})")
    return CurriculumOutcome(json.loads(results.read_text()) if results.is_file() else {})


def start_tracking(cfg: DictConfig, model: VisionLanguageModel, state: dict[str, Any], run_dir: Path) -> RunTracker:
    """The curriculum's tracker: its parent run continued, or created (with the config and the model's facts) and
    recorded at once, so that a run killed from now on resumes into it."""
    tracker = instantiate(cfg.logger, parent_run_id=state.get("parent_run_id"))
    if not isinstance(tracker, RunTracker):
        missing = [name for name in RUN_TRACKER_MEMBERS if not hasattr(tracker, name)]
        raise UsageError(
            f"logger._target_={cfg.logger.get('_target_')} is not a tracker: it lacks {', '.join(missing)} "
            "(vlmlab.tracking.tracker.RunTracker lists what the curriculum calls)"
        )
    log.info("MLflow: run '%s' of experiment '%s' at %s", cfg.run_name, tracker.experiment_name, tracker.run_link())
    if "parent_run_id" not in state:
        state["parent_run_id"] = tracker.parent_run_id
        tracker.log_config(tracker.parent_run_id, cfg)
        parts = {"encoder": model.encoder, "connector": model.connector, "llm": model.llm}
        tracker.log_model_facts(parts, model.num_image_tokens)
        write_state(run_dir / STATE_FILE, state)
    return tracker


def evaluate_test_splits(
    run: RunContext, model: VisionLanguageModel, datamodule: VLMDataModule | None
) -> dict[str, float]:
    """Score every source's test split with and without images (`vlmlab.eval.scoring`), into the run folder and
    the parent run of the tracker."""
    cfg = run.cfg
    sources = [name for name, source in cfg.data.sources.items() if source.get("test")]
    if not sources:
        return {}
    if datamodule is None:  # every stage was done already: a run resumed after its last stage
        datamodule = VLMDataModule.from_config(cfg.data, model, cfg.seed)
    metrics, files = score_splits(
        model,
        datamodule,
        cfg.data,
        sources,
        "test",
        run.folder,
        cfg.eval.max_new_tokens,
        limit=cfg.eval.limit,
        metrics_file="test_metrics.json",
    )
    if run.tracker is not None:
        run.tracker.log_datasets(
            run.tracker.parent_run_id, data_splits(datamodule, [(name, "test") for name in sources])
        )
        run.tracker.log_metrics(metrics)
        for path in files:
            run.tracker.log_artifact(path)
    return metrics
