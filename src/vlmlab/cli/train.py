"""`vlmlab-train`: compose the config, check it, run the curriculum, return the optimised metric."""

from __future__ import annotations

import logging
import shlex
import sys
from pathlib import Path

from hydra.core.hydra_config import HydraConfig
from omegaconf import DictConfig, OmegaConf

from vlmlab.cli.entry import hydra_command, invocation, shown_path
from vlmlab.cli.next_steps import next_steps
from vlmlab.errors import UsageError
from vlmlab.eval.run_scoring import write_run_scoring
from vlmlab.preflight import check_before_training
from vlmlab.training.curriculum import run_curriculum
from vlmlab.training.distributed import global_rank
from vlmlab.training.preemption import PREEMPTED_EXIT_CODE, Preempted
from vlmlab.training.run_lock import lock_run_folder
from vlmlab.training.run_record import STATE_FILE, find_run_to_resume

log = logging.getLogger(__name__)


def log_lightning_to_run_log() -> None:
    """Lightning's messages go to the handlers Hydra set up (console and the run's train.log): Lightning adds
    its own console handler and stops propagation when it is imported before logging is configured."""
    if not logging.getLogger().handlers:
        return
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True


def log_into_resumed_run(run_dir: Path) -> None:
    """A resumed run's log also goes to the train.log of the run it continues, which so holds the whole run."""
    root = logging.getLogger()
    own = [h for h in root.handlers if isinstance(h, logging.FileHandler)]
    target = run_dir / "train.log"
    if any(Path(h.baseFilename).resolve() == target.resolve() for h in own):
        return
    handler = logging.FileHandler(target, mode="a")
    if own:
        handler.setFormatter(own[0].formatter)
    root.addHandler(handler)


def resume_command(run_dir: Path) -> str:
    """The command line that resumes `run_dir`: this one's overrides plus `resume=<run_dir>` (its own Hydra
    folder is new: `hydra.run.dir` pointing at the run would overwrite the run's saved config)."""
    overrides = [o for o in HydraConfig.get().overrides.task if not o.startswith(("resume=", "hydra.run.dir="))]
    return shlex.join([invocation("vlmlab-train"), *overrides, f"resume={shown_path(run_dir)}"])


def claim_run_folder(run_dir: Path, cfg: DictConfig, composed: str, resuming: bool) -> None:
    """Lock the run folder (`vlmlab.training.run_lock`); a new run also refuses a folder that holds a run already,
    and writes its config (`.hydra/`, as Hydra would have, and what its test scores will be computed on, for
    vlmlab-eval) once the folder is its own."""
    lock_run_folder(run_dir)
    if resuming:
        return
    if (run_dir / STATE_FILE).is_file():
        raise UsageError(
            f"{run_dir} already holds a run (its {STATE_FILE}): resume it with resume={run_dir}, or give this run "
            "another folder (hydra.run.dir=...)"
        )
    saved = run_dir / ".hydra"
    saved.mkdir(exist_ok=True)
    (saved / "config.yaml").write_text(composed)
    (saved / "overrides.yaml").write_text(OmegaConf.to_yaml(list(HydraConfig.get().overrides.task)))
    write_run_scoring(run_dir, cfg)


def train(cfg: DictConfig) -> float | None:
    """Everything `vlmlab-train` does after Hydra composed `cfg`; returns `cfg.optimized_metric`'s value."""
    composed = OmegaConf.to_yaml(cfg)  # as Hydra composed it, before the checks fill anything in
    check_before_training(cfg)  # before any weight loads and any MLflow run starts
    run_dir = find_run_to_resume(cfg) if cfg.get("resume") else Path(cfg.paths.output_dir)
    devices = cfg.trainer.devices if isinstance(cfg.trainer.devices, int) else 1
    main = global_rank(devices) == 0  # the run's other processes belong to the same run
    if main:
        claim_run_folder(run_dir, cfg, composed, bool(cfg.get("resume")))
        print(f"vlmlab-train: run folder {shown_path(run_dir)}", flush=True)
    log_lightning_to_run_log()
    if cfg.get("resume"):
        log_into_resumed_run(run_dir)
    try:
        outcome = run_curriculum(cfg)
    except Preempted as stop:
        print(
            f"\nvlmlab-train: {stop}; resume where it stopped:\n  {resume_command(run_dir)}",
            file=sys.stderr,
        )
        raise SystemExit(PREEMPTED_EXIT_CODE) from None
    except (KeyboardInterrupt, SystemExit) as err:  # Lightning turns Ctrl-C into SystemExit(1)
        if not isinstance(err, SystemExit) or err.code not in (0, None):
            print(
                f"\nvlmlab-train: interrupted; resume where it stopped:\n  {resume_command(run_dir)}", file=sys.stderr
            )
        raise
    if main:
        print(next_steps(cfg, run_dir, outcome), flush=True)
    metrics = outcome.metrics
    if cfg.get("optimized_metric"):
        if cfg.optimized_metric not in metrics:
            raise UsageError(
                f"optimized_metric '{cfg.optimized_metric}' was not produced; available: {sorted(metrics)}"
            )
        return metrics[cfg.optimized_metric]
    return None


main = hydra_command("vlmlab-train", "train", train)

if __name__ == "__main__":
    main()
