"""The test-evaluation recipe, written once: the curriculum's final evaluation and `vlmlab-eval` both call
`score_splits`. Every source's split is answered with and without its images (the blind baseline), scored
with the source's metrics, printed as a table and written to files: the metrics, the predictions in the
benchmark's submission format, and each sample's own scores."""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from rich.console import Console
from rich.table import Table

from vlmlab.data.datamodule import VLMDataModule
from vlmlab.data.formats import source_format
from vlmlab.eval.generation import evaluate_with_blind_baseline
from vlmlab.eval.submission import submission
from vlmlab.models.vlm import VisionLanguageModel
from vlmlab.terminal import table_console

log = logging.getLogger(__name__)


def source_metrics(data_cfg: DictConfig, source: str) -> list[str]:
    """The metrics a source is scored with (`metrics:` in its config; exact match when it names none)."""
    return list(data_cfg.sources[source].get("metrics") or ["exact_match"])


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
            log.info("%s %s %s: %.4f%s", split, source, key, score, "" if blind is None else f" (blind {blind:.4f})")
    (console or table_console()).print(table)


def score_splits(
    model: VisionLanguageModel,
    datamodule: VLMDataModule,
    data_cfg: DictConfig,
    sources: Sequence[str],
    split: str,
    out_dir: Path,
    max_new_tokens: int,
    limit: int | None = None,
    blind: bool = True,
    metrics_file: str = "metrics.json",
) -> tuple[dict[str, float], list[Path]]:
    """Score `split` of each of `sources` (metrics `<split>/<source>/<metric>` and `.../blind_<metric>`), print
    the table and write `out_dir/<metrics_file>`, `out_dir/predictions/<source>_<split>.json` (submission format)
    and `out_dir/predictions/<source>_<split>_scores.jsonl` (id, prediction, answers, scores). Returns the metrics
    and the files written."""
    loaders = {
        name: (
            datamodule.prompt_dataloader(name, split, limit=limit),
            datamodule.prompt_dataloader(name, split, blank_images=True, limit=limit) if blind else None,
        )
        for name in sources
    }
    metric_names = {name: source_metrics(data_cfg, name) for name in sources}
    metrics, predictions = evaluate_with_blind_baseline(model, loaders, metric_names, max_new_tokens, prefix=split)
    files = [write_json(out_dir / metrics_file, metrics)]
    for name, rows in predictions.items():
        fmt = source_format(data_cfg.sources[name])
        files.append(write_json(out_dir / "predictions" / f"{name}_{split}.json", submission(fmt, rows)))
        fields = ("id", "prediction", "answers", "scores")
        scores = out_dir / "predictions" / f"{name}_{split}_scores.jsonl"
        scores.write_text("".join(json.dumps({k: row[k] for k in fields}) + "\n" for row in rows))
        files.append(scores)
    print_results(metrics, metric_names, split=split)
    return metrics, files


def write_json(path: Path, content: Any) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(content, indent=1))
    return path
