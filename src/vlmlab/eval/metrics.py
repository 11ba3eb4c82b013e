"""The metrics a source is scored with, by the names used in `conf/data/source/*.yaml` (`metrics:`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torchmetrics import Metric

from vlmlab.eval.answer_metrics import ANLS, ExactMatchAccuracy, VQAAccuracy
from vlmlab.eval.caption_metrics import BLEU, CIDErD

METRICS: dict[str, type[Metric]] = {
    "exact_match": ExactMatchAccuracy,
    "vqa_accuracy": VQAAccuracy,
    "anls": ANLS,
    "cider": CIDErD,
    "bleu": BLEU,
}


def build_metrics(names: Sequence[str], **kwargs: Any) -> dict[str, Metric]:
    """The named metrics; `kwargs` go to every `Metric` (e.g. `sync_on_compute=False`)."""
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; vlmlab has {', '.join(METRICS)}")
    return {name: METRICS[name](**kwargs) for name in names}


def metric_values(name: str, metric: Metric) -> dict[str, float]:
    """The computed metric as named numbers: BLEU gives bleu_1..bleu_4, the others one value."""
    value = metric.compute()
    if value.ndim == 0:
        return {name: float(value)}
    return {f"{name}_{i}": float(v) for i, v in enumerate(value, start=1)}


def score_predictions(
    predictions: Sequence[str], references: Sequence[Sequence[str]], names: Sequence[str]
) -> dict[str, float]:
    """Every named metric over the predictions that have references; {} when none has. Scored in this
    process alone (no gathering, even when a process group exists: rank 0 evaluates after training)."""
    scored = [(p, r) for p, r in zip(predictions, references) if r]
    if not scored:
        return {}
    values: dict[str, float] = {}
    for name, metric in build_metrics(names, sync_on_compute=False).items():
        metric.update([p for p, _ in scored], [r for _, r in scored])
        values.update(metric_values(name, metric))
    return values
