"""`vlmlab-eval`: score a checkpoint on a configured dataset; write submission files, metrics and an MLflow run."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import hydra
import torch
from omegaconf import DictConfig, OmegaConf

from vlmlab.config import config_dir, validate_config
from vlmlab.eval.checkpoint import load_weights, saved_tokenizer, weights_path
from vlmlab.eval.generation import evaluate_with_blind_baseline
from vlmlab.eval.submission import submission
from vlmlab.models.builder import build_vlm
from vlmlab.tracking.mlflow_runs import log_evaluation_run
from vlmlab.training.curriculum import build_datamodule, print_results, source_metrics

log = logging.getLogger(__name__)


def evaluate(cfg: DictConfig) -> dict[str, float]:
    """Everything `vlmlab-eval` does after Hydra composed `cfg`; returns the metrics."""
    validate_config(cfg)
    weights = weights_path(cfg.checkpoint)
    tokenizer = saved_tokenizer(weights)
    if tokenizer is not None and "tokenizer" in cfg.model.llm:
        OmegaConf.update(cfg, "model.llm.tokenizer", str(tokenizer), merge=False)  # the ids it trained with
    sources = list(cfg.sources or [n for n, s in cfg.data.sources.items() if s.get(cfg.split) is not None])
    missing = [n for n in sources if n not in cfg.data.sources or cfg.data.sources[n].get(cfg.split) is None]
    if missing:
        raise ValueError(f"source(s) {missing} have no '{cfg.split}' split in this data config; set `sources`")
    model = build_vlm(cfg.model)
    load_weights(model, weights)
    device = (
        "cuda" if cfg.device == "auto" and torch.cuda.is_available() else "cpu" if cfg.device == "auto" else cfg.device
    )
    model.to(device)
    log.info("scoring %s on the %s split of %s (%s)", weights, cfg.split, ", ".join(sources), device)
    datamodule = build_datamodule(cfg, model, mixture={}, micro_batch_size=1)
    datamodule.prepare_data()
    loaders = {
        name: (
            datamodule.prompt_dataloader(name, cfg.split, limit=cfg.limit),
            datamodule.prompt_dataloader(name, cfg.split, blank_images=True, limit=cfg.limit) if cfg.blind else None,
        )
        for name in sources
    }
    metric_names = {name: source_metrics(cfg, name) for name in sources}
    metrics, predictions = evaluate_with_blind_baseline(
        model, loaders, metric_names, cfg.max_new_tokens, prefix=cfg.split
    )
    out = Path(cfg.paths.output_dir)
    (out / "predictions").mkdir(parents=True, exist_ok=True)
    files = [out / "metrics.json"]
    files[0].write_text(json.dumps(metrics, indent=2))
    for name, rows in predictions.items():
        fmt = cfg.data.sources[name].get("format", "llava")
        path = out / "predictions" / f"{name}_{cfg.split}.json"
        path.write_text(json.dumps(submission(fmt, rows), indent=1))
        scores = out / "predictions" / f"{name}_{cfg.split}_scores.jsonl"
        fields = ("id", "prediction", "answers", "scores")
        scores.write_text("".join(json.dumps({k: row[k] for k in fields}) + "\n" for row in rows))
        files += [path, scores]
    print_results(metrics, metric_names, split=cfg.split)
    print(f"metrics and predictions in {out}")
    if cfg.track:
        log_evaluation_run(cfg, metrics, files, tags={"checkpoint": str(weights), "split": cfg.split})
    return metrics


@hydra.main(version_base="1.3", config_path=str(config_dir()), config_name="eval")
def main(cfg: DictConfig) -> None:
    evaluate(cfg)


if __name__ == "__main__":
    main()
