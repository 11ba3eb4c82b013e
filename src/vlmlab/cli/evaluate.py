"""`vlmlab-eval`: score a trained model on a configured dataset; write submission files, per-sample scores,
metrics and an MLflow run. The model is loaded as `vlmlab-generate` loads it: a stage folder, a vlmlab model
folder, a Hugging Face LLaVA folder or a Lightning checkpoint, each describing itself. Without `data=`, a model
that a vlmlab-train run wrote is scored as that run scored it (`vlmlab.eval.run_scoring`)."""

from __future__ import annotations

import logging
from pathlib import Path

from omegaconf import DictConfig, OmegaConf, open_dict

from vlmlab.cli.common import load_from_command_line
from vlmlab.cli.entry import hydra_command
from vlmlab.config import validate_config
from vlmlab.data.datamodule import VLMDataModule
from vlmlab.errors import UsageError
from vlmlab.eval.run_scoring import run_scoring_file
from vlmlab.eval.scoring import score_splits
from vlmlab.preflight import check_data_files, check_weights_file
from vlmlab.presets import preset_values
from vlmlab.tracking.mlflow_runs import log_evaluation_run
from vlmlab.tracking.registry import is_model_uri

log = logging.getLogger(__name__)
DEFAULT_MAX_NEW_TOKENS = 48  # a model that no vlmlab-train run wrote
DEFAULT_SEED = 42


def fill_in_as_the_run_scored(cfg: DictConfig) -> None:
    """The settings left null take the values that the checkpoint's run scored with: its data config (with
    `data` null, under this installation's reading limits), its eval.limit (on its own data), eval.max_new_tokens
    and seed."""
    record = None if is_model_uri(cfg.checkpoint) else run_scoring_file(cfg.checkpoint)
    scored = None if record is None else OmegaConf.load(record)
    with open_dict(cfg):
        if cfg.get("data") is None:
            if scored is None:
                raise UsageError(
                    f"checkpoint={cfg.checkpoint} was not written by a vlmlab-train run (no .hydra/scoring.yaml "
                    "in its run folder): say which data to score, e.g. data=vqav2 data.root=/datasets"
                )
            cfg.data = run_data_under_this_policy(scored.data)
            if cfg.limit is None:
                cfg.limit = scored.eval.limit
            log.info("scoring as the run scored (%s)", record)
        if cfg.max_new_tokens is None:
            cfg.max_new_tokens = scored.eval.max_new_tokens if scored is not None else DEFAULT_MAX_NEW_TOKENS
        if cfg.seed is None:
            cfg.seed = scored.seed if scored is not None else DEFAULT_SEED


def run_data_under_this_policy(data: DictConfig) -> DictConfig:
    """A run folder may come from someone else: its record says what to score, not how far reading may go. The
    files are scored as they are (nothing is generated: `synthetic` off, so missing files are named), and the
    image limits are this installation's defaults (conf/data/loading/default.yaml), not the record's."""
    defaults = preset_values("data/loading/default")
    data.synthetic = None
    for key in ("allow_outside_images", "max_image_pixels"):
        data[key] = defaults[key]
    return data


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Everything `vlmlab-eval` does after Hydra composed `cfg`; returns the metrics."""
    check_weights_file(cfg.checkpoint, "checkpoint", model_uri_ok=True)  # before the model is built
    fill_in_as_the_run_scored(cfg)
    validate_config(cfg)
    sources = list(cfg.sources or [n for n, s in cfg.data.sources.items() if s.get(cfg.split) is not None])
    missing = [n for n in sources if n not in cfg.data.sources or cfg.data.sources[n].get(cfg.split) is None]
    if missing:
        raise ValueError(f"source(s) {missing} have no '{cfg.split}' split in this data config; set `sources`")
    check_data_files(cfg, [(name, cfg.split) for name in sources])
    loaded = load_from_command_line(cfg)
    OmegaConf.update(cfg, "data.image_resize", loaded.image_resize)  # as the model was trained
    if loaded.anyres is not None:
        OmegaConf.update(cfg, "data.anyres", loaded.anyres, merge=False)
    log.info("scoring %s (model from %s) on the %s split of %s", cfg.checkpoint, loaded.source, cfg.split, sources)
    datamodule = VLMDataModule.from_config(cfg.data, loaded.model, cfg.seed)
    datamodule.prepare_data()
    out = Path(cfg.paths.output_dir)
    metrics, files = score_splits(
        loaded.model, datamodule, cfg.data, sources, cfg.split, out, cfg.max_new_tokens, cfg.limit, cfg.blind
    )
    print(f"metrics and predictions in {out}")
    if cfg.track:
        log_evaluation_run(cfg, metrics, files, tags={"checkpoint": str(loaded.path), "split": cfg.split})
    return metrics


main = hydra_command("vlmlab-eval", "eval", evaluate, user_errors=(ValueError, FileNotFoundError))

if __name__ == "__main__":
    main()
