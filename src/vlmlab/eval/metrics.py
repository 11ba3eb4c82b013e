"""The metrics a source is scored with, by the names used in `conf/data/source/*.yaml` (`metrics:`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torchmetrics import Metric

from vlmlab.eval.answer_metrics import ANLS, ExactMatchAccuracy, VQAAccuracy
from vlmlab.eval.caption_metrics import BLEU, CIDErD
from vlmlab.eval.pope_metrics import POPE, LmmsEvalPOPE

METRICS: dict[str, type[Metric]] = {
    "exact_match": ExactMatchAccuracy,
    "vqa_accuracy": VQAAccuracy,
    "anls": ANLS,
    "cider": CIDErD,
    "bleu": BLEU,
    "pope": POPE,
    "pope_lmms_eval": LmmsEvalPOPE,
}


def build_metrics(names: Sequence[str], **kwargs: Any) -> dict[str, Metric]:
    """The named metrics; `kwargs` go to every `Metric` (e.g. `sync_on_compute=False`)."""
    unknown = [name for name in names if name not in METRICS]
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown}; vlmlab has {', '.join(METRICS)}")
    return {name: METRICS[name](**kwargs) for name in names}


def metric_values(name: str, metric: Metric) -> dict[str, float]:
    """The computed metric as named numbers: BLEU gives bleu_1..bleu_4, POPE pope_accuracy, pope_precision, ...,
    the others one value."""
    return _named(name, metric.compute())


def per_sample_values(name: str, metric: Metric) -> list[dict[str, float]]:
    """Each sample's score, named as `metric_values` names the corpus score (every vlmlab metric has
    `compute_per_sample`; under a process group, collective like `compute`)."""
    return [_named(name, value) for value in metric.compute_per_sample()]


def _named(name: str, value: torch.Tensor | dict[str, torch.Tensor]) -> dict[str, float]:
    if isinstance(value, dict):  # several named scores (POPE's accuracy, precision, ...)
        return {f"{name}_{key}": float(v) for key, v in value.items()}
    if value.ndim == 0:
        return {name: float(value)}
    return {f"{name}_{i}": float(v) for i, v in enumerate(value, start=1)}


def score_predictions(
    predictions: Sequence[str], references: Sequence[Sequence[str]], names: Sequence[str]
) -> tuple[dict[str, float], list[dict[str, float]]]:
    """Every named metric over the predictions that have references, and each prediction's own scores ({} for
    one without references; no corpus values when none has). Scored in this process alone (no gathering, even
    when a process group exists: rank 0 evaluates after training)."""
    scored = [i for i, refs in enumerate(references) if refs]
    per_sample: list[dict[str, float]] = [{} for _ in predictions]
    if not scored:
        return {}, per_sample
    values: dict[str, float] = {}
    for name, metric in build_metrics(names, sync_on_compute=False).items():
        metric.update([predictions[i] for i in scored], [references[i] for i in scored])
        values.update(metric_values(name, metric))
        for i, sample_values in zip(scored, per_sample_values(name, metric)):
            per_sample[i].update(sample_values)
    return values, per_sample
